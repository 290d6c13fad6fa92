"""Routing-quality metrics (design §5, RouteLLM APGR/CPT): hand-computed tiny cases plus property tests."""

from __future__ import annotations

import numpy as np
import pytest

from tierwise.lab.metrics import (
    Point,
    apgr,
    budgeted_oracle_quality,
    compute_baselines,
    cost_to_parity,
    cpt,
    evaluate_curve,
    hull_integral,
    hull_quality_at,
    mixing_points,
    oracle_normalised_auc,
    router_curve,
    upper_hull,
)

# Three prompts, three models A (cheap) < B < C (expensive), constant per-prompt costs 1, 2, 4.
#   p1: everyone right; p2: B and C right; p3: nobody right.
Q = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 0]], dtype=float)
C = np.array([[1, 2, 4]] * 3, dtype=float)
MODELS = ["A", "B", "C"]


def base3():
    return compute_baselines(Q, C, MODELS)


def test_baselines_hand_computed() -> None:
    b = base3()
    assert b.singles == {"A": Point(1, 1 / 3), "B": Point(2, 2 / 3), "C": Point(4, 2 / 3)}
    assert b.best == "B"  # B and C tie on quality: ties go to the cheaper
    assert b.cheapest == "A"
    # oracle: p1 -> A (cheapest of the right ones), p2 -> B, p3 -> nobody right -> cheapest A
    assert list(b.oracle_choice) == [0, 1, 0]
    assert b.oracle.cost == pytest.approx(4 / 3)
    assert b.oracle.quality == pytest.approx(2 / 3)


def test_cheapest_tie_goes_to_better_model_and_oracle_uses_per_prompt_costs() -> None:
    q = np.array([[1, 1], [0, 1]], dtype=float)
    c = np.array([[1, 3], [3, 1]], dtype=float)  # equal mean cost 2; the second model is better
    b = compute_baselines(q, c, ["x", "y"])
    assert b.cheapest == "y" and b.best == "y"
    assert list(b.oracle_choice) == [0, 1]  # p1: both right, x cheaper there; p2: only y right
    assert b.oracle == Point(1.0, 1.0)


def test_baselines_reject_nan_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="NaN"):
        compute_baselines(np.array([[1.0, np.nan]]), np.array([[1.0, 2.0]]), ["a", "b"])
    with pytest.raises(ValueError, match="n_prompts"):
        compute_baselines(np.ones((2, 2)), np.ones((2, 3)), ["a", "b"])


def test_upper_hull_drops_dominated_and_decreasing_points() -> None:
    pts = [Point(1, 0.5), Point(2, 0.6), Point(3, 0.9), Point(4, 0.8), Point(2.5, 0.65), Point(1, 0.4)]
    assert upper_hull(pts) == [Point(1, 0.5), Point(3, 0.9)]
    # collinear middle points are not vertices; the curve is unchanged
    assert upper_hull([Point(1, 0), Point(2, 1), Point(3, 2)]) == [Point(1, 0), Point(3, 2)]
    # the cheapest point being the best leaves a single flat vertex
    assert upper_hull([Point(1, 0.9), Point(2, 0.5)]) == [Point(1, 0.9)]


def test_hull_evaluation_and_exact_integral() -> None:
    hull = [Point(1, 0.2), Point(3, 0.6), Point(5, 0.7)]
    assert hull_quality_at(hull, 0.5) is None  # below the cheapest point: unreachable
    assert hull_quality_at(hull, 2) == pytest.approx(0.4)
    assert hull_quality_at(hull, 9) == pytest.approx(0.7)  # flat after the last vertex
    # ∫_1^3 (trapezoid 0.2..0.6) + ∫_3^5 (0.6..0.7) + ∫_5^6 0.7 = 0.8 + 1.3 + 0.7
    assert hull_integral(hull, 1, 6) == pytest.approx(2.8)
    assert hull_integral(hull, 2, 4) == pytest.approx((0.4 + 0.6) / 2 + (0.6 + 0.65) / 2)
    with pytest.raises(ValueError):
        hull_integral(hull, 0.5, 2)


def test_curve_report_hand_computed_without_parity() -> None:
    b = base3()
    r = evaluate_curve([Point(1.5, 0.6)], b)
    assert r.hull == [Point(1, 1 / 3), Point(1.5, 0.6)]
    assert r.cost_to_parity_pct is None and r.cost_to_parity_99_pct is None
    assert r.quality_at_25 is None  # 0.5 < c0 = 1
    assert r.quality_at_50 == pytest.approx(1 / 3)
    assert r.quality_at_100 == pytest.approx(0.6)
    # A_h = 0.5*(1/3+0.6)/2 + 0.5*0.6 = 0.53333; A_R = 0.5; A_O = (1/3)(1/3+2/3)/2 + (2/3)(2/3) = 11/18
    assert r.auc == pytest.approx((0.5 * (1 / 3 + 0.6) / 2 + 0.3 - 0.5) / (11 / 18 - 0.5))
    assert r.auc == pytest.approx(0.3)


def test_curve_report_hand_computed_with_parity() -> None:
    b = base3()
    r = evaluate_curve([Point(1.5, 0.7)], b)
    # parity on the segment (1, 1/3) -> (1.5, 0.7): c = 1 + (2/3 - 1/3) / (0.7 - 1/3) * 0.5 = 1 + 5/11
    assert r.cost_to_parity_pct == pytest.approx(100 * (1 + 5 / 11) / 2)
    assert r.cost_to_parity_99_pct == pytest.approx(100 * (1 + (0.66 - 1 / 3) / (0.7 - 1 / 3) * 0.5) / 2)
    assert r.auc == pytest.approx(((0.5 * (1 / 3 + 0.7) / 2 + 0.35) - 0.5) / (11 / 18 - 0.5))
    assert r.auc == pytest.approx(0.975)


def test_cost_to_parity_at_first_vertex_and_never() -> None:
    hull = [Point(2, 0.9), Point(4, 0.95)]
    assert cost_to_parity(hull, 0.8, best_cost=4) == pytest.approx(50.0)
    assert cost_to_parity(hull, 0.96, best_cost=4) is None


def test_auc_undefined_cases() -> None:
    # best model is also the cheapest: cB <= c0
    b = compute_baselines(np.array([[1.0, 0.0]]), np.array([[1.0, 2.0]]), ["a", "b"])
    assert oracle_normalised_auc(router_curve([], b), b) is None
    # the oracle costs at least as much as the best model: cO >= cB
    q = np.array([[0, 1, 0], [0, 0, 1]], dtype=float)
    c = np.array([[1, 2, 10], [1, 2, 10]], dtype=float)
    b = compute_baselines(q, c, ["a", "b", "c"])
    assert b.best == "b" and b.oracle.cost == pytest.approx(6.0)
    assert evaluate_curve([b.best_point], b).auc is None


def test_auc_when_oracle_is_cheaper_than_cheapest_model() -> None:
    q = np.array([[1, 1], [0, 1]], dtype=float)
    c = np.array([[1, 4], [3, 1]], dtype=float)  # means: a (2, .5), b (2.5, 1); oracle (1, 1)
    b = compute_baselines(q, c, ["a", "b"])
    assert b.cheapest == "a" and b.best == "b" and b.oracle == Point(1.0, 1.0)
    # O is flat at qO over [c0, cB]; a router at (c0, 1.0) matches it exactly
    assert evaluate_curve([Point(2.0, 1.0)], b).auc == pytest.approx(1.0)
    assert evaluate_curve([b.best_point], b).auc == pytest.approx(0.0)


def _random_problem(seed: int, n: int = 2000, m: int = 4) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    skill = np.sort(rng.uniform(0.3, 0.9, m))
    quality = (rng.uniform(size=(n, m)) < skill).astype(float)
    price = np.sort(rng.uniform(0.1, 5.0, m))
    cost = price * rng.uniform(0.5, 1.5, size=(n, m))
    return quality, cost, [f"m{j}" for j in range(m)]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_mixing_scores_zero_and_oracle_mixing_scores_one(seed: int) -> None:
    q, c, models = _random_problem(seed)
    b = compute_baselines(q, c, models)
    assert oracle_normalised_auc(
        router_curve(mixing_points(b.cheapest_point, b.best_point), b), b
    ) == pytest.approx(0.0, abs=1e-9)
    assert oracle_normalised_auc(
        router_curve(mixing_points(b.cheapest_point, b.oracle), b), b
    ) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_per_prompt_random_routing_scores_about_zero(seed: int) -> None:
    """A router that flips a biased coin per prompt between cheapest and best traces line R up to sampling noise."""
    q, c, models = _random_problem(seed)
    b = compute_baselines(q, c, models)
    i0, ib = models.index(b.cheapest), models.index(b.best)
    rng = np.random.default_rng(seed + 100)
    rows = np.arange(q.shape[0])
    points = []
    for p in np.linspace(0, 1, 11):
        pick = np.where(rng.uniform(size=q.shape[0]) < p, ib, i0)
        points.append(Point(float(c[rows, pick].mean()), float(q[rows, pick].mean())))
    auc = oracle_normalised_auc(router_curve(points, b), b)
    assert auc is not None and abs(auc) < 0.06
    # and the same coin between cheapest and the oracle's choice traces line O
    points = []
    for p in np.linspace(0, 1, 11):
        pick = np.where(rng.uniform(size=q.shape[0]) < p, b.oracle_choice, i0)
        points.append(Point(float(c[rows, pick].mean()), float(q[rows, pick].mean())))
    auc = oracle_normalised_auc(router_curve(points, b), b)
    assert auc is not None and abs(auc - 1.0) < 0.06


def test_apgr_and_cpt_hand_computed() -> None:
    pct, acc = [100, 0, 50], [0.8, 0.6, 0.75]  # deliberately unsorted: RouteLLM sorts by strong %
    # AUC = 0.5*(0.6+0.75)/2 + 0.5*(0.75+0.8)/2 = 0.725; weak AUC 0.6, strong AUC 0.8
    assert apgr(pct, acc, 0.6, 0.8) == pytest.approx(0.625)
    assert cpt(pct, acc, 0.6, 0.8, 0.5) == pytest.approx(100 / 3)  # target 0.70 on the 0..50 segment
    assert cpt(pct, acc, 0.6, 0.8, 0.2) == pytest.approx(40 / 3)
    assert cpt(pct, acc, 0.6, 0.8, 0.8) == pytest.approx(60.0)


def test_apgr_of_the_random_router_is_one_half_and_cpt_is_linear() -> None:
    pct = np.linspace(0, 100, 11)
    acc = 0.68 + (0.81 - 0.68) * pct / 100
    assert apgr(pct, acc, 0.68, 0.81) == pytest.approx(0.5)
    for x in (0.2, 0.5, 0.8):
        assert cpt(pct, acc, 0.68, 0.81, x) == pytest.approx(100 * x)
    # RouteLLM integrates over the router's own x-range only: weak/strong AUCs shrink with it
    assert apgr([20, 80], [0.7, 0.8], 0.6, 0.8) == pytest.approx(
        ((0.7 + 0.8) / 2 * 0.6 - 0.36) / (0.48 - 0.36)
    )


def test_budgeted_oracle_matches_routellm_optimal_accuracy() -> None:
    weak = np.array([1, 0, 0, 1], dtype=float)
    strong = np.array([1, 1, 1, 0], dtype=float)
    assert budgeted_oracle_quality(weak, strong, 0.0) == pytest.approx(0.5)
    assert budgeted_oracle_quality(weak, strong, 0.25) == pytest.approx(0.75)
    assert budgeted_oracle_quality(weak, strong, 0.125) == pytest.approx(0.625)  # fractional calls count
    assert budgeted_oracle_quality(weak, strong, 1.0) == pytest.approx(1.0)  # never downgrades a weak win
    pct = np.linspace(0, 100, 11)
    opt = [budgeted_oracle_quality(weak, strong, p / 100) for p in pct]
    assert apgr(pct, opt, weak.mean(), strong.mean()) > 1.0  # the optimal router beats the strong model here
