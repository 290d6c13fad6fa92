"""Contextual cascade gate: features on hand cases, artifact refusal, errors escalate, training recovers a known
relation, and the simulator equals the engine (with router priors and a start router) on a real set."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from tests.shared_data import needs_data
from tierwise.config.schema import GateConfig
from tierwise.lab.cascade_sim import simulate
from tierwise.lab.contextual import fit_contextual, held_out_data, run_contextual
from tierwise.lab.datasets import OutcomeSet, PromptOutcomes, load_set
from tierwise.lab.datasets.format import ModelOutcome
from tierwise.routing.gates.base import GateContext, GateError, RungAnswer
from tierwise.routing.gates.contextual import (
    ARTIFACT_KIND,
    ARTIFACT_VERSION,
    FEATURES,
    ContextualArtifactError,
    ContextualGate,
    features,
    load_artifact,
)
from tierwise.routing.learned.train import train_router
from tierwise.types import Completion, Usage

CHAIN = ("small", "mid", "big")


def f(name: str, x: list[float]) -> float:
    return x[FEATURES.index(name)]


def test_features_hand_cases() -> None:
    hist = [RungAnswer("small", "The answer is (B).", 0.9)]
    x = features(1, CHAIN, "B", 0.5, None, {"small": 0.2, "mid": 0.7, "big": 0.9}, hist)
    assert f("agree_prev", x) == 1.0 and f("agree_frac", x) == 1.0 and f("has_history", x) == 1.0
    assert f("prev_conf_agree", x) == pytest.approx(np.log(0.9 / 0.1))
    assert f("conf", x) == 0.5 and f("conf_logit", x) == pytest.approx(0.0)
    assert f("prior", x) == 0.7 and f("prior_gap", x) == pytest.approx(0.7 - 0.9)
    assert f("vote_share", x) == 1.0 and f("bias", x) == 1.0
    # disagreement, numbers compared as numbers, and an earlier rung without logprobs
    hist = [RungAnswer("small", "so 1,200 apples", None), RungAnswer("mid", "#### 1200", 0.8)]
    x = features(2, CHAIN, "It is 1300.", 0.99, 0.6, None, hist)
    assert f("agree_prev", x) == 0.0 and f("agree_frac", x) == 0.0 and f("prev_conf_agree", x) == 0.0
    assert f("vote_share", x) == 0.6
    assert f("prior", x) == 0.5 and f("prior_gap", x) == 0.0  # no prior: neutral values
    x = features(2, CHAIN, "1200", None, None, None, hist)
    assert f("agree_prev", x) == 1.0 and f("agree_frac", x) == 1.0 and f("conf_logit", x) == 0.0
    # rung 0 of a cascade: no history, and the last rung has no stronger prior to compare with
    x = features(0, CHAIN, "A", 1.0, None, {"small": 0.4}, [])
    assert f("has_history", x) == 0.0 and f("agree_prev", x) == 0.0 and f("conf_logit", x) > 9


def _artifact(path: Path, **over: object) -> Path:
    art = {"kind": ARTIFACT_KIND, "version": ARTIFACT_VERSION, "chain": ["small", "big"],
           "rungs": [{"model": "small", "features": ["conf_logit", "bias"], "weights": [1.0, 0.0],
                      "requires": ["logprobs"]}]}
    art.update(over)
    path.write_text(json.dumps(art))
    return path


def _ctx(chain: tuple[str, ...], logprobs: list[float] | None, text: str = "A") -> GateContext:
    body = {"choices": [{"message": {"content": text}, "finish_reason": "stop"}]}

    async def ask(model: str, b: dict) -> Completion:  # pragma: no cover - contextual gates never call models
        raise AssertionError

    return GateContext({}, Completion(body, Usage(), "stop", text, logprobs), chain[0], ask, 0, chain, [], None)


def test_artifact_refusal_and_gate_errors(tmp_path: Path) -> None:
    good = _artifact(tmp_path / "good.json")
    assert load_artifact(good, ["small", "big"])["chain"] == ["small", "big"]
    with pytest.raises(ContextualArtifactError, match="version 99"):
        load_artifact(_artifact(tmp_path / "v.json", version=99))
    with pytest.raises(ContextualArtifactError, match="is not 'tierwise-cascade-gate'"):
        load_artifact(_artifact(tmp_path / "k.json", kind="tierwise-gate"))
    with pytest.raises(ContextualArtifactError, match="trained for chain"):
        load_artifact(good, ["small", "mid", "big"])
    with pytest.raises(ContextualArtifactError, match="unknown features"):
        load_artifact(_artifact(tmp_path / "f.json", rungs=[{"features": ["nope"], "weights": [1.0]}]))
    gate = ContextualGate(GateConfig(kind="contextual", artifact=str(good), threshold=0.5))
    p = asyncio.run(gate.confidence(_ctx(("small", "big"), [np.log(0.8)])))
    assert p == pytest.approx(0.8)  # σ(logit 0.8)
    with pytest.raises(GateError, match="needs logprobs"):
        asyncio.run(gate.confidence(_ctx(("small", "big"), None)))
    with pytest.raises(GateError, match="trained for chain"):
        asyncio.run(gate.confidence(_ctx(("small", "other"), [0.0])))


def _synthetic(n: int, seed: int) -> OutcomeSet:
    """small: right w.p. σ(3·logit(conf)); mid: right w.p. 0.95 when it agrees with small, else 0.4; big always."""
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(n):
        conf = float(rng.uniform(0.02, 0.98))
        s_right = rng.random() < 1 / (1 + np.exp(-3 * np.log(conf / (1 - conf))))
        agree = rng.random() < 0.5
        m_right = rng.random() < (0.95 if agree else 0.4)
        s_ans = "A" if agree else "B"
        models = {
            "small": ModelOutcome(s_ans, float(s_right), 10, 1, 1e-6, confidence=conf),
            "mid": ModelOutcome("A", float(m_right), 10, 1, 1e-5, confidence=0.5),
            "big": ModelOutcome("A", 1.0, 10, 1, 1e-4, confidence=0.5),
        }
        prompts.append(PromptOutcomes(f"p{i}", "train", f"q{i}", models))
    return OutcomeSet("syn-contextual", list(CHAIN), prompts)


def test_training_recovers_known_relations(tmp_path: Path) -> None:
    train = _synthetic(4000, 3)
    model = fit_contextual(train, tmp_path)
    assert model.pool == list(CHAIN)
    art = load_artifact(next(tmp_path.glob("gate-*.json")))
    assert art["training"]["split"] == "train" and len(art["training"]["ids_sha1"]) == 40
    d = next(s.data for s in model.calibrator.searches if s.data.chain == CHAIN)
    conf = np.array([p.models["small"].confidence for p in train.prompts])
    truth0 = 1 / (1 + np.exp(-3 * np.log(conf / (1 - conf))))
    assert np.mean(np.abs(d.confidence[:, 0] - truth0)) < 0.05  # out-of-fold P(no loss) at rung 0
    agree = np.array([p.models["small"].answer == "A" for p in train.prompts])
    assert d.confidence[agree, 1].mean() == pytest.approx(0.95, abs=0.03)
    assert d.confidence[~agree, 1].mean() == pytest.approx(0.4, abs=0.03)


@needs_data
def test_simulator_equals_engine_with_priors_and_start_router(tmp_path: Path) -> None:
    s = load_set("zellinger/gsm8k/llama")
    train, test = s.split("train"), s.split("test")
    rng = np.random.default_rng(0)  # any embeddings will do: this checks replay fidelity, not routing skill
    e_tr = rng.normal(size=(len(train), 16)).astype(np.float32)
    e_te = rng.normal(size=(len(test), 16)).astype(np.float32)
    e_tr /= np.linalg.norm(e_tr, axis=1, keepdims=True)
    e_te /= np.linalg.norm(e_te, axis=1, keepdims=True)
    res = train_router(s, "knn", "minilm-onnx", s.priced_models(), embeddings=e_tr)
    model = fit_contextual(train, tmp_path, router=res.router, router_oof=res.oof, max_rungs=3)
    priors = model.router.predict_embeddings(e_te)
    cases = [model.calibrator.fit_start(model.calibrator.constraint_quality(t)) for t in (0.9, 1.0)]
    started, knob = next((s, k) for s, k in zip(model.calibrator.searches, model.calibrator.starts, strict=True)
                         if k > 0 and len(s.data.chain) == 3)
    thr = started.frontier[len(started.frontier) // 2]
    cal0 = cases[0][0]
    cases.append((type(cal0)(list(started.data.chain), "contextual", thr.tolist(), list(started.data.gate_params),
                             0.0, 0.0, True), knob))
    for cal, knob in cases:
        d = held_out_data(model, test, cal.chain, priors, knob)
        sim = simulate(d, cal.thresholds)
        out = run_contextual(model, test, cal, priors, knob)
        assert [r.served for r in out] == [cal.chain[i] for i in sim.served]
        np.testing.assert_allclose([r.cost for r in out], sim.cost, rtol=1e-12, atol=0)
        assert [r.quality for r in out] == sim.quality.tolist()
    assert any(k > 0 for _, k in cases)
