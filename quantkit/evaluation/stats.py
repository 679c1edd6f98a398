"""Small statistics used by speed figures and the leaderboard."""

from __future__ import annotations

import math
import statistics


def median_spread(values: list[float]) -> tuple[float, float, float, float]:
    """(median, min, max, p90) of repeated measurements."""
    s = sorted(values)
    p90 = s[min(len(s) - 1, math.ceil(0.9 * len(s)) - 1)]
    return statistics.median(s), s[0], s[-1], p90


def median_ci(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free confidence interval for the median: the order statistics x_(k) and
    x_(n+1-k), with k the largest rank whose binomial(n, 1/2) tail below it is at most (1-level)/2.
    It assumes only independent draws, nothing about their shape (speed ratios on a shared VM are
    skewed). With fewer than 6 values no 95% interval exists: None (the range of 2 values covers the
    median only half the time, so it must not be printed as a 95% interval).

    Hand-written (the binomial tail in exact integer arithmetic, as mcnemar_exact): the core does not
    depend on scipy; the unit tests check it against scipy.stats.binom where scipy is installed."""
    s = sorted(values)
    n = len(s)
    alpha = (1 - level) / 2
    k, tail = 0, 0
    while True:  # tail = P(X <= k), X ~ binomial(n, 1/2); k ends as the largest rank with P(X <= k-1) <= alpha
        tail += math.comb(n, k)
        if tail / 2 ** n > alpha or k + 1 > n // 2:
            break
        k += 1
    return (s[k - 1], s[n - k]) if k >= 1 else None


def tie(a: float, a_err: float | None, b: float, b_err: float | None, z: float = 1.96) -> bool:
    """Are a and b within noise? True when their difference is under z combined standard errors."""
    if a_err is None or b_err is None:
        return False
    return abs(a - b) <= z * math.sqrt(a_err ** 2 + b_err ** 2)


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided exact McNemar test: the p-value of `lost` vs `gained` discordant pairs under
    "flips are equally likely either way" (a binomial test with p = 1/2 on lost + gained pairs).

    Hand-written (a dozen lines of exact integer arithmetic): the core does not depend on scipy or
    statsmodels; the unit tests check it against scipy.stats.binomtest where scipy is installed."""
    n = lost + gained
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(lost, gained) + 1))
    return min(1.0, 2 * tail / 2 ** n)


def flips(reference: dict[str, float], model: dict[str, float]) -> dict | None:
    """Per-question changes of a 0/1 score against the reference, on the documents both scored:
    {"n": paired documents, "lost": right -> wrong, "gained": wrong -> right, "p": exact McNemar}.
    None when the scores are not 0/1 or no document is shared."""
    shared = sorted(set(reference) & set(model))
    if not shared or any(v not in (0.0, 1.0) for d in shared for v in (reference[d], model[d])):
        return None
    lost = sum(1 for d in shared if reference[d] == 1.0 and model[d] == 0.0)
    gained = sum(1 for d in shared if reference[d] == 0.0 and model[d] == 1.0)
    return {"n": len(shared), "lost": lost, "gained": gained, "p": mcnemar_exact(lost, gained)}
