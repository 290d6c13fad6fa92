"""Latency summaries and the cross-round aggregation the report is built from.

Every setting is run in several rounds, interleaved with the other targets, because the machine is shared: a cell
of the report is the median over rounds with the [min, max] spread next to it, so one noisy round shows as a wide
spread instead of a wrong number. Added latency is paired per round (gateway and direct measured seconds apart).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

LADDER = (1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9)


def percentile(sorted_xs: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile of an already sorted sequence (NaN when empty)."""
    if not sorted_xs:
        return float("nan")
    k = (len(sorted_xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (k - lo)


def summarize_us(samples_us: Iterable[float]) -> dict:
    """n, mean, min, max and the percentile ladder, in milliseconds (samples arrive in microseconds)."""
    xs = sorted(samples_us)
    if not xs:
        return {"n": 0}
    out = {"n": len(xs), "mean": statistics.fmean(xs) / 1000, "min": xs[0] / 1000, "max": xs[-1] / 1000}
    for p in LADDER:
        out[f"p{p:g}"] = percentile(xs, p) / 1000
    return out


def spread(values: Sequence[float]) -> dict:
    """Median and range over rounds."""
    vals = [v for v in values if v == v]  # drop NaN
    if not vals:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def _runs(runs: list[dict], target: str, stream: bool, conc: int) -> dict[int, dict]:
    return {r["round"]: r for r in runs if r["target"] == target and r["stream"] == stream and r["concurrency"] == conc}


def metric(runs: list[dict], target: str, stream: bool, conc: int, key: str, stat: str) -> dict:
    """Spread over rounds of ``run[key][stat]`` (e.g. key="latency", stat="p50")."""
    return spread([r[key].get(stat, float("nan")) for r in _runs(runs, target, stream, conc).values()])


def scalar(runs: list[dict], target: str, stream: bool, conc: int, key: str) -> dict:
    return spread([r[key] for r in _runs(runs, target, stream, conc).values()])


def added(runs: list[dict], target: str, base: str, stream: bool, conc: int, key: str, stat: str) -> dict:
    """Spread over rounds of target − base for one statistic, paired by round."""
    a, b = _runs(runs, target, stream, conc), _runs(runs, base, stream, conc)
    return spread([a[r][key].get(stat, float("nan")) - b[r][key].get(stat, float("nan")) for r in a if r in b])


def max_sustained_rps(runs: list[dict], target: str, concurrencies: Sequence[int]) -> dict:
    """The best non-streaming closed-loop throughput (median over rounds) among settings with zero errors."""
    best: dict = {"median": 0.0, "min": 0.0, "max": 0.0, "n": 0, "concurrency": None}
    for c in concurrencies:
        rs = _runs(runs, target, False, c).values()
        if not rs or any(r["errors"] for r in rs):
            continue
        s = spread([r["rps"] for r in rs])
        if s["median"] > best["median"]:
            best = {**s, "concurrency": c}
    return best
