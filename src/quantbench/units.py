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


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
}


def parse_size(text: str | int) -> int:
    """Bytes in a size written as '119MiB', '0.5 GiB', '140MB' or a plain number of bytes
    (binary units are powers of 1024, decimal ones of 1000); ValueError naming the units."""
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        cleaned = str(text).strip().replace(",", "").replace("_", "")
        number = cleaned.rstrip("BbKkMmGgIi ")
        unit = cleaned[len(number) :].strip().lower()
        try:
            value = float(number)
        except ValueError:
            value = math.nan
    if unit not in _SIZE_UNITS or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{text!r} is not a size: write a positive number with one of "
            "B, kB, MB, GB, KiB, MiB, GiB (e.g. 119MiB)"
        )
    return round(value * _SIZE_UNITS[unit])
