"""Small statistics used by speed figures and the leaderboard."""

from __future__ import annotations

import math
import statistics


def median_spread(values: list[float]) -> tuple[float, float, float, float]:
    """(median, min, max, p90) of repeated measurements."""
    s = sorted(values)
    p90 = s[min(len(s) - 1, math.ceil(0.9 * len(s)) - 1)]
    return statistics.median(s), s[0], s[-1], p90


def tie(a: float, a_err: float | None, b: float, b_err: float | None, z: float = 1.96) -> bool:
    """Are a and b within noise? True when their difference is under z combined standard errors."""
    if a_err is None or b_err is None:
        return False
    return abs(a - b) <= z * math.sqrt(a_err ** 2 + b_err ** 2)
