"""Routing engine: tier precedence, policies, pins and cooldown ordering (pure, no I/O)."""

from __future__ import annotations

import pytest

from tierwise.config import load_config_text
from tierwise.routing.engine import RouteRequest, RoutingEngine, RoutingError
from tierwise.state import MemoryHealth, MemorySessionPins

CFG = """
providers:
  up: {format: openai, base_url: "http://127.0.0.1:9/v1"}
models:
  cheap: {provider: up, price: {input: 0.1, output: 0.3}}
  mid: {provider: up, price: {input: 1, output: 2}}
  big: {provider: up, price: {input: 3, output: 15}}
  fb: {provider: up, price: {input: 0.05, output: 0.1}}
tiers:
  label: {models: [big, cheap], policy: cheapest}
  chat: {models: [mid, big], policy: priority}
  fast: {models: [big, mid, cheap], policy: fastest_ttft, fallback: cheap}
default_tier: chat
fallback_model: fb
"""
COST = {"cheap": 0.1, "mid": 1.0, "big": 3.0, "fb": 0.05}
BODY = {"messages": [{"role": "user", "content": "hi"}]}


def engine() -> RoutingEngine:
    cfg = load_config_text(CFG, env={})
    return RoutingEngine(cfg, MemorySessionPins(60), MemoryHealth(2, 30))


def decide(e: RoutingEngine, now: float = 0.0, **kw: object):
    return e.decide(RouteRequest(**kw), BODY, now, COST.__getitem__)  # type: ignore[arg-type]


def test_precedence_endpoint_header_model_default() -> None:
    e = engine()
    assert decide(e, requested_model="auto").tier == "chat"
    assert decide(e, requested_model=None).tier_source == "auto-default"
    assert decide(e, requested_model="label").tier_source == "model"
    d = decide(e, requested_model="label", task_header="fast")
    assert (d.tier, d.tier_source) == ("fast", "header")
    d = decide(e, requested_model="label", task_header="fast", endpoint_tier="chat")
    assert (d.tier, d.tier_source) == ("chat", "endpoint")


def test_concrete_model_is_direct_without_fallback() -> None:
    d = decide(engine(), requested_model="big")
    assert d.direct and d.candidates == ["big"] and d.tier is None


@pytest.mark.parametrize(
    "kw,param",
    [({"requested_model": "gpt-nope"}, "model"), ({"task_header": "nope"}, "X-Task"), ({"endpoint_tier": "x"}, "tier")],
)
def test_unknown_names_raise(kw: dict, param: str) -> None:
    with pytest.raises(RoutingError) as ei:
        decide(engine(), **kw)
    assert ei.value.param == param


def test_policies_order_and_fallback_last() -> None:
    e = engine()
    assert decide(e, requested_model="label").candidates == ["cheap", "big", "fb"]
    assert decide(e, requested_model="chat").candidates == ["mid", "big", "fb"]
    e.health.record_success("big", 50.0, 0)
    e.health.record_success("mid", 10.0, 0)
    # cheap is unmeasured: explored first; then by observed TTFT; tier fallback 'cheap' already in the list
    assert decide(e, requested_model="fast").candidates == ["cheap", "mid", "big"]


def test_session_pin_moves_model_first_and_expires() -> None:
    e = engine()
    e.pins.set("s1", "big", now=0.0)
    d = decide(e, now=1.0, requested_model="chat", session_id="s1")
    assert d.pinned == "big" and d.candidates[0] == "big"
    d = decide(e, now=61.0, requested_model="chat", session_id="s1")
    assert d.pinned is None and d.candidates[0] == "mid"


def test_pin_outside_tier_is_noted_not_used() -> None:
    e = engine()
    e.pins.set("s1", "cheap", now=0.0)
    d = decide(e, requested_model="chat", session_id="s1")
    assert d.pinned is None and "not in tier" in d.notes[0]


def test_cooling_models_tried_last() -> None:
    e = engine()
    assert e.health.record_failure("mid", 0.0) is False
    assert e.health.record_failure("mid", 0.0) is True
    d = decide(e, now=1.0, requested_model="chat")
    assert d.candidates == ["big", "fb", "mid"]
    assert decide(e, now=31.0, requested_model="chat").candidates[0] == "mid"
