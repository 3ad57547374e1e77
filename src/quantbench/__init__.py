"""quantbench: which quantization should I ship, and what does it cost me?

Importing the package is cheap on purpose: torch, transformers and llm-compressor are imported
only by the modules that use them, so `quantbench schemes` or a cached re-run starts in well
under a second.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("quantbench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
