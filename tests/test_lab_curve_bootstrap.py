"""Paired bootstrap of router curves (tierwise.lab.curve_bootstrap): exact properties that hold on every draw."""

from __future__ import annotations

import numpy as np
import pytest

from tierwise.lab.curve_bootstrap import PerPrompt, curve_draws, interval
from tierwise.lab.metrics import compute_baselines

MODELS = ["small", "big"]


def _split(n: int = 300, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(quality, cost) of a two-model split: the small model right on 55 %, the big one on 85 %, 10× dearer."""
    rng = np.random.default_rng(seed)
    q = np.stack([rng.random(n) < 0.55, rng.random(n) < 0.85], axis=1).astype(float)
    c = np.stack([np.full(n, 0.1), np.full(n, 1.0)], axis=1) * rng.uniform(0.8, 1.2, (n, 1))
    return q, c


def test_identical_methods_differ_by_exactly_zero_on_every_draw() -> None:
    q, c = _split()
    chosen = np.stack([np.where(np.arange(len(q)) % k == 0, 1, 0) for k in (1, 2, 3, 5)])
    a = PerPrompt.from_choices(chosen, c, q)
    d = curve_draws(q, c, MODELS, {"a": a, "b": PerPrompt(a.cost.copy(), a.quality.copy())}, draws=50)
    assert np.array_equal(d["a"]["auc"], d["b"]["auc"])
    assert np.all(np.isfinite(d["a"]["auc"])) and d["a"]["auc"].std() > 0  # the split's noise is real


def test_the_per_prompt_oracle_scores_exactly_one_on_every_draw() -> None:
    """The oracle is recomputed on each draw from the drawn prompts, so routing to each prompt's oracle model (a
    per-prompt choice) is that draw's oracle: AUC 1 every time — the draws are paired, prompt by prompt."""
    q, c = _split()
    oracle = compute_baselines(q, c, MODELS).oracle_choice
    d = curve_draws(q, c, MODELS, {"oracle": PerPrompt.from_choices(oracle[None, :], c, q)}, draws=60, seed=3)
    assert np.allclose(d["oracle"]["auc"], 1.0)


def test_never_reaching_parity_is_infinite_and_kept_as_a_bound() -> None:
    q, c = _split()
    small = PerPrompt.from_choices(np.zeros((1, len(q)), dtype=int), c, q)
    d = curve_draws(q, c, MODELS, {"small": small}, draws=40)
    assert np.all(np.isinf(d["small"]["ctp"]))
    assert interval(d["small"]["ctp"]) == (np.inf, np.inf)


def test_draws_are_reproducible_and_the_interval_is_ordered() -> None:
    q, c = _split()
    m = {"half": PerPrompt.from_choices((np.arange(len(q)) % 2)[None, :], c, q)}
    d1, d2 = curve_draws(q, c, MODELS, m, draws=30, seed=7), curve_draws(q, c, MODELS, m, draws=30, seed=7)
    assert np.array_equal(d1["half"]["ctp99"], d2["half"]["ctp99"], equal_nan=True)
    lo, hi = interval(d1["half"]["auc"])
    assert lo <= np.nanmedian(d1["half"]["auc"]) <= hi
    assert np.isnan(interval(np.array([np.nan, np.nan]))[0])


def test_mismatched_shapes_are_refused() -> None:
    q, c = _split(50)
    with pytest.raises(ValueError, match="prompts, the split has 50"):
        curve_draws(q, c, MODELS, {"x": PerPrompt(np.zeros((2, 49)), np.zeros((2, 49)))})
    with pytest.raises(ValueError, match="must both be"):
        PerPrompt(np.zeros((2, 5)), np.zeros((2, 4)))
