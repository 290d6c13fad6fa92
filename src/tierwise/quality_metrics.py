"""Routing-quality metrics, with exactly the definitions of design §5 (and RouteLLM's APGR / CPT).

All inputs are per-prompt matrices of the **test** split: ``quality[i, j]`` in [0, 1] and ``cost[i, j]`` in USD for
prompt i and model j (only models with a price: see ``OutcomeSet.priced_models``). Means over prompts give points
(mean cost, mean quality).

- best (cB, qB): the single model with the highest mean quality, ties to the cheaper one.
- cheapest (c0, q0): the single model with the lowest mean cost, ties to the higher quality.
- oracle (cO, qO): per prompt, the cheapest model among those with the maximal quality on that prompt (so the
  cheapest model when none is right); means of the chosen models' quality and cost. This is the limit.
- router curve: the upper, non-decreasing convex hull of the router's (cost, quality) points plus the cheapest
  model's point (as RouterBench does). Beyond its last vertex the curve is flat (more budget cannot hurt).
- cost-to-parity: the lowest hull cost with quality >= qB (and >= 0.99·qB), as % of cB; None if never reached.
- quality at budget: the hull's quality at 25/50/100 % of cB (None when that budget is below the hull's cheapest
  point, i.e. unreachable).
- oracle-normalised AUC = (A_h − A_R) / (A_O − A_R), each the exact integral over cost in [c0, cB] of the hull (h),
  the line (c0, q0)→(cB, qB) (R, random mixing of cheapest and best) and the line (c0, q0)→(cO, qO), flat at qO after
  cO (O). Random mixing scores 0, the oracle mixed with the cheapest model scores 1. None when cB <= c0 or cO >= cB
  (and when A_O == A_R). If cO <= c0 (per-prompt costs let the oracle undercut the cheapest model's mean), O is flat
  at qO over the whole interval.

Knob settings read off the test hull are chosen in hindsight; calibrated (train-fitted) settings are the honest
number. Report both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

_EPS = 1e-12


@dataclass(frozen=True, slots=True)
class Point:
    """A (mean cost, mean quality) operating point."""

    cost: float
    quality: float


@dataclass(frozen=True)
class Baselines:
    """The reference points of one split: every single model, best, cheapest and oracle."""

    models: tuple[str, ...]
    singles: dict[str, Point]
    best: str
    cheapest: str
    oracle: Point
    oracle_choice: np.ndarray = field(repr=False, compare=False)  # per-prompt index into ``models``

    @property
    def best_point(self) -> Point:
        return self.singles[self.best]

    @property
    def cheapest_point(self) -> Point:
        return self.singles[self.cheapest]


def compute_baselines(quality: np.ndarray, cost: np.ndarray, models: Sequence[str]) -> Baselines:
    """Single-model, best, cheapest and oracle points from (n_prompts, n_models) matrices (no NaN allowed)."""
    quality = np.asarray(quality, dtype=float)
    cost = np.asarray(cost, dtype=float)
    if quality.ndim != 2 or quality.shape != cost.shape or quality.shape[1] != len(models):
        raise ValueError(
            f"quality {quality.shape} and cost {cost.shape} must both be (n_prompts, {len(models)})"
        )
    if quality.shape[0] == 0:
        raise ValueError("no prompts")
    if np.isnan(quality).any() or np.isnan(cost).any():
        raise ValueError("quality and cost must not contain NaN: pass only priced models")
    mq, mc = quality.mean(axis=0), cost.mean(axis=0)
    singles = {m: Point(float(mc[j]), float(mq[j])) for j, m in enumerate(models)}
    # Ties: best → the cheaper; cheapest → the better; then the first listed.
    best = min(range(len(models)), key=lambda j: (-mq[j], mc[j], j))
    cheapest = min(range(len(models)), key=lambda j: (mc[j], -mq[j], j))
    top = quality >= quality.max(axis=1, keepdims=True) - _EPS
    # Among the best-scoring models of each prompt take the one cheapest on that prompt; remaining ties go to the
    # lower mean cost, then to the first listed.
    masked = np.where(top, cost, np.inf)
    tied = masked <= masked.min(axis=1, keepdims=True)
    rank = np.empty(len(models), dtype=float)
    rank[np.lexsort((np.arange(len(models)), mc))] = np.arange(len(models))
    choice = np.where(tied, rank[None, :], np.inf).argmin(axis=1)
    rows = np.arange(quality.shape[0])
    oracle = Point(float(cost[rows, choice].mean()), float(quality[rows, choice].mean()))
    return Baselines(tuple(models), singles, models[best], models[cheapest], oracle, choice)


# ----------------------------------------------------------------------------------------------------- hull


def upper_hull(points: Iterable[Point]) -> list[Point]:
    """Upper, non-decreasing convex hull: vertices by increasing cost, ending at the highest-quality vertex."""
    pts = sorted({(float(p.cost), float(p.quality)) for p in points}, key=lambda t: (t[0], -t[1]))
    if not pts:
        raise ValueError("no points")
    dedup: list[tuple[float, float]] = []
    for c, q in pts:  # keep the best quality per cost
        if not dedup or c > dedup[-1][0]:
            dedup.append((c, q))
    hull: list[tuple[float, float]] = []
    for c, q in dedup:
        while len(hull) >= 2:
            (c1, q1), (c2, q2) = hull[-2], hull[-1]
            # pop the middle point if it lies on or below the chord from hull[-2] to the new point
            if (q2 - q1) * (c - c1) <= (q - q1) * (c2 - c1) + _EPS * max(1.0, abs(c - c1)):
                hull.pop()
            else:
                break
        hull.append((c, q))
    top = max(range(len(hull)), key=lambda i: (hull[i][1], -i))
    return [Point(c, q) for c, q in hull[: top + 1]]


def router_curve(router_points: Iterable[Point], base: Baselines) -> list[Point]:
    """The design's router curve: hull of the router's points plus the cheapest model's point."""
    return upper_hull([*router_points, base.cheapest_point])


def hull_quality_at(hull: Sequence[Point], c: float) -> float | None:
    """h(c): linear between vertices, flat after the last; None below the cheapest vertex (unreachable)."""
    if c < hull[0].cost - _EPS:
        return None
    for a, b in zip(hull, hull[1:], strict=False):
        if c <= b.cost:
            if b.cost == a.cost:
                return b.quality
            return a.quality + (b.quality - a.quality) * (c - a.cost) / (b.cost - a.cost)
    return hull[-1].quality


def hull_integral(hull: Sequence[Point], lo: float, hi: float) -> float:
    """Exact ∫ h(c) dc over [lo, hi] (h is piecewise linear, so trapezoids on its breakpoints are exact)."""
    if hi < lo:
        raise ValueError("hi < lo")
    if lo < hull[0].cost - _EPS:
        raise ValueError(f"the hull starts at cost {hull[0].cost}, after the integration start {lo}")
    xs = sorted({lo, hi, *(p.cost for p in hull if lo < p.cost < hi)})
    ys: list[float] = []
    for x in xs:
        y = hull_quality_at(hull, x)
        if y is None:
            raise ValueError(f"the hull does not reach cost {x}")
        ys.append(y)
    return float(sum((x2 - x1) * (y1 + y2) / 2.0 for x1, x2, y1, y2 in zip(xs, xs[1:], ys, ys[1:], strict=False)))


def cost_to_parity(hull: Sequence[Point], target_quality: float, best_cost: float) -> float | None:
    """Lowest hull cost with quality >= target, as % of ``best_cost``; None if the hull never reaches it."""
    for i, p in enumerate(hull):
        if p.quality >= target_quality - _EPS:
            if i == 0:
                c = p.cost
            else:
                a = hull[i - 1]
                c = a.cost + (target_quality - a.quality) * (p.cost - a.cost) / (p.quality - a.quality)
            return 100.0 * c / best_cost
    return None


def quality_at_budget(hull: Sequence[Point], best_cost: float, fraction: float) -> float | None:
    return hull_quality_at(hull, fraction * best_cost)


def oracle_normalised_auc(hull: Sequence[Point], base: Baselines) -> float | None:
    """(A_h − A_R) / (A_O − A_R) over [c0, cB]; None where design §5 says it is undefined."""
    c0, q0 = base.cheapest_point.cost, base.cheapest_point.quality
    cb, qb = base.best_point.cost, base.best_point.quality
    co, qo = base.oracle.cost, base.oracle.quality
    if cb <= c0 or co >= cb:
        return None
    a_h = hull_integral(hull, c0, cb)
    a_r = (cb - c0) * (q0 + qb) / 2.0
    a_o = qo * (cb - c0) if co <= c0 else (co - c0) * (q0 + qo) / 2.0 + (cb - co) * qo
    if a_o - a_r <= _EPS:
        return None
    return (a_h - a_r) / (a_o - a_r)


@dataclass(frozen=True)
class CurveReport:
    """Every design §5 number for one router curve on one split."""

    hull: list[Point]
    cost_to_parity_pct: float | None
    cost_to_parity_99_pct: float | None
    quality_at_25: float | None
    quality_at_50: float | None
    quality_at_100: float | None
    auc: float | None


def evaluate_curve(router_points: Iterable[Point], base: Baselines) -> CurveReport:
    hull = router_curve(router_points, base)
    cb, qb = base.best_point.cost, base.best_point.quality
    return CurveReport(
        hull=hull,
        cost_to_parity_pct=cost_to_parity(hull, qb, cb),
        cost_to_parity_99_pct=cost_to_parity(hull, 0.99 * qb, cb),
        quality_at_25=quality_at_budget(hull, cb, 0.25),
        quality_at_50=quality_at_budget(hull, cb, 0.50),
        quality_at_100=quality_at_budget(hull, cb, 1.00),
        auc=oracle_normalised_auc(hull, base),
    )


def mixing_points(a: Point, b: Point, n: int = 11) -> list[Point]:
    """Points of mixing two policies in proportions 0, 1/(n-1), …, 1 (random mixing when a=cheapest, b=best)."""
    return [
        Point(a.cost + t * (b.cost - a.cost), a.quality + t * (b.quality - a.quality))
        for t in np.linspace(0, 1, n)
    ]


# ------------------------------------------------------------------------------------------ RouteLLM (APGR/CPT)
# Mirrors github.com/lm-sys/RouteLLM, routellm/evals/evaluate.py (generate_results: pct_call_metric, auc_metric,
# apgr_metric) and routellm/evals/benchmarks.py (get_optimal_accuracy). The one deliberate difference: RouteLLM sorts
# the router's points with pandas' default (unstable) sort; we use a stable sort so ties keep their input order.


def _sorted_curve(strong_pct: Sequence[float], quality: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(strong_pct, dtype=float)
    y = np.asarray(quality, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError("strong_pct and quality must be equal-length, non-empty 1-D sequences")
    order = np.argsort(x, kind="stable")
    return x[order], y[order]


def gap_to_recover(weak_quality: float, strong_quality: float) -> bool:
    """Whether the strong model is measurably better than the weak one: APGR and CPT are ratios of that gap."""
    return strong_quality - weak_quality > 1e-12 * max(1.0, abs(strong_quality))


def apgr(
    strong_pct: Sequence[float], quality: Sequence[float], weak_quality: float, strong_quality: float
) -> float:
    """Average performance gap recovered: (AUC − weak AUC) / (strong AUC − weak AUC), AUCs by the trapezoid rule over
    the router's own points with x = % of strong-model calls / 100 (RouteLLM's ``apgr_metric``).

    Undefined — NaN, without a numpy warning — when the strong model is no better than the weak one (e.g. the best
    model is also the cheapest): there is no gap to recover. ``tierwise eval`` prints "none" then."""
    if not gap_to_recover(weak_quality, strong_quality):
        return float("nan")
    x, y = _sorted_curve(strong_pct, quality)
    auc = np.trapezoid(y, x / 100)
    weak_auc = np.trapezoid(np.full(x.shape, weak_quality, dtype=float), x / 100)
    strong_auc = np.trapezoid(np.full(x.shape, strong_quality, dtype=float), x / 100)
    if strong_auc - weak_auc <= 0:  # every point at one x: no area to compare
        return float("nan")
    return float((auc - weak_auc) / (strong_auc - weak_auc))


def cpt(
    strong_pct: Sequence[float],
    quality: Sequence[float],
    weak_quality: float,
    strong_quality: float,
    x: float,
) -> float:
    """CPT(x): % of strong-model calls needed to reach quality weak + x·(strong − weak), by ``np.interp`` over the
    router's points sorted by strong-call % (RouteLLM's ``pct_call_metric``; x = 0.5 is CPT(50%))."""
    if not gap_to_recover(weak_quality, strong_quality):
        return float("nan")  # no gap: undefined, as APGR
    xs, ys = _sorted_curve(strong_pct, quality)
    return float(np.interp(x * (strong_quality - weak_quality) + weak_quality, ys, xs))


def budgeted_oracle_quality(q_weak: np.ndarray, q_strong: np.ndarray, strong_fraction: float) -> float:
    """RouteLLM's "optimal" router at a strong-call budget: the weak model everywhere, upgraded to the strong model on
    the prompts where it gains most, for at most ``strong_fraction``·n calls (fractional budgets count
    fractionally, as ``get_optimal_accuracy`` does for MMLU/GSM8K)."""
    q_weak = np.asarray(q_weak, dtype=float)
    gains = np.sort(np.asarray(q_strong, dtype=float) - q_weak)[::-1]
    gains = gains[gains > 0]
    budget = strong_fraction * q_weak.size
    whole = int(min(np.floor(budget), gains.size))
    bonus = gains[:whole].sum()
    if whole < gains.size:
        bonus += (budget - whole) * gains[whole]
    return float((q_weak.sum() + bonus) / q_weak.size)
