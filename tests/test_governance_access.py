"""A principal's allow-lists shape every plan: 403 for what it may not ask for, and its models filtered out of tiers
and cascades. Driven through the service with a real fake upstream (the gateway's keys feed the same Principal)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import config_for
from tierwise.errors import APIError
from tierwise.governance import Principal
from tierwise.routing.engine import RouteRequest
from tierwise.service import Tierwise

CASCADE = """
  casc:
    policy: cascade
    cascade:
      rungs:
        - {model: small, gate: {kind: logprob, threshold: 0.99}}
        - {model: large}
"""
MSG = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def svc(tmp_path: Path):
    with FakeUpstream() as up:
        s = Tierwise(config_for(up.base_url, tmp_path, extra=CASCADE))
        try:
            yield s, up
        finally:
            await s.aclose()


async def test_a_tier_outside_the_allow_list_is_403(svc) -> None:
    s, _ = svc
    p = Principal("team-a", allowed_tiers=frozenset({"label"}))
    with pytest.raises(APIError) as e:
        await s.begin(dict(MSG), RouteRequest(task_header="chat"), p)
    assert e.value.status == 403 and e.value.code == "tier_not_allowed" and "label" in e.value.message
    call = await s.begin(dict(MSG), RouteRequest(task_header="label"), p)
    assert call.decision.candidates[0] == "small"


async def test_a_model_outside_the_allow_list_is_403_when_named_and_left_out_of_tiers(svc) -> None:
    s, _ = svc
    p = Principal("team-b", allowed_models=frozenset({"small", "fb"}))
    with pytest.raises(APIError) as e:
        await s.begin({**MSG, "model": "large"}, RouteRequest(), p)
    assert e.value.status == 403 and e.value.code == "model_not_allowed"
    call = await s.begin(dict(MSG), RouteRequest(task_header="chat"), p)  # chat = [large, small] + fb
    assert call.decision.candidates == ["small", "fb"]
    assert "large left out: not allowed for this API key" in call.record.notes
    nothing = Principal("team-c", allowed_models=frozenset({"thinker"}))
    with pytest.raises(APIError) as e:
        await s.begin(dict(MSG), RouteRequest(task_header="label"), nothing)
    assert e.value.status == 403 and "none of the models of tier 'label'" in e.value.message


async def test_a_cascade_skips_rungs_the_caller_may_not_use(svc) -> None:
    s, up = svc
    p = Principal("team-d", allowed_models=frozenset({"large", "fb"}))
    call = await s.begin(dict(MSG), RouteRequest(task_header="casc"), p)
    result = await s.complete(call)
    assert result.record.model == "large" and [a.model for a in result.record.attempts] == ["large"]
    assert "rung 0 (small) left out: not allowed for this API key" in result.record.notes
    assert up.calls == 1  # small was never called


async def test_value_tiers_reserve_flagship_models_for_premium_callers(tmp_path: Path) -> None:
    with FakeUpstream() as up:
        cfg = config_for(up.base_url, tmp_path)
        cfg.models["large"].value_tiers = ["premium"]
        s = Tierwise(cfg)
        try:
            premium = await s.begin(dict(MSG), RouteRequest(task_header="chat"), Principal("p", value_tier="premium"))
            assert premium.decision.candidates[0] == "large"
            free = await s.begin(dict(MSG), RouteRequest(task_header="chat"), Principal("f", value_tier="free"))
            assert free.decision.candidates == ["small", "fb"]
            assert "large left out: reserved for value tiers premium" in free.record.notes
            with pytest.raises(APIError) as e:
                await s.begin({**MSG, "model": "large"}, RouteRequest(), Principal("f", value_tier="free"))
            assert e.value.status == 403 and "reserved for value tiers premium" in e.value.message
        finally:
            await s.aclose()
