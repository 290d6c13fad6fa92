"""Paired bootstrap over the test prompts: how much of a difference between two routers' design §5 numbers
(oracle-normalised AUC, cost to 99 % / 100 % of the best model's quality) is sampling noise of the test split.

Why: routers are compared on test splits of a few hundred prompts, where the best single model and the oracle
themselves move when the prompts are redrawn. A loss of 0.02 AUC on a split whose AUC swings by ±0.05 under
resampling says nothing about which router is better; an operator deciding whether to switch routers on their own
logged traffic needs the interval, not the point.

Protocol: each method is the fixed set of operating points it reported on the full test split (a router's knob
sweep; for methods read off the hull, its vertices), given as per-prompt (cost, quality) arrays. Draw ``n`` test
prompts with replacement, ``draws`` times; on each draw recompute the baselines (best model, oracle) and every
method's hull, AUC and costs-to-parity from the same drawn prompts — paired, so a prompt that is hard for everyone
moves all methods together. The points are not re-chosen on each draw: this is the noise of the split given the
methods' operating points, not the variance of training them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tierwise.lab.evaluate import PromptResult
from tierwise.lab.metrics import Point, compute_baselines, evaluate_curve

METRICS = ("auc", "ctp99", "ctp")  # oracle-normalised AUC, cost to 0.99·qB and to qB (% of cB; ∞ = never reached)


@dataclass(frozen=True)
class PerPrompt:
    """One method's operating points as (n_points, n_prompts) cost and quality arrays (prompts in split order)."""

    cost: np.ndarray
    quality: np.ndarray

    def __post_init__(self) -> None:
        if self.cost.ndim != 2 or self.cost.shape != self.quality.shape or self.cost.shape[0] == 0:
            raise ValueError(f"cost {self.cost.shape} and quality {self.quality.shape} must both be "
                             "(n_points ≥ 1, n_prompts)")

    @classmethod
    def from_runs(cls, runs: Sequence[Sequence[PromptResult]]) -> PerPrompt:
        """From engine runs over the test split, one run per operating point."""
        return cls(np.array([[r.cost for r in run] for run in runs], dtype=float),
                   np.array([[r.quality for r in run] for run in runs], dtype=float))

    @classmethod
    def from_choices(cls, chosen: np.ndarray, cost: np.ndarray, quality: np.ndarray) -> PerPrompt:
        """``chosen``: (n_points, n_prompts) model indices into the columns of (n_prompts, n_models) matrices."""
        rows = np.arange(cost.shape[0])[None, :]
        return cls(cost[rows, chosen], quality[rows, chosen])


def curve_draws(quality: np.ndarray, cost: np.ndarray, models: Sequence[str], methods: Mapping[str, PerPrompt],
                draws: int = 400, seed: int = 0, progress: Callable[[int, int], None] | None = None
                ) -> dict[str, dict[str, np.ndarray]]:
    """Per method and metric, ``draws`` paired bootstrap values (NaN where AUC is undefined on a draw; ∞ where a
    cost-to-parity is never reached). ``quality``/``cost``: the (n_prompts, n_models) single-model matrices."""
    n = quality.shape[0]
    for name, pp in methods.items():
        if pp.cost.shape[1] != n:
            raise ValueError(f"{name}: {pp.cost.shape[1]} prompts, the split has {n}")
    rng = np.random.default_rng(seed)
    out = {m: {k: np.empty(draws) for k in METRICS} for m in methods}
    for i in range(draws):
        idx = rng.integers(0, n, n)
        base = compute_baselines(quality[idx], cost[idx], models)
        for name, pp in methods.items():
            c, q = pp.cost[:, idx].mean(axis=1), pp.quality[:, idx].mean(axis=1)
            rep = evaluate_curve([Point(float(x), float(y)) for x, y in zip(c, q, strict=True)], base)
            out[name]["auc"][i] = np.nan if rep.auc is None else rep.auc
            out[name]["ctp99"][i] = np.inf if rep.cost_to_parity_99_pct is None else rep.cost_to_parity_99_pct
            out[name]["ctp"][i] = np.inf if rep.cost_to_parity_pct is None else rep.cost_to_parity_pct
        if progress is not None and ((i + 1) % 10 == 0 or i + 1 == draws):
            progress(i + 1, draws)
    return out


def interval(x: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the draws (NaN draws dropped; ∞ — never reached — is kept and can be a bound)."""
    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo, hi = np.quantile(x, [a, 1 - a], method="inverted_cdf")  # an observed draw: no ∞ − ∞ interpolation
    return float(lo), float(hi)
