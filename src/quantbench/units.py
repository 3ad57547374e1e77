"""Display units and number formatting shared by the recommendation's reasons and the report.

Pure functions of numbers: no project imports, so every layer may use them.
"""

from __future__ import annotations

import math

MIB = float(1 << 20)
"""Bytes in a mebibyte: sizes are recorded in bytes and shown in MiB."""


def decimals_for(value: float, significant: int, minimum: int, maximum: int = 6) -> int:
    """Decimal places that show `significant` digits of `value`, but at least `minimum`.

    Keeps small figures (a Δppl of 0.004, a KL of 0.0012) from rounding to zero while large
    ones keep a fixed, readable precision.
    """
    if value == 0 or not math.isfinite(value):
        return minimum
    magnitude = math.floor(math.log10(abs(value)))
    return max(minimum, min(maximum, significant - 1 - magnitude))


def format_number(value: float, significant: int = 3, minimum: int = 2, sign: bool = False) -> str:
    """`value` with `significant` digits (at least `minimum` decimals), thousands separated."""
    places = decimals_for(value, significant, minimum)
    return f"{value:+,.{places}f}" if sign else f"{value:,.{places}f}"
