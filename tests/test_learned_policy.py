"""The 'learned' tier policy and the cascade start router run inside the engine, live and in replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.shared_data import needs_data
from tierwise.config import ConfigError, load_config_text
from tierwise.lab.datasets import load_set
from tierwise.lab.evaluate import run_tier
from tierwise.routing.learned.artifact import load_router, save_router
from tierwise.routing.learned.train import train_router

pytestmark = needs_data

MODELS = ["gpt-3.5-turbo", "gpt-4"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    oset = load_set("mot/date")
    res = train_router(oset, kind="knn", embedder="minilm-static", models=MODELS)
    return save_router(res.router, tmp_path_factory.mktemp("r") / "date-knn.npz")


def test_learned_policy_in_engine_matches_router_choice(artifact: Path) -> None:
    test = load_set("mot/date").split("test")
    router = load_router(artifact, MODELS)
    pred = router.predict([p.prompt for p in test.prompts])
    for knob in (0.3, 0.8):
        expected = [MODELS[i] for i in router.choose(pred, "threshold", knob)]
        tier = {"policy": "learned", "models": MODELS,
                "learned": {"artifact": str(artifact), "rule": "threshold", "knob": knob}}
        served = [r.served for r in run_tier(test, tier)]
        assert served == expected
    assert len(set(expected)) == 2  # the router really splits traffic at this knob


def test_start_router_skips_cheap_rung(artifact: Path) -> None:
    test = load_set("mot/date").split("test")
    tier = {"policy": "cascade", "cascade": {
        "start": {"artifact": str(artifact), "rule": "threshold", "knob": 0.8},
        "rungs": [{"model": MODELS[0], "gate": {"kind": "vote", "threshold": 0.6, "samples": 14, "extract": "text"}},
                  {"model": MODELS[1]}]}}
    results = run_tier(test, tier)
    router = load_router(artifact, MODELS)
    starts = router.choose(router.predict([p.prompt for p in test.prompts]), "threshold", 0.8)
    for r, start in zip(results, starts, strict=True):
        if start == 1:
            assert r.models_called == [MODELS[1]]
        else:
            assert r.models_called[0] == MODELS[0]
    assert 0 < int(np.sum(starts)) < len(starts)


def test_artifact_for_other_models_is_refused(artifact: Path) -> None:
    text = f"""
providers: {{r: {{format: openai, base_url: "http://127.0.0.1:9/v1"}}}}
models:
  a: {{provider: r, price: {{input: 1, output: 1}}}}
  b: {{provider: r, price: {{input: 2, output: 2}}}}
tiers:
  smart: {{policy: learned, models: [a, b], learned: {{artifact: "{artifact}"}}}}
  broken: {{policy: learned, models: [a], learned: {{artifact: "/nonexistent/r.npz"}}}}
default_tier: smart
fallback_model: a
"""
    with pytest.raises(ConfigError) as ei:
        load_config_text(text, env={})
    msg = str(ei.value)
    assert "tiers.smart.learned.artifact" in msg and "gpt-3.5-turbo" in msg
    assert "tiers.broken.learned.artifact" in msg and "not found" in msg


def test_margin_routing_maximises_revenue_times_quality_minus_cost(artifact: Path) -> None:
    """A caller with revenue per request gets argmax R·q − c among models reaching the floor (λ = 1/R)."""
    from tierwise.routing.engine import RouteRequest, RoutingEngine
    from tierwise.state import MemoryHealth, MemorySessionPins

    cfg = load_config_text(f"""
providers: {{p: {{format: openai, base_url: "http://127.0.0.1:9/v1", api_key: k}}}}
models:
  gpt-3.5-turbo: {{provider: p, price: {{input: 0.5, output: 1.5}}}}
  gpt-4: {{provider: p, price: {{input: 30, output: 60}}}}
tiers:
  smart: {{policy: learned, models: {MODELS}, learned: {{artifact: "{artifact}", knob: 0.5, quality_floor: 0.6}}}}
default_tier: smart
fallback_model: gpt-3.5-turbo
""", env={})
    router = load_router(artifact, MODELS)
    engine = RoutingEngine(cfg, MemorySessionPins(60), MemoryHealth(3, 30), None, {"smart": router})
    test = load_set("mot/date").split("test")
    pred = router.predict([p.prompt for p in test.prompts])
    for revenue in (0.001, 0.05, 10.0):
        served = []
        for q in pred:
            req = RouteRequest(task_header="smart", predicted=q, revenue_usd=revenue)
            served.append(engine.decide(req, {}, 0.0, lambda m: 0.0).candidates[0])
        margin = revenue * pred - router.mean_cost[None, :]
        ok = pred >= 0.6
        expect = [MODELS[int(np.argmax(np.where(o, m, -np.inf)))] if o.any() else MODELS[int(np.argmax(q))]
                  for m, o, q in zip(margin, ok, pred, strict=True)]
        assert served == expect
    # low revenue keeps traffic on the cheap model, high revenue buys quality where it is predicted
    assert served.count("gpt-4") > 0
