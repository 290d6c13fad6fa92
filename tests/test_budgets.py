"""Budgets with reservations and graded steps, rate limits: through real HTTP on a real gateway and fake upstream.

The caller is a principal with budgets behind a real virtual key (SQLite governance store), so what is tested is
the request path a real key takes.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.governance_env import GovEnv, gateway_config, make_key
from tests.harness import GatewayServer, config_for
from tierwise.config.schema import BudgetsConfig
from tierwise.governance import Principal
from tierwise.governance.budgets import project_month
from tierwise.routing.engine import RouteRequest
from tierwise.service import Tierwise
from tierwise.state.backend import Cap, Settlement
from tierwise.state.memory_backend import MemoryStateBackend, seconds_to_next_day, seconds_to_next_month

MSG = [{"role": "user", "content": "hello there"}]


def gateway(up: FakeUpstream, tmp: Path, budgets: dict | None,
            principals: dict[str, dict]) -> tuple[GatewayServer, dict[str, dict[str, str]]]:
    """A gateway with virtual keys (SQLite governance store) for these principals; returns it and, per principal,
    the Authorization header of a key of theirs."""
    env = GovEnv("sqlite", tmp)
    cfg = gateway_config(up.base_url, tmp, env)
    if budgets is not None:
        cfg.budgets = BudgetsConfig.model_validate(budgets)
    store = env.store()
    try:
        auth = {name: {"Authorization": f"Bearer {make_key(store, name, **fields)[1]}"}
                for name, fields in principals.items()}
    finally:
        store.close()
    return GatewayServer(cfg).start(), auth


def test_graded_steps_then_429_naming_the_budget(tmp_path: Path) -> None:
    with FakeUpstream() as up:
        up.set(prompt_tokens=1000, completion_tokens=1000)
        # chat = [large, small] + fallback fb: $0.0125, $0.0005 and $0.00025 a request at these token counts
        gw, auth = gateway(up, tmp_path, None, {"acme": {"customer": "acme", "daily_budget_usd": 0.10}})
        try:
            seen = []
            for _ in range(80):
                r = httpx.post(gw.base_url + "/chat/completions", json={"messages": MSG, "max_tokens": 1000},
                               headers={**auth["acme"], "X-Task": "chat"}, timeout=10)
                seen.append((r.status_code, r.headers.get("x-tierwise-model"), r.headers.get("x-tierwise-budget")))
                if r.status_code == 429:
                    break
            rows = gw.rows()
        finally:
            gw.stop()
    served = [m for s, m, _ in seen if s == 200]
    # the tier's first choice while there is room, then the cheaper half from 80 %, then the fallback from 95 %
    first = {m: served.index(m) for m in ("large", "small", "fb")}
    assert first["large"] == 0 < first["small"] < first["fb"], served
    assert served == sorted(served, key=["large", "small", "fb"].index)  # never back up while the day lasts
    steps = [b for s, m, b in seen if s == 200 and m != "large"]
    assert steps[0] == f"principal:acme {steps[0].split()[1]} cheaper" and steps[-1].endswith("fallback_only")
    assert seen[-1][0] == 429
    err = r.json()["error"]
    assert err["code"] == "budget_exceeded" and "principal:acme daily $0.1" in err["message"]
    assert 0 < int(r.headers["Retry-After"]) <= 86400
    degraded = [row for row in rows if any("cheaper models only" in n for n in row["notes"])]
    assert degraded and all(row["model"] != "large" for row in degraded)
    booked = sum(row["cost_usd"] for row in rows if row["status"] == "ok")
    assert 0.095 <= booked <= 0.10 + 0.00025 + 1e-9  # the last admitted request is the only one past the cap


def test_overspend_is_bounded_by_reservations_in_flight_under_concurrency(tmp_path: Path) -> None:
    """32 concurrent clients against a $0.02 cap: spend ends within cap + what was in flight when it was reached."""
    with FakeUpstream() as up:
        up.set(prompt_tokens=500, completion_tokens=400, latency_s=0.05)
        gw, auth = gateway(up, tmp_path, {"steps": []}, {"p": {"department": "search", "daily_budget_usd": 0.02}})
        codes: list[int] = []
        lock = threading.Lock()

        def client() -> None:
            with httpx.Client(timeout=10) as c:
                for _ in range(10):
                    r = c.post(gw.base_url + "/chat/completions", json={"messages": MSG, "max_tokens": 400},
                               headers={**auth["p"], "X-Task": "label"})
                    with lock:
                        codes.append(r.status_code)

        try:
            threads = [threading.Thread(target=client) for _ in range(32)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            rows = gw.rows()
        finally:
            gw.stop()
    per_request = 500 * 0.1 / 1e6 + 400 * 0.4 / 1e6  # label = small: $0.00021, reserved exactly (max_tokens)
    spent = sum(r["cost_usd"] for r in rows if r["status"] == "ok")
    assert set(codes) == {200, 429} and codes.count(200) == sum(1 for r in rows if r["status"] == "ok")
    # admitted while settled + reserved < cap: at most the 32 reservations in flight can land past the cap
    assert 0.02 - per_request <= spent <= 0.02 + 32 * per_request + 1e-9, (spent, codes.count(200))


def test_rate_limit_429_with_retry_after(tmp_path: Path) -> None:
    with FakeUpstream() as up:
        gw, auth = gateway(up, tmp_path, None, {"k": {"rpm": 3}})
        try:
            codes = [httpx.post(gw.base_url + "/chat/completions", json={"messages": MSG},
                                headers=auth["k"], timeout=10) for _ in range(4)]
        finally:
            gw.stop()
    assert [r.status_code for r in codes] == [200, 200, 200, 429]
    err = codes[-1].json()["error"]
    assert err["code"] == "rate_limit_exceeded" and ": 3 requests per minute" in err["message"]
    assert 1 <= int(codes[-1].headers["Retry-After"]) <= 60


async def test_a_refused_request_reserves_nothing_and_settle_is_idempotent() -> None:
    clock = [1_764_720_000.0]  # 2025-12-03 00:00 UTC
    b = MemoryStateBackend(clock=lambda: clock[0])
    cap = [Cap("global", daily_usd=1.0)]
    a = await b.admit("r1", cap, [], 0.6, 10, {}, 60)
    assert a.refused is None and a.usage["global"].daily_reserved == 0.0
    a2 = await b.admit("r2", cap, [], 0.6, 10, {}, 60)  # 0.6 reserved < 1.0: admitted (bound = in flight)
    assert a2.refused is None and a2.usage["global"].daily_reserved == 0.6
    a3 = await b.admit("r3", cap, [], 0.6, 10, {}, 60)  # 1.2 in flight >= cap: refused, nothing reserved
    assert a3.refused is not None and a3.usage["global"].daily_reserved == pytest.approx(1.2)
    b.settle(Settlement("r1", 0.1, 5))
    b.settle(Settlement("r1", 0.1, 5))  # a retried settle charges nothing twice
    a4 = await b.admit("r4", cap, [], 0.0, 1, {}, 60)
    assert a4.usage["global"].daily_spent == pytest.approx(0.1) and a4.usage["global"].daily_reserved == 0.6
    clock[0] += 61  # r2's and r4's reservations expire (their process died): released, never charged
    a5 = await b.admit("r5", cap, [], 0.0, 1, {}, 60)
    assert a5.usage["global"].daily_reserved == 0.0 and a5.usage["global"].daily_spent == pytest.approx(0.1)
    clock[0] += 86400  # the next UTC day starts afresh; the month keeps counting
    a6 = await b.admit("r6", [Cap("global", 1.0, 5.0)], [], 0.0, 1, {}, 60)
    assert a6.usage["global"].daily_spent == 0.0 and a6.usage["global"].monthly_spent == pytest.approx(0.1)
    assert a6.usage["global"].past_days == (pytest.approx(0.1),)


def test_reset_times_and_projection() -> None:
    t = 1_764_763_200.0  # 2025-12-03 12:00 UTC
    assert seconds_to_next_day(t) == 12 * 3600
    assert seconds_to_next_month(t) == (28 * 24 + 12) * 3600
    assert project_month(10.0, [4.0, 5.0], t, 3) is None  # two past days: too little to say
    # 3 past days, median 5: 10 + 5 x (31 - 3 + 1 - 0.5) = 152.5
    assert project_month(10.0, [4.0, 5.0, 9.0], t, 3) == pytest.approx(152.5)


async def test_projection_applies_the_first_step_early(tmp_path: Path) -> None:
    with FakeUpstream() as up:
        up.set(prompt_tokens=10, completion_tokens=100_000)  # large: 100k output tokens at $10/M = $1 a request
        day = [1_764_547_200.0]  # 2025-12-01 00:00 UTC
        state = MemoryStateBackend(clock=lambda: day[0])
        svc = Tierwise(config_for(up.base_url, tmp_path), state=state)
        try:
            p = Principal("p", monthly_budget_usd=10.0)
            for _ in range(3):  # three days at $1 a day: the month projects to ~$29, over its $10
                call = await svc.begin({"messages": MSG}, RouteRequest(task_header="chat"), p)
                assert call.budget is None  # too little history yet, and far below the cap
                result = await svc.complete(call)
                assert result.record.model == "large" and result.record.cost.total_usd == pytest.approx(1.0, rel=1e-3)
                day[0] += 86400
            call = await svc.begin({"messages": MSG}, RouteRequest(task_header="chat"), p)
            assert call.budget is not None and call.budget.endswith("cheaper")  # at 30 % of the cap, but projected
            assert call.decision.candidates == ["small", "fb"]
            assert any("projected" in n for n in call.record.notes)
            await svc.complete(call)
        finally:
            await svc.aclose()


def test_caps_are_memoised_per_principal_object_and_never_shared_across_principals() -> None:
    """caps_for remembers a principal's caps (they were rebuilt per request); a principal object with other
    budgets — a refresh replaces the object — gets its own, and a caller mutating the list changes nothing."""
    from tierwise.governance.budgets import caps_for

    cfg = BudgetsConfig.model_validate({"caps": {"global": {"daily_usd": 100}, "customer:*": {"daily_usd": 5}}})
    p1 = Principal("acme", key_id="k1", customer="acme-co", daily_budget_usd=10.0)
    first = caps_for(p1, cfg, ("small",))
    assert [c.scope for c in first] == ["principal:acme", "global", "customer:acme-co"]
    first.clear()
    assert caps_for(p1, cfg, ("small",)) == caps_for(Principal("acme", key_id="k1", customer="acme-co",
                                                               daily_budget_usd=10.0), cfg, ("small",))
    p2 = Principal("acme", key_id="k1", customer="acme-co", daily_budget_usd=3.0)  # the same key after a refresh
    assert caps_for(p2, cfg, ("small",))[0].daily_usd == 3.0
    assert caps_for(p1, cfg, ("small",))[0].daily_usd == 10.0
