"""Budget gauges read at scrape time from the state backend: the memory backend and real Redis report what the
requests spent (= the ledger), a reservation in flight shows as reserved, and Redis being away costs the scrape its
budget gauges (counted), never the scrape itself."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for
from tests.redis_env import REDIS_URL
from tests.telemetry_util import scrape, total
from tierwise.state.backend import Cap, Settlement
from tierwise.state.memory_backend import MemoryStateBackend

MSG = [{"role": "user", "content": "hi"}]
T0 = 1_764_720_000.0  # 2025-12-03 00:00 UTC


async def _exercise(backend: object) -> None:
    caps = [Cap("global", daily_usd=10, monthly_usd=100), Cap("customer:acme", daily_usd=5)]
    await backend.admit("r1", caps, [], 0.5, 10, {}, 60)  # type: ignore[attr-defined]
    backend.settle(Settlement("r1", 0.25, 10))  # type: ignore[attr-defined]
    await backend.admit("r2", caps, [], 0.125, 10, {}, 60)  # type: ignore[attr-defined]  (in flight)
    if hasattr(backend, "flush"):
        await backend.flush()
    got = await backend.read_usage(["global", "customer:acme", "customer:other"])  # type: ignore[attr-defined]
    g = got["global"]
    assert (g.daily_spent, g.daily_reserved, g.monthly_spent, g.monthly_reserved) == (0.25, 0.125, 0.25, 0.125)
    assert got["customer:acme"].daily_spent == 0.25 and got["customer:other"].daily_spent == 0


async def test_read_usage_memory() -> None:
    await _exercise(MemoryStateBackend(clock=lambda: T0 + 3600))


async def test_read_usage_redis(prefix: str) -> None:
    from tierwise.state.redis_backend import RedisStateBackend

    backend = RedisStateBackend(REDIS_URL, prefix=prefix, clock=lambda: T0 + 3600)
    try:
        await _exercise(backend)
    finally:
        await backend.aclose()


def _gateway(upstream: FakeUpstream, tmp: Path, state: str) -> GatewayServer:
    extra = f"""state: {state}
budgets: {{caps: {{global: {{daily_usd: 100}}, "model:large": {{monthly_usd: 30}}}}}}
"""
    return GatewayServer(config_for(upstream.base_url, tmp, extra=extra)).start()


def test_budget_gauges_from_redis_equal_the_ledger(upstream: FakeUpstream, tmp_path: Path, prefix: str) -> None:
    gw = _gateway(upstream, tmp_path, f"{{backend: redis, url: '{REDIS_URL}', prefix: {prefix}}}")
    try:
        for _ in range(4):
            assert httpx.post(gw.base_url + "/chat/completions", json={"messages": MSG}).status_code == 200
        spent = sum(r["cost_usd"] for r in gw.rows())
        assert spent > 0
        deadline = time.time() + 5
        while True:  # settlements reach Redis in the background, a moment after the answers
            m = scrape(gw.url + "/metrics")
            if total(m, "tierwise_budget_reserved_usd", scope="global") == 0 or time.time() > deadline:
                break
            time.sleep(0.05)
        assert total(m, "tierwise_budget_spent_usd", scope="global", period="day") == pytest.approx(spent, abs=1e-9)
        assert total(m, "tierwise_budget_reserved_usd", scope="global") == 0
        assert total(m, "tierwise_budget_spent_usd", scope="model:large", period="month") == pytest.approx(spent,
                                                                                                        abs=1e-9)
        assert total(m, "tierwise_budget_limit_usd", scope="model:large", period="month") == 30
        assert not any(lb["scope"] == "model:large" and lb["period"] == "day" for lb, _ in
                       m["tierwise_budget_limit_usd"])  # no daily cap on that scope: no daily series
        assert total(m, "tierwise_budget_read_errors_total") == 0
    finally:
        gw.stop()


def test_redis_away_drops_budget_gauges_not_the_scrape(upstream: FakeUpstream, tmp_path: Path) -> None:
    gw = _gateway(upstream, tmp_path, "{backend: redis, url: 'redis://127.0.0.1:9/0', on_unavailable: open, "
                                      "timeout_s: 0.2}")
    try:
        assert httpx.post(gw.base_url + "/chat/completions", json={"messages": MSG}).status_code == 200
        m = scrape(gw.url + "/metrics")
        assert "tierwise_budget_spent_usd" not in m
        assert total(m, "tierwise_budget_read_errors_total") == 1
        assert total(m, "tierwise_requests_total", status="ok") == 1
    finally:
        gw.stop()
