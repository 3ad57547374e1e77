"""Worker processes: how the driver starts and follows them, and what runs inside them.

- `workers.py` (driver side): start a worker module as a child process, feed it its request,
  follow its progress events, keep its log, kill its process group when interrupted.
- `forkserver.py` (driver side and server): fork workers from a process that has torch and
  transformers imported already.
- `child.py` (worker side): progress events on stdout, death with the parent.

Imports point one way: `workers` -> `forkserver` -> `child`; the worker modules
(`quantbench.quantize`, `quantbench.evaluate`) use `child`, and their
driver-side halves use `workers`.
"""
