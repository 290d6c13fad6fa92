"""The dashboard's budget panel reads the governance state (what admission enforces), through a real gateway:

- memory and Redis state: spent today / this month equal the state's ``read_usage`` and the ledger's spend, a
  request in flight shows as reserved while it runs, the level and step follow the caps;
- the projection and the step a projected overrun takes come from this month's past days, read from Redis with
  ``read_usage(past_days=True)`` exactly as admission reads them (same numbers as the memory backend);
- Redis away: the panel says so and shows the ledger's settled spend, never an error page.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for
from tests.redis_env import REDIS_URL, redis_down
from tierwise.config.schema import BudgetCap, BudgetsConfig
from tierwise.dashboard.budgets import budget_entry
from tierwise.governance.budgets import project_month
from tierwise.ledger.spend import SpendQuery
from tierwise.state.backend import Cap, Settlement, StateBackend, Usage
from tierwise.state.memory_backend import MemoryStateBackend

MSG = [{"role": "user", "content": "hello"}]
# large: 1000 x 2.5 + 100 x 10 USD per 1M tokens = $0.0035 per request
PER_REQUEST = (1000 * 2.5 + 100 * 10) / 1e6
CAPS = ("budgets: {caps: {global: {daily_usd: 0.0083, monthly_usd: 1000}, 'model:large': {monthly_usd: 0.5}, "
        "'model:small': {daily_usd: 1}}}\ndashboard: {cache_ms: 0}\n")
T0 = 1_764_720_000.0  # 2025-12-03 00:00 UTC


def state_usage(gw: GatewayServer, scopes: list[str]) -> dict[str, Usage]:
    """What the gateway's own state backend says, read on its loop (as the dashboard does)."""
    assert gw.svc is not None
    state = gw.svc.governor.state
    return gw._run(state.read_usage(scopes, past_days=True))  # type: ignore[no-any-return]


def ledger_cost(gw: GatewayServer, by: str | None = None) -> Any:
    assert gw.svc is not None
    gw.flush_ledger()
    rep = gw.svc.ledger.store.spend(SpendQuery(by=(by or "principal",), since=time.time() - 86400))
    if by is None:
        return sum(g.cost_usd for g in rep.groups)
    return {g.group[0]: g.cost_usd for g in rep.groups}


def panel(gw: GatewayServer) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    r = httpx.get(gw.url + "/dashboard/api/summary", timeout=20)
    assert r.status_code == 200, r.text
    d = r.json()
    return {b["scope"]: b for b in d["budgets"]}, d["budget_state"]


def wait_until(check: Callable[[], Any], timeout_s: float = 8.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def slow_stream(gw: GatewayServer) -> None:
    """One streamed request read to its end (the upstream paces it: the request stays in flight meanwhile)."""
    with httpx.stream("POST", gw.base_url + "/chat/completions", timeout=20,
                      json={"model": "large", "messages": MSG, "stream": True}) as r:
        assert r.status_code == 200
        for _ in r.iter_bytes():
            pass


def send(gw: GatewayServer, n: int) -> None:
    """``n`` requests naming the model (budget steps never swap a model the caller named)."""
    for _ in range(n):
        r = httpx.post(gw.base_url + "/chat/completions", json={"model": "large", "messages": MSG}, timeout=20)
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_the_panel_is_the_governance_state(upstream: FakeUpstream, tmp_path: Path, prefix: str,
                                           backend: str) -> None:
    if backend == "redis" and (why := redis_down()) is not None:
        pytest.skip(why)
    state = "" if backend == "memory" else f"state: {{backend: redis, url: '{REDIS_URL}', prefix: {prefix}}}\n"
    gw = GatewayServer(config_for(upstream.base_url, tmp_path, extra=CAPS + state)).start()
    try:
        upstream.set(prompt_tokens=1000, completion_tokens=100)
        send(gw, 2)
        spent = ledger_cost(gw)
        assert spent == pytest.approx(2 * PER_REQUEST)
        # settlements reach Redis a moment after the answers
        assert wait_until(lambda: math.isclose(state_usage(gw, ["global"])["global"].daily_spent, spent))
        budgets, source = panel(gw)
        assert source["source"] == "state" and source["backend"] == backend and source["error"] is None
        assert set(budgets) == {"global", "model:large", "model:small"}
        assert budgets["model:small"]["spent_month_usd"] == 0 and budgets["model:small"]["level"] == 0
        live = state_usage(gw, list(budgets))
        g = budgets["global"]
        for key, value in (("spent_today_usd", live["global"].daily_spent),
                           ("spent_month_usd", live["global"].monthly_spent),
                           ("reserved_today_usd", 0.0), ("ledger_today_usd", spent), ("ledger_month_usd", spent)):
            assert g[key] == pytest.approx(value, abs=1e-12), key
        assert g["spent_today_usd"] == pytest.approx(spent, abs=1e-12)
        assert g["level"] == pytest.approx(spent / 0.0083)  # 0.84: the first step
        assert g["step"] == "cheaper" and "daily $0.0083" in g["why"]
        assert budgets["model:large"]["spent_month_usd"] == pytest.approx(ledger_cost(gw, "model")["large"])
        assert budgets["model:large"]["step"] is None and budgets["model:large"]["projected_month_usd"] is None

        # a request in flight: its reservation shows while it runs, then its real cost replaces it
        upstream.set(reply=" ".join(["word"] * 12), inter_chunk_s=0.3)  # a stream of ~3.6 s
        done = threading.Event()
        threading.Thread(target=lambda: (slow_stream(gw), done.set()), daemon=True).start()
        b = wait_until(lambda: (panel(gw)[0]["global"] if panel(gw)[0]["global"]["reserved_today_usd"] > 0
                                else None))
        assert b is not None and not done.is_set()
        assert b["reserved_today_usd"] == pytest.approx(state_usage(gw, ["global"])["global"].daily_reserved)
        assert b["level"] == pytest.approx((b["spent_today_usd"] + b["reserved_today_usd"]) / 0.0083)
        assert done.wait(10)
        total = ledger_cost(gw)
        g = wait_until(lambda: (panel(gw)[0]["global"] if math.isclose(
            panel(gw)[0]["global"]["spent_today_usd"], total, abs_tol=1e-12) else None))
        assert g is not None and g["reserved_today_usd"] == pytest.approx(0, abs=1e-12)
        assert g["level"] >= 1 and g["step"] == "refused"  # 3 x $0.0035 > $0.0083: the next one is refused
        r = httpx.post(gw.base_url + "/chat/completions", json={"model": "large", "messages": MSG}, timeout=20)
        assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
    finally:
        gw.stop()


def test_redis_away_shows_the_ledger_and_says_so(upstream: FakeUpstream, tmp_path: Path) -> None:
    state = "state: {backend: redis, url: 'redis://127.0.0.1:9/0', on_unavailable: open, timeout_s: 0.2}\n"
    gw = GatewayServer(config_for(upstream.base_url, tmp_path, extra=CAPS + state)).start()
    try:
        upstream.set(prompt_tokens=1000, completion_tokens=100)
        send(gw, 1)
        budgets, source = panel(gw)
        assert source["source"] == "ledger" and "cannot be read" in source["error"]
        assert budgets["global"]["spent_today_usd"] == pytest.approx(ledger_cost(gw))
        assert budgets["global"]["reserved_today_usd"] == 0
    finally:
        gw.stop()


# -- the projection, from the state's past days ----------------------------------------------------------------------

async def _month_of_spend(b: StateBackend, clock: list[float], flush: Callable[[], Any]) -> None:
    """$2 on Dec 1st, $4 on Dec 2nd, $1 so far on Dec 3rd, against one global cap."""
    caps = [Cap("global", None, 100.0)]
    for day, cost in ((0, 2.0), (1, 4.0), (2, 1.0)):
        clock[0] = T0 - 2 * 86400 + day * 86400 + 3600
        await b.admit(f"r{day}", caps, [], 0.5, 10, {}, 60)
        b.settle(Settlement(f"r{day}", cost, 10))
        await flush()


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_read_usage_past_days_feed_the_projection(prefix: str, backend: str) -> None:
    clock = [T0]
    if backend == "memory":
        b: StateBackend = MemoryStateBackend(clock=lambda: clock[0])

        async def flush() -> None:
            return None
    else:
        if (why := redis_down()) is not None:
            pytest.skip(why)
        from tierwise.state.redis_backend import RedisStateBackend

        rb = RedisStateBackend(REDIS_URL, prefix=prefix, clock=lambda: clock[0])
        b = rb

        async def flush() -> None:
            assert await rb.flush()
    try:
        await _month_of_spend(b, clock, flush)
        u = (await b.read_usage(["global", "customer:none"], past_days=True))
        g = u["global"]
        assert (g.daily_spent, g.monthly_spent, g.past_days) == (1.0, 7.0, (2.0, 4.0))
        assert u["customer:none"].past_days == (0.0, 0.0)
        if backend == "redis":  # the metrics' read stays two round trips, without past days
            assert (await b.read_usage(["global"]))["global"].past_days == ()
        cfg = BudgetsConfig(projection_min_days=2, caps={"global": BudgetCap(monthly_usd=50.0)})
        row = budget_entry("global", BudgetCap(monthly_usd=50.0), g, cfg, clock[0])
        # $7 + the median day ($3) x the 29 days left (Dec 3rd, 01:00 UTC) = $93.9
        assert row["projected_month_usd"] == pytest.approx(project_month(7.0, (2.0, 4.0), clock[0], 2))
        assert row["projected_month_usd"] == pytest.approx(7 + 3 * (29 - 1 / 24)) and row["over_projection"]
        # 14 % of the cap spent, but the month is projected over it: admission's first step, early
        assert row["level"] == pytest.approx(0.14) and row["step"] == "cheaper" and "projected" in row["why"]
    finally:
        await b.aclose()


def test_steps_of_a_model_cap_and_at_the_cap() -> None:
    cfg = BudgetsConfig()
    spent = Usage(daily_spent=1.0, monthly_spent=1.0)
    assert budget_entry("model:large", BudgetCap(daily_usd=1.0), spent, cfg, T0)["step"] == "excluded"
    assert budget_entry("model:large", BudgetCap(daily_usd=2.0), spent, cfg, T0)["step"] is None  # no step for models
    assert budget_entry("global", BudgetCap(daily_usd=1.0), spent, cfg, T0)["step"] == "refused"
    near = Usage(daily_spent=0.9, daily_reserved=0.06)
    row = budget_entry("customer:acme", BudgetCap(daily_usd=1.0), near, cfg, T0)
    assert row["level"] == pytest.approx(0.96) and row["step"] == "fallback_only"
