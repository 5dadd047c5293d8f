"""Parsing and formatting of counts and sizes. Bytes are integers; GiB (2^30) is only a rendering."""

from __future__ import annotations

import re
from decimal import Decimal

from hfmem.limits import MAX_PARAMS

__all__ = ["GIB", "parse_count", "format_gib", "format_count_short"]

GIB = 2**30
_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_COUNT = re.compile(r"^\s*([0-9][0-9_,]*(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*$")


def parse_count(text: str) -> int:
    """Parse a parameter count: ``7.5B``, ``7.5e9``, ``125M``, ``1.2T``, ``6738415616``, ``6,738,415,616``.

    B and G both mean 10^9 (parameter counts are decimal). The result must be a whole number.

    Raises:
        ValueError: with a message that shows the accepted forms.

    Example:
        >>> parse_count("7.5B")
        7500000000
    """
    match = _COUNT.match(text)
    if not match:
        raise ValueError(f"'{text}' is not a parameter count; write it like 7.5B, 125M, 7.5e9 or 6738415616")
    number, suffix = match.groups()
    try:
        value = Decimal(number.replace("_", "").replace(",", "")) * _SUFFIXES[suffix.upper()]
    except ArithmeticError as e:  # decimal's InvalidOperation, and Overflow past its exponent range (1e9999999)
        raise ValueError(f"'{text}' is not a parameter count; write it like 7.5B, 125M or 7.5e9") from e
    if value > MAX_PARAMS:  # before int(): 1e999999999 would be a billion-digit integer
        raise ValueError(
            f"'{text}' is more than the {MAX_PARAMS:,} parameters hfmem plans for; write it like 7.5B or 125M"
        )
    if value != value.to_integral_value():
        raise ValueError(f"'{text}' is not a whole number of parameters")
    if value <= 0:
        raise ValueError(f"'{text}': the parameter count must be positive")
    return int(value)


def format_gib(num_bytes: int) -> str:
    """``12.55 GiB``: bytes in binary gibibytes, two decimals."""
    return f"{num_bytes / GIB:,.2f} GiB"


def format_count_short(count: int) -> str:
    """``6.74B``, ``124M``, ``671B``: three significant digits with a decimal suffix.

    The suffix is chosen after rounding, so a count that rounds up to 1000 of a unit reads in the next unit:
    999,885,952 is ``1B``, not ``1e+03M``. Past 999.5T the count is whole trillions with separators (``1,500T``).
    """
    units = ((10**3, "K"), (10**6, "M"), (10**9, "B"), (10**12, "T"))
    chosen = next((i for i in reversed(range(len(units))) if count >= units[i][0]), None)
    if chosen is None:
        return str(count)
    if chosen + 1 < len(units) and float(f"{count / units[chosen][0]:.3g}") >= 1000:
        chosen += 1  # 999.9M rounds to 1000M: one unit up
    factor, suffix = units[chosen]
    value = count / factor
    return f"{value:,.0f}{suffix}" if value >= 999.5 else f"{value:.3g}{suffix}"
