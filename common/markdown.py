"""Markdown cells and tables: one number format for every report, model card and summary.

A count (an int) reads as a count, a measured number (a float) with ``digits`` decimals (significant digits where it is
very large or very small), anything missing, nan or infinite as "n/a".
"""

from __future__ import annotations

import math
import numbers


def cell(v, digits: int = 3) -> str:
    """One value as a table cell shows it."""
    if isinstance(v, str):
        return v
    if v is None:
        return "n/a"
    if isinstance(v, numbers.Integral):  # bool too
        return str(v)
    if not isinstance(v, numbers.Real):
        return str(v)
    v = float(v)
    if not math.isfinite(v):
        return "n/a"
    v = 0.0 if abs(v) < 1e-12 else v  # float noise of a zero spread
    return f"{v:.{digits}g}" if abs(v) >= 1e4 or 0 < abs(v) < 1e-2 else f"{v:.{digits}f}"


def with_interval(v, lo, hi) -> str:
    """ "v [lo, hi]", or v alone where the interval is not there (either end nan or infinite)."""
    bounded = all(isinstance(x, numbers.Real) and math.isfinite(x) for x in (lo, hi))
    return f"{cell(v)} [{cell(lo)}, {cell(hi)}]" if bounded else cell(v)


def table(header: list[str], rows: list[list], digits: int = 3) -> str:
    """A Markdown table; each cell through ``cell``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c, digits) for c in row) + " |" for row in rows]
    return "\n".join(lines)
