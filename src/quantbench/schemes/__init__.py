"""Registry of quantization schemes: one module per scheme, one line here per scheme.

Entries are lazy "module:attribute" strings so that listing schemes imports no scheme code
(and never llm-compressor); installed packages add schemes as entry points in the group
`quantbench.schemes` (see `quantbench.registry`).
"""

from __future__ import annotations

from quantbench.errors import UserError, did_you_mean
from quantbench.registry import Registry
from quantbench.schemes.base import Preflight, Scheme

BUILTIN: dict[str, str] = {
    "bf16": "quantbench.schemes.baseline:BF16",
    "fp16": "quantbench.schemes.baseline:FP16",
    "fp8-dynamic": "quantbench.schemes.fp8_dynamic:FP8_DYNAMIC",
    "w4a16-gptq": "quantbench.schemes.gptq:W4A16_GPTQ",
    "w8a16-gptq": "quantbench.schemes.gptq:W8A16_GPTQ",
    "w8a8-int8": "quantbench.schemes.w8a8_int8:W8A8_INT8",
    "w4a16-awq": "quantbench.schemes.awq:W4A16_AWQ",
    "nvfp4a16": "quantbench.schemes.fp4:NVFP4A16",
    "nvfp4": "quantbench.schemes.fp4:NVFP4",
    "mxfp4a16": "quantbench.schemes.fp4:MXFP4A16",
    "fp8-block": "quantbench.schemes.fp8_block:FP8_BLOCK",
    "w4a8-int": "quantbench.schemes.w4a8:W4A8_INT",
    "w4afp8": "quantbench.schemes.w4a8:W4AFP8",
    "mixed": "quantbench.schemes.mixed:MIXED",
}
REGISTRY = Registry("schemes", BUILTIN)


def get_scheme(name: str) -> Scheme:
    """The scheme registered as `name`, or a user error naming the closest match."""
    if name not in REGISTRY:
        raise UserError(
            f"unknown scheme '{name}'{did_you_mean(name, REGISTRY)}; "
            f"known schemes: {', '.join(REGISTRY)} (see `quantbench schemes`)"
        )
    scheme: Scheme = REGISTRY.load(name)
    return scheme


def all_schemes() -> list[Scheme]:
    return [get_scheme(name) for name in REGISTRY]


__all__ = ["REGISTRY", "Preflight", "Scheme", "all_schemes", "get_scheme"]
