"""Routing-quality metrics live in :mod:`tierwise.quality_metrics` (the product's train-router and calibrate use
them, so they are not lab-only); this module keeps the lab's import path."""

from tierwise.quality_metrics import (  # noqa: F401
    _EPS,
    Baselines,
    CurveReport,
    Point,
    _sorted_curve,
    apgr,
    budgeted_oracle_quality,
    compute_baselines,
    cost_to_parity,
    cpt,
    evaluate_curve,
    gap_to_recover,
    hull_integral,
    hull_quality_at,
    mixing_points,
    oracle_normalised_auc,
    quality_at_budget,
    router_curve,
    upper_hull,
)
