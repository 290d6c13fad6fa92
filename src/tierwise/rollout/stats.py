"""Two-arm comparisons with intervals, from sufficient statistics (counts, sums, sums of squares).

The canary report aggregates in SQL and hands these functions only totals per arm, so a comparison over millions of
rows never loads a row into Python. Means: Welch's interval on the difference (unequal variances, normal
approximation — arms of a canary are hundreds of requests or more before anyone reads them). Proportions: Newcombe's
hybrid score interval on the difference (method 10), built from the two Wilson intervals, which stays inside
[-1, 1] and behaves at 0 or 1 events. "Significant" means the 95 % interval excludes 0. The sample size is per arm,
for 80 % power at the observed difference (two-sided 5 %): how much traffic would settle a difference of this size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054
Z80 = 0.8416212335729143  # one-sided z of 80 % power


@dataclass(slots=True)
class Comparison:
    metric: str
    control: float | None
    canary: float | None
    diff: float | None  # canary - control
    low: float | None
    high: float | None
    significant: bool
    n_control: int
    n_canary: int
    n_needed: int | None  # per arm, for 80 % power at the observed difference; None: cannot say

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def compare_proportions(metric: str, k0: int, n0: int, k1: int, n1: int) -> Comparison:
    """Arm 0 = control, arm 1 = canary."""
    if n0 == 0 or n1 == 0:
        return Comparison(metric, k0 / n0 if n0 else None, k1 / n1 if n1 else None, None, None, None, False,
                          n0, n1, None)
    p0, p1 = k0 / n0, k1 / n1
    l0, u0 = wilson(k0, n0)
    l1, u1 = wilson(k1, n1)
    d = p1 - p0
    low = d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    need = None
    if d != 0:
        need = math.ceil((Z95 + Z80) ** 2 * (p0 * (1 - p0) + p1 * (1 - p1)) / (d * d))
    return Comparison(metric, p0, p1, d, low, high, low > 0 or high < 0, n0, n1, need)


def compare_means(metric: str, n0: int, s0: float, ss0: float, n1: int, s1: float, ss1: float) -> Comparison:
    """Welch interval on mean(canary) - mean(control) from count, sum and sum of squares per arm."""
    if n0 < 2 or n1 < 2:
        return Comparison(metric, s0 / n0 if n0 else None, s1 / n1 if n1 else None, None, None, None, False,
                          n0, n1, None)
    m0, m1 = s0 / n0, s1 / n1
    v0 = max(0.0, (ss0 - n0 * m0 * m0) / (n0 - 1))
    v1 = max(0.0, (ss1 - n1 * m1 * m1) / (n1 - 1))
    se = math.sqrt(v0 / n0 + v1 / n1)
    d = m1 - m0
    low, high = d - Z95 * se, d + Z95 * se
    need = None
    if d != 0:
        need = math.ceil((Z95 + Z80) ** 2 * (v0 + v1) / (d * d))
    sig = (low > 0 or high < 0) if se > 0 else d != 0  # no spread in either arm: any difference is exact
    return Comparison(metric, m0, m1, d, low, high, sig, n0, n1, need)
