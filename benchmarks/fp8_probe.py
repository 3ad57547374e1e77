"""Whether this GPU multiplies FP8 matrices in hardware, and how fast against BF16.

    python3 benchmarks/fp8_probe.py [OUT.json]

benchmarks/gpu_check.sh runs it beside the study. The study's transformers backend always
decompresses an fp8-dynamic artifact and simulates the activation quantization (its speed
record says "emulated"); this says what the same GPU does with native FP8 kernels, through
`torch._scaled_mm` (per-tensor scales, E4M3, BF16 output), on one square product of side
`SIDE`, each the median of `REPEATS` timed products after warm-up. TFLOP/s counts 2·n³.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

SIDE = 8192
WARMUP = 3
REPEATS = 10


def _timed_tflops(product: Any, torch: Any) -> float:
    for _ in range(WARMUP):
        product()
    torch.cuda.synchronize()
    seconds = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        product()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return 2 * SIDE**3 / statistics.median(seconds) / 1e12


def probe() -> dict[str, Any]:
    import torch

    record: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if not torch.cuda.is_available():
        record["error"] = "no CUDA GPU visible"
        return record
    record["gpu"] = torch.cuda.get_device_name(0)
    record["capability"] = list(torch.cuda.get_device_capability(0))
    generator = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(SIDE, SIDE, device="cuda", dtype=torch.bfloat16, generator=generator)
    b = torch.randn(SIDE, SIDE, device="cuda", dtype=torch.bfloat16, generator=generator)
    record["bf16_tflops"] = round(_timed_tflops(lambda: a @ b, torch), 1)
    try:
        scale_a = (a.abs().max().float() / 448.0).reshape(())
        scale_b = (b.abs().max().float() / 448.0).reshape(())
        a8 = (a.float() / scale_a).to(torch.float8_e4m3fn)
        # _scaled_mm wants its second operand column-major: the transpose of a row-major one.
        b8 = (b.float() / scale_b).to(torch.float8_e4m3fn).t().contiguous().t()

        def fp8() -> Any:
            return torch._scaled_mm(
                a8, b8, scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16
            )

        product = fp8()
        reference = a.float() @ b.float()
        record["fp8_relative_error"] = round(
            float((product.float() - reference).norm() / reference.norm()), 5
        )
        record["fp8_tflops"] = round(_timed_tflops(fp8, torch), 1)
        record["fp8_native"] = True
    except Exception as error:  # the record says why FP8 did not run
        record["fp8_native"] = False
        record["error"] = f"{type(error).__name__}: {error}"
    return record


def main() -> None:
    record = probe()
    text = json.dumps(record, indent=2)
    print(text)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
