"""Gate trainer recovers a known logistic relation; training on a real shared set through the CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from tests.shared_data import needs_data
from tierwise.lab.datasets import OutcomeSet, PromptOutcomes
from tierwise.lab.datasets.format import ModelOutcome
from tierwise.routing.gates.learned import FEATURES, load_gate_artifact
from tierwise.routing.learned.gate_train import gate_design, save_gate, train_gate
from tierwise.routing.learned.numerics import add_bias, fit_logistic


def test_newton_recovers_known_coefficients() -> None:
    rng = np.random.default_rng(0)
    X = add_bias(rng.normal(size=(20000, 3)))
    w_true = np.array([1.5, -2.0, 0.5, 0.3])
    y = (rng.random(len(X)) < 1 / (1 + np.exp(-X @ w_true))).astype(float)
    np.testing.assert_allclose(fit_logistic(X, y, l2=1e-6), w_true, atol=0.08)


def _gate_set(n: int, seed: int) -> OutcomeSet:
    """Right with probability sigmoid(6·(conf − 0.5)): the gate must learn a rising curve in confidence."""
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(n):
        conf = float(rng.uniform(0.01, 0.99))
        right = rng.random() < 1 / (1 + np.exp(-6 * (conf - 0.5)))
        mo = ModelOutcome("42", float(right), 10, 1, 1e-5, confidence=None if i % 10 == 0 else conf)
        prompts.append(PromptOutcomes(f"p{i}", "train", f"q{i}", {"m": mo}))
    return OutcomeSet("syn-gate", ["m"], prompts)


def test_gate_trainer_recovers_the_relation(tmp_path) -> None:
    oset = _gate_set(3000, 1)
    res = train_gate(oset, "m")
    assert res.n_skipped == 300 and res.n_rows == 2700
    assert res.cv_log_loss < res.cv_log_loss_constant - 0.05
    path = save_gate(res, tmp_path / "gate.json", set_name=oset.name, model="m")
    w = load_gate_artifact(path)  # the runtime loader accepts it
    assert json.loads(path.read_text())["features"] == list(FEATURES)
    X, y, _ = gate_design(oset, "m")
    p = 1 / (1 + np.exp(-(X @ w)))
    conf = X[:, 0]
    # predictions track the true probability curve
    truth = 1 / (1 + np.exp(-6 * (conf - 0.5)))
    assert np.mean(np.abs(p - truth)) < 0.06
    with pytest.raises(ValueError, match="no model 'x'"):
        train_gate(oset, "x")


def _cli(*argv: str) -> int:
    from tierwise.lab.train_cli import add_parsers

    ap = argparse.ArgumentParser()
    add_parsers(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(list(argv))
    return args.fn(args)


@needs_data
def test_train_router_on_a_real_shared_set(tmp_path, capsys) -> None:
    from tierwise.routing.learned import load_router

    out = tmp_path / "date.npz"
    assert _cli("train-router", "--data", "mot/date", "--out", str(out), "--embedder", "minilm-static") == 0
    text = capsys.readouterr().out
    assert "CV Brier" in text and "calibrated point for" in text
    router = load_router(out, expected_models=["gpt-3.5-turbo", "gpt-4"])
    assert router.header["training"]["set"] == "mot/date" and router.header["training"]["n_prompts"] == 163
    pred = router.predict(["Today is 3/5/2020. What is the date one week from today in MM/DD/YYYY?"])
    assert pred.shape == (1, 2)
    assert _cli("train-gate", "--data", "mot/date", "--model", "gpt-3.5-turbo", "--out", str(tmp_path / "g.json")) == 0
    load_gate_artifact(tmp_path / "g.json")
    assert _cli("train-router", "--data", "mot/date", "--out", str(out), "--models", "gpt-4,nope") == 2
    assert "no model(s) ['nope']" in capsys.readouterr().err
