"""Choice rules: turn predicted per-model quality into one model per prompt (design §3).

- ``"threshold"``: the cheapest model whose predicted quality clears the threshold; when none does, the model with
  the highest predicted quality (never a silent downgrade to something predicted worse).
- ``"lambda"``: maximise predicted quality − λ·cost, with each model's expected cost (its mean training cost in USD
  per request, stored in the artifact). λ is in quality per USD; λ = 0 is "best predicted", λ → ∞ "cheapest".

Both are vectorised over prompts, so sweeping the knob over a whole test split costs a few array passes per setting.
Ties always go to the cheaper model. ``allowed`` (a boolean mask over models) lets governance remove models per
request without retraining.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Rule = Literal["threshold", "lambda"]
RULES: tuple[Rule, ...] = ("threshold", "lambda")


def _allowed_mask(m: int, allowed: Sequence[bool] | np.ndarray | None) -> np.ndarray:
    if allowed is None:
        return np.ones(m, dtype=bool)
    mask = np.asarray(allowed, dtype=bool)
    if mask.shape != (m,):
        raise ValueError(f"allowed mask must have {m} entries, got shape {mask.shape}")
    if not mask.any():
        raise ValueError("no model is allowed: the choice rules need at least one")
    return mask


def cost_order(costs: np.ndarray) -> np.ndarray:
    """Model indices from cheapest to dearest (stable: equal costs keep their listed order)."""
    return np.argsort(np.asarray(costs, dtype=float), kind="stable")


def _allowed_by_cost(
    pred: np.ndarray, costs: np.ndarray, allowed: Sequence[bool] | np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(pred as a 2-D float array, allowed model indices from cheapest to dearest)."""
    pred = np.atleast_2d(np.asarray(pred, dtype=float))
    mask = _allowed_mask(pred.shape[1], allowed)
    order = cost_order(costs)
    return pred, order[mask[order]]


def choose_threshold(
    pred: np.ndarray, costs: np.ndarray, threshold: float, allowed: Sequence[bool] | np.ndarray | None = None
) -> np.ndarray:
    """Per prompt, the cheapest allowed model with pred ≥ threshold, else the allowed argmax of pred."""
    pred, order = _allowed_by_cost(pred, costs, allowed)
    p = pred[:, order]
    clears = p >= threshold
    first = np.argmax(clears, axis=1)
    best = np.argmax(p, axis=1)  # first maximum in cost order = the cheaper among ties
    return order[np.where(clears.any(axis=1), first, best)]


def choose_lambda(
    pred: np.ndarray, costs: np.ndarray, lam: float, allowed: Sequence[bool] | np.ndarray | None = None
) -> np.ndarray:
    """Per prompt, the allowed argmax of pred − lam·cost (ties to the cheaper model)."""
    pred, order = _allowed_by_cost(pred, costs, allowed)
    c = np.asarray(costs, dtype=float)[order]
    if np.isinf(lam):
        return np.full(pred.shape[0], order[0])
    score = pred[:, order] - lam * c[None, :]
    return order[np.argmax(score, axis=1)]


def choose(
    pred: np.ndarray, costs: np.ndarray, rule: Rule, knob: float, allowed: Sequence[bool] | np.ndarray | None = None
) -> np.ndarray:
    if rule == "threshold":
        return choose_threshold(pred, costs, knob, allowed)
    if rule == "lambda":
        return choose_lambda(pred, costs, knob, allowed)
    raise ValueError(f"unknown choice rule {rule!r}; choose one of {RULES}")


def knob_grid(pred: np.ndarray, costs: np.ndarray, rule: Rule, n: int = 201) -> np.ndarray:
    """Knob values that sweep ``rule`` from "cheapest" to "best predicted" on these predictions.

    Thresholds: quantiles of the predicted values (every decision changes only at one of them) plus the ends.
    λ: quantiles of the positive break-even values (p_j − p_k)/(c_j − c_k) over prompts and model pairs, plus 0 and ∞.
    """
    pred = np.asarray(pred, dtype=float)
    qs = np.linspace(0.0, 1.0, max(2, n - 2))
    if rule == "threshold":
        return np.unique(np.concatenate([[0.0], np.quantile(pred, qs), [1.0 + 1e-9]]))
    if rule == "lambda":
        c = np.asarray(costs, dtype=float)
        dp = pred[:, :, None] - pred[:, None, :]
        dc = c[:, None] - c[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = dp / dc[None]
        pos = ratio[np.isfinite(ratio) & (ratio > 0)]
        inner = np.quantile(pos, qs) if pos.size else np.array([])
        return np.unique(np.concatenate([[0.0], inner, [np.inf]]))
    raise ValueError(f"unknown choice rule {rule!r}; choose one of {RULES}")


def sweep(
    pred: np.ndarray, costs: np.ndarray, rule: Rule, knobs: Sequence[float]
) -> np.ndarray:
    """Chosen model per knob and prompt: (len(knobs), n_prompts)."""
    return np.stack([choose(pred, costs, rule, float(k)) for k in knobs])
