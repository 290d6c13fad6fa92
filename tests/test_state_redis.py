"""The Redis state backend against a real Redis: the memory backend's behaviours (the same scenarios run against
both), exactness across replicas sharing one Redis, a replica SIGKILLed mid-traffic, Redis going away and coming
back (fail closed and fail open), NOSCRIPT after a restart, and round trips per request.

Every test uses its own key prefix (``twtest-<random>``; its keys are deleted afterwards), so runs never collide
on the shared server, ``TIERWISE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). Outages are made on a
dedicated ``redis-server`` each such test starts on a free port, never on the shared one. When Redis or the
``redis`` client is missing the tests skip with the reason; CI sets ``TIERWISE_NO_SKIPS=1``, which turns a skip
into a failed run (``conftest.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import procs
from tests.fakes.upstream import FakeUpstream
from tests.governance_env import GovEnv, gateway_config, make_key
from tests.harness import GatewayServer
from tests.procs import free_port
from tests.redis_env import REDIS_URL, redis_down
from tierwise.config.schema import BudgetsConfig
from tierwise.errors import APIError
from tierwise.state.backend import Cap, RateLimit, Settlement, StateBackend
from tierwise.state.memory_backend import MemoryStateBackend

redis = pytest.importorskip(
    "redis", reason="the redis client is not installed: pip install -e '.[test]' (the 'redis' extra) for these tests")

from tierwise.state.redis_backend import RedisStateBackend, redacted  # noqa: E402

REDIS_SERVER = shutil.which("redis-server")
MSG = [{"role": "user", "content": "hello there"}]
T0 = 1_764_720_000.0  # 2025-12-03 00:00 UTC


_DOWN = redis_down()
pytestmark = pytest.mark.skipif(_DOWN is not None, reason=_DOWN or "")
needs_server_binary = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (apt-get "
                                         "install redis-server): the outage tests start their own")


def keys_of(prefix: str, url: str = REDIS_URL) -> dict[str, str]:
    """Every key of ``prefix`` with its value (strings only), decoded."""
    c = redis.Redis.from_url(url, decode_responses=True)
    try:
        out = {}
        for k in c.scan_iter(match="{" + prefix + "}:*", count=1000):
            if c.type(k) == "string":
                out[k] = c.get(k)
            else:
                out[k] = f"<{c.type(k)}>"
        return out
    finally:
        c.close()


def key(prefix: str, rest: str) -> str:
    return "{" + prefix + "}:" + rest


def redis_day(url: str = REDIS_URL) -> str:
    c = redis.Redis.from_url(url)
    try:
        return time.strftime("%Y-%m-%d", time.gmtime(c.time()[0]))
    finally:
        c.close()


# -- the same scenarios against both backends ---------------------------------------------------------------------


class Clocked:
    """A backend under test with a clock the test moves (the Redis backend takes it in place of Redis TIME)."""

    def __init__(self, kind: str, prefix: str) -> None:
        self.now = T0
        clock: Callable[[], float] = lambda: self.now  # noqa: E731
        self.b: StateBackend = MemoryStateBackend(clock=clock) if kind == "memory" else \
            RedisStateBackend(REDIS_URL, prefix=prefix, clock=clock)

    async def admit(self, rid: str, caps: list[Cap], limits: list[RateLimit] | None = None, reserve: float = 0.0,
                    tokens: int = 1, block_at: dict[str, float] | None = None, ttl: float = 60, **kw: Any):  # type: ignore[no-untyped-def]
        return await self.b.admit(rid, caps, limits or [], reserve, tokens, block_at or {}, ttl, **kw)

    async def settle(self, s: Settlement) -> None:
        self.b.settle(s)
        if isinstance(self.b, RedisStateBackend):  # settle is asynchronous there: wait until it is applied
            assert await self.b.flush()


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Clocked]:
    c = Clocked(request.param, prefix)
    yield c
    await c.b.aclose()


async def test_a_refused_request_reserves_nothing_and_settle_is_idempotent(backend: Clocked) -> None:
    """tests/test_budgets.py's scenario for the memory backend, on both."""
    b = backend
    cap = [Cap("global", daily_usd=1.0)]
    a = await b.admit("r1", cap, reserve=0.6, tokens=10)
    assert a.refused is None and a.usage["global"].daily_reserved == 0.0 and a.reserved_usd == 0.6
    a2 = await b.admit("r2", cap, reserve=0.6, tokens=10)  # 0.6 reserved < 1.0: admitted (bound = in flight)
    assert a2.refused is None and a2.usage["global"].daily_reserved == 0.6
    a3 = await b.admit("r3", cap, reserve=0.6, tokens=10)  # 1.2 in flight >= cap: refused, nothing reserved
    assert a3.refused == "budget global daily $1" and a3.reserved_usd == 0.0
    assert a3.usage["global"].daily_reserved == pytest.approx(1.2)
    assert a3.retry_after_s == 86400
    await b.settle(Settlement("r1", 0.1, 5))
    await b.settle(Settlement("r1", 0.1, 5))  # a retried settle charges nothing twice
    a4 = await b.admit("r4", cap, reserve=0.0)
    assert a4.usage["global"].daily_spent == pytest.approx(0.1) and a4.usage["global"].daily_reserved == 0.6
    b.now += 61  # r2's and r4's reservations expire (their process died): released, never charged
    a5 = await b.admit("r5", cap)
    assert a5.usage["global"].daily_reserved == 0.0 and a5.usage["global"].daily_spent == pytest.approx(0.1)
    b.now += 86400  # the next UTC day starts afresh; the month keeps counting
    a6 = await b.admit("r6", [Cap("global", 1.0, 5.0)])
    assert a6.usage["global"].daily_spent == 0.0 and a6.usage["global"].monthly_spent == pytest.approx(0.1)
    assert a6.usage["global"].past_days == (pytest.approx(0.1),)


async def test_reservations_count_against_every_cap_and_the_month(backend: Clocked) -> None:
    b = backend
    caps = [Cap("key:k1", daily_usd=1.0), Cap("customer:acme", daily_usd=10.0, monthly_usd=2.0), Cap("global")]
    for i in range(3):
        assert (await b.admit(f"r{i}", caps, reserve=0.4)).refused is None
    a = await b.admit("r3", caps, reserve=0.4)  # key:k1 at 1.2 of 1.0 -> refused, naming the first cap reached
    assert a.refused == "budget key:k1 daily $1"
    for scope in ("key:k1", "customer:acme", "global"):
        assert a.usage[scope].daily_reserved == pytest.approx(1.2) and a.usage[scope].monthly_reserved == pytest.approx(1.2)
    for i in range(3):
        await b.settle(Settlement(f"r{i}", 0.25, 10))
    a = await b.admit("r4", caps[1:], reserve=0.0)  # the customer's month: 0.75 spent of 2.0
    assert a.refused is None and a.usage["customer:acme"].monthly_spent == pytest.approx(0.75)
    assert a.usage["customer:acme"].monthly_reserved == pytest.approx(0.0, abs=1e-12)  # memory: float drift
    await b.settle(Settlement("r4", 1.5, 10))
    b.now += 86400  # another day: the daily caps start afresh, the monthly one does not
    a = await b.admit("r5", caps[1:], reserve=0.1)
    assert a.refused == "budget customer:acme monthly $2" and 0 < a.retry_after_s <= 28 * 86400  # type: ignore[operator]
    assert a.usage["customer:acme"].daily_spent == 0.0 and a.usage["customer:acme"].monthly_spent == pytest.approx(2.25)


async def test_block_at_levels(backend: Clocked) -> None:
    b = backend
    cap = [Cap("department:search", daily_usd=1.0)]
    await b.settle(Settlement("none", 0.0, 0))  # settling an unknown request does nothing
    assert (await b.admit("r1", cap, reserve=0.5, block_at={"department:search": 0.5})).refused is None
    a = await b.admit("r2", cap, reserve=0.01, block_at={"department:search": 0.5})
    assert a.refused == "budget department:search daily $1"
    assert (await b.admit("r3", cap, reserve=0.01)).refused is None  # at 1.0 it would still pass


async def test_model_caps_never_reserve_or_block_and_are_charged_at_settle(backend: Clocked) -> None:
    b = backend
    caps = [Cap("global", daily_usd=10.0), Cap("model:large", daily_usd=0.1), Cap("model:small", daily_usd=5.0)]
    a = await b.admit("r1", caps, reserve=1.0)
    assert a.refused is None
    await b.settle(Settlement("r1", 0.3, 10, {"large": 0.25, "small": 0.05}))
    a = await b.admit("r2", caps, reserve=1.0)  # model:large spent (0.25 of 0.1) but never blocks
    assert a.refused is None
    assert a.usage["model:large"].daily_spent == pytest.approx(0.25) and a.usage["model:large"].daily_reserved == 0.0
    assert a.usage["model:small"].daily_spent == pytest.approx(0.05)
    assert a.usage["global"].daily_spent == pytest.approx(0.3) and a.usage["global"].daily_reserved == 0.0
    a = await b.admit("r3", caps)
    assert a.usage["global"].daily_reserved == 1.0 and a.usage["model:large"].daily_reserved == 0.0
    await b.settle(Settlement("r2", 0.0, 0))  # a model not used is charged nothing
    a = await b.admit("r4", caps)
    assert a.usage["model:large"].daily_spent == pytest.approx(0.25) and a.usage["global"].daily_reserved == 0.0


async def test_sliding_window_rate_limits(backend: Clocked) -> None:
    b = backend
    b.now = T0 + 600  # the start of a minute
    lim = [RateLimit("key:k", rpm=3)]
    got = [(await b.admit(f"r{i}", [], lim)).refused for i in range(4)]
    assert got[:3] == [None, None, None] and got[3] == "rate limit key:k: 3 requests per minute"
    b.now += 10
    a = await b.admit("x", [], lim)
    assert a.refused is not None and a.retry_after_s == pytest.approx(50)
    b.now = T0 + 660 + 30  # half-way through the next minute: the last one weighs half, 1.5 + 1 <= 3
    assert (await b.admit("r5", [], lim)).refused is None
    assert (await b.admit("r6", [], lim)).refused is not None  # 1.5 + 1 + 1 > 3
    b.now = T0 + 780  # two minutes on: the window is empty
    assert [(await b.admit(f"s{i}", [], lim)).refused for i in range(3)] == [None, None, None]


async def test_tokens_per_minute_are_corrected_at_settle(backend: Clocked) -> None:
    b = backend
    b.now = T0 + 600
    lim = [RateLimit("principal:p", tpm=1000)]
    assert (await b.admit("r1", [], lim, tokens=900)).refused is None  # the estimate: 900
    a = await b.admit("r2", [], lim, tokens=200)  # 900 + 200 > 1000
    assert a.refused == "rate limit principal:p: 1000 tokens per minute"
    await b.settle(Settlement("r1", 0.0, 300))  # it used 300: 600 come back
    assert (await b.admit("r3", [], lim, tokens=200)).refused is None
    # a rate limit that refuses consumes nothing: requests, tokens or budget
    caps = [Cap("global", daily_usd=1.0)]
    a = await b.admit("r4", caps, lim, reserve=0.5, tokens=600)
    assert a.refused is not None
    a = await b.admit("r5", caps, lim, reserve=0.0, tokens=500)
    assert a.refused is None and a.usage["global"].daily_reserved == 0.0


async def test_past_days_for_the_monthly_projection(backend: Clocked) -> None:
    b = backend
    b.now = 1_764_547_200.0 + 3600  # 2025-12-01 01:00 UTC
    ca, cb = Cap("customer:a", monthly_usd=100.0), Cap("customer:b", monthly_usd=100.0)
    await b.admit("d1", [ca])
    await b.settle(Settlement("d1", 1.0, 1))
    b.now += 86400  # Dec 2: only b spends
    await b.admit("d2", [cb])
    await b.settle(Settlement("d2", 2.0, 1))
    b.now += 2 * 86400  # Dec 4 (nothing settled on Dec 3)
    a = await b.admit("d4", [ca, cb])
    assert a.usage["customer:a"].past_days == (pytest.approx(1.0), 0.0)
    assert a.usage["customer:b"].past_days == (0.0, pytest.approx(2.0))
    assert a.usage["customer:b"].monthly_spent == pytest.approx(2.0)
    b.now = 1_767_225_600.0 + 60  # 2026-01-01: a new month, no past days yet
    a = await b.admit("j1", [ca, cb])
    assert a.usage["customer:a"] .past_days == () and a.usage["customer:a"].monthly_spent == 0.0


async def test_a_settle_before_expiry_releases_and_charges_once(backend: Clocked) -> None:
    b = backend
    cap = [Cap("project:x", daily_usd=1.0)]
    await b.admit("r1", cap, reserve=0.4, ttl=30)
    b.now += 29
    await b.settle(Settlement("r1", 0.2, 1))
    b.now += 5  # past the TTL: nothing left to expire
    a = await b.admit("r2", cap)
    assert a.usage["project:x"].daily_spent == pytest.approx(0.2) and a.usage["project:x"].daily_reserved == 0.0


# -- the Redis backend's own behaviours ---------------------------------------------------------------------------


@pytest.fixture
async def rb(prefix: str) -> AsyncIterator[RedisStateBackend]:
    b = RedisStateBackend(REDIS_URL, prefix=prefix)
    yield b
    await b.aclose()


async def test_periods_are_on_redis_time_and_money_is_integer_nano_dollars(rb: RedisStateBackend,
                                                                           prefix: str) -> None:
    a = await rb.admit("r1", [Cap("global", 1.0, 10.0)], [RateLimit("key:k", 5, 500)], 0.000123456789, 50, {}, 60)
    assert abs(a.now - time.time()) < 2  # Redis TIME (this host's clock here)
    rb.settle(Settlement("r1", 0.0001, 40, {"small": 0.0001}))
    assert await rb.flush()
    keys = keys_of(prefix)
    day = redis_day()
    assert all(k.startswith("{" + prefix + "}:") for k in keys)  # one hash tag: one slot on a cluster
    assert keys[key(prefix, f"sp:global:{day}")] == "100000"  # $0.0001 in nano-dollars
    assert keys[key(prefix, f"rv:global:{day}")] == "0"
    assert keys[key(prefix, f"sp:global:{day[:7]}")] == "100000"
    assert keys[key(prefix, f"tk:key:k:{int(a.now // 60)}")] == "40"


async def test_late_settlement_after_expiry_still_charges_once(prefix: str) -> None:
    """Beyond the memory backend: an expired reservation is released, and a settlement that arrives later (a
    request slower than the TTL, one queued while Redis was away) still charges the real cost, once."""
    now = [T0]
    b = RedisStateBackend(REDIS_URL, prefix=prefix, clock=lambda: now[0])
    try:
        cap = [Cap("global", daily_usd=1.0)]
        await b.admit("r1", cap, [], 0.5, 1, {}, 10)
        now[0] += 11
        a = await b.admit("r2", cap, [], 0.0, 1, {}, 10)
        assert a.usage["global"].daily_reserved == 0.0  # released
        for _ in range(2):
            b.settle(Settlement("r1", 0.3, 1))
        assert await b.flush()
        a = await b.admit("r3", cap, [], 0.0, 1, {}, 10)
        assert a.usage["global"].daily_spent == pytest.approx(0.3) and a.usage["global"].daily_reserved == 0.0
    finally:
        await b.aclose()


async def test_pins_and_cooldowns_are_shared(prefix: str) -> None:
    one = RedisStateBackend(REDIS_URL, prefix=prefix, pin_ttl_s=60)
    two = RedisStateBackend(REDIS_URL, prefix=prefix, pin_ttl_s=60)
    try:
        a = await one.admit("r1", [], [], 0, 0, {}, 60, "sess-1", ["large", "small"])
        assert a.pin is None and a.cooling == {}
        one.settle(Settlement("r1", 0.01, 10, {"small": 0.01}, "sess-1", "small", {"large": 30.0}))
        assert await one.flush()
        b = await two.admit("r2", [], [], 0, 0, {}, 60, "sess-1", ["large", "small"])
        assert b.pin == "small" and set(b.cooling) == {"large"}
        assert b.cooling["large"] - b.now == pytest.approx(30, abs=1)
        c = await two.admit("r3", [], [], 0, 0, {}, 60, "sess-2", ["small"])
        assert c.pin is None and c.cooling == {}
        # a shorter cooldown never cuts a longer one short
        two.settle(Settlement("r2", 0.0, 0, {}, None, None, {"large": 1.0}))
        assert await two.flush()
        d = await one.admit("r4", [], [], 0, 0, {}, 60, None, ["large"])
        assert d.cooling["large"] - d.now == pytest.approx(30, abs=1)
    finally:
        await one.aclose()
        await two.aclose()


async def test_admit_is_one_round_trip_and_settlements_are_batched(rb: RedisStateBackend) -> None:
    caps = [Cap("global", 100.0, 1000.0), Cap("customer:c", 100.0), Cap("model:small", 100.0)]
    lim = [RateLimit("key:k", 10_000, 10_000_000)]
    await rb.admit("warm", caps, lim, 0.001, 10, {}, 60, "s", ["small"])  # loads the script
    rb.settle(Settlement("warm", 0.001, 10))
    assert await rb.flush()
    base = dict(rb.round_trips)

    async def one(i: int) -> None:
        a = await rb.admit(f"q{i}", caps, lim, 0.001, 10, {}, 60, f"s{i % 4}", ["small"])
        assert a.refused is None
        await asyncio.sleep(0.001)
        rb.settle(Settlement(f"q{i}", 0.001, 10, {"small": 0.001}, f"s{i % 4}", "small"))

    for i in range(20):  # one caller: one admit and one settle per request
        await one(i)
        assert await rb.flush()
    assert rb.round_trips["admit"] - base["admit"] == 20 and rb.round_trips["settle"] - base["settle"] == 20
    base = dict(rb.round_trips)
    await asyncio.gather(*(one(100 + i) for i in range(64)))  # 64 at once: settlements share EVALSHAs
    assert await rb.flush()
    assert rb.round_trips["admit"] - base["admit"] == 64
    assert rb.round_trips["settle"] - base["settle"] < 64
    assert rb.round_trips["script_load"] == 2  # once per script
    a = await rb.admit("end", caps, [], 0, 0, {}, 60)
    assert a.usage["global"].daily_spent == pytest.approx(85 * 0.001) and a.usage["global"].daily_reserved == 0.0


async def test_a_retried_admit_does_not_reserve_twice(rb: RedisStateBackend) -> None:
    """An admit whose reply was lost is sent again on a fresh connection: the request id is already admitted."""
    cap = [Cap("global", daily_usd=1.0)]
    await rb.admit("r1", cap, [RateLimit("key:k", rpm=100)], 0.3, 1, {}, 60)
    await rb.admit("r1", cap, [RateLimit("key:k", rpm=100)], 0.3, 1, {}, 60)
    a = await rb.admit("r2", cap, [], 0.0, 1, {}, 60)
    assert a.usage["global"].daily_reserved == pytest.approx(0.3)


def test_redacted_never_shows_credentials() -> None:
    assert redacted("redis://user:s3cret@cache.internal:6380/2") == "redis://cache.internal:6380/2"
    assert redacted("rediss://:s3cret@h") == "rediss://h:6379/0"
    assert "s3cret" not in redacted("redis://:s3cret@[::1]:1/0")


# -- replicas sharing one Redis -----------------------------------------------------------------------------------


@contextlib.contextmanager
def replicas(up: FakeUpstream, tmp: Path, prefix: str, n: int, principals: dict[str, dict[str, Any]],
             budgets: dict | None = None, url: str = REDIS_URL,
             on_unavailable: str = "closed") -> Iterator[tuple[list[GatewayServer], dict[str, dict[str, str]]]]:
    """``n`` real gateways (each its own service, event loop and ledger) on one Redis and one governance store
    (virtual keys: a key of each of ``principals``, whose Authorization headers come back by name); stopped
    afterwards (their queued settlements are sent then). The replicas share this test process's GIL with each other
    and the client threads, so against the real Redis their calls get a 5 s timeout instead of the default 0.5 s:
    these tests are about budgets and pins, and a call stalled by the test's own contention is not an outage."""
    timeout_s = 5.0 if url == REDIS_URL else 0.5
    env = GovEnv("sqlite", tmp)
    store = env.store()
    try:
        auth = {name: {"Authorization": f"Bearer {make_key(store, name, **fields)[1]}"}
                for name, fields in principals.items()}
    finally:
        store.close()
    gws: list[GatewayServer] = []
    try:
        for i in range(n):
            d = tmp / f"replica{i}"
            d.mkdir()
            cfg = gateway_config(up.base_url, d, env, extra=f'state: {{backend: redis, url: "{url}", prefix: '
                                 f'"{prefix}", on_unavailable: {on_unavailable}, timeout_s: {timeout_s}}}\n')
            if budgets is not None:
                cfg.budgets = BudgetsConfig.model_validate(budgets)
            gws.append(GatewayServer(cfg).start())
        yield gws, auth
    finally:
        for gw in gws:
            gw.stop()


def post(gw: GatewayServer, auth: dict[str, str], client: httpx.Client | None = None,
         **headers: str) -> httpx.Response:
    body: dict[str, Any] = {"messages": MSG}
    if "max_tokens" in headers:
        body["max_tokens"] = int(headers.pop("max_tokens"))
    h = {**auth, **{k.replace("_", "-"): v for k, v in headers.items()}}
    return (client or httpx).post(gw.base_url + "/chat/completions", json=body, headers=h, timeout=10)  # type: ignore[attr-defined]


def state_of(gw: GatewayServer) -> RedisStateBackend:
    assert gw.svc is not None
    st = gw.svc.governor.state
    assert isinstance(st, RedisStateBackend)
    return st


def flushed(gw: GatewayServer) -> None:
    assert gw._run(state_of(gw).flush(10))


def nano(prefix: str, rest: str, url: str = REDIS_URL) -> int:
    c = redis.Redis.from_url(url)
    try:
        return int(c.get(key(prefix, rest)) or 0)
    finally:
        c.close()


def test_overspend_bound_and_exact_spend_across_three_replicas(tmp_path: Path, prefix: str) -> None:
    """48 concurrent clients spread over three gateways against one $0.02 daily cap."""
    with FakeUpstream() as up:
        up.set(prompt_tokens=500, completion_tokens=400, latency_s=0.05)
        codes: list[int] = []
        lock = threading.Lock()
        with replicas(up, tmp_path, prefix, 3, {"p": {"department": "search", "daily_budget_usd": 0.02}},
                      {"steps": []}) as (gws, auth):

            def client(i: int) -> None:
                with httpx.Client(timeout=10) as c:
                    for j in range(8):
                        r = post(gws[(i + j) % 3], auth["p"], c, X_Task="label", max_tokens="400")
                        with lock:
                            codes.append(r.status_code)

            threads = [threading.Thread(target=client, args=(i,)) for i in range(48)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            rows = [row for gw in gws for row in gw.rows()]
            served = [sum(1 for row in gw.rows() if row["status"] == "ok") for gw in gws]
        day = redis_day()
    per_request = 500 * 0.1 / 1e6 + 400 * 0.4 / 1e6  # label = small: $0.00021, reserved exactly (max_tokens)
    ok = [r for r in rows if r["status"] == "ok"]
    spent = sum(r["cost_usd"] for r in ok)
    assert set(codes) == {200, 429} and codes.count(200) == len(ok) and min(served) > 0, (codes, served)
    # admitted while settled + reserved < cap, across replicas: only what was in flight can land past the cap
    assert 0.02 - per_request <= spent <= 0.02 + 48 * per_request + 1e-9, (spent, len(ok))
    # Redis holds exactly what the three ledgers booked, and nothing is left reserved
    assert abs(nano(prefix, f"sp:principal:p:{day}") - round(spent * 1e9)) <= len(ok)
    assert nano(prefix, f"rv:principal:p:{day}") == 0


def _not_near_a_minute_boundary() -> None:
    if time.time() % 60 > 50:  # the sliding window would let part of the last minute go during the test
        time.sleep(61 - time.time() % 60)


def test_rate_limits_are_shared_across_replicas(tmp_path: Path, prefix: str) -> None:
    with FakeUpstream() as up, replicas(up, tmp_path, prefix, 3, {"k": {"rpm": 6}}) as (gws, auth):
        _not_near_a_minute_boundary()
        got = [post(gws[i % 3], auth["k"]) for i in range(12)]
    assert [r.status_code for r in got] == [200] * 6 + [429] * 6
    err = got[-1].json()["error"]
    assert err["code"] == "rate_limit_exceeded" and "principal:k: 6 requests per minute" in err["message"]
    assert 1 <= int(got[-1].headers["Retry-After"]) <= 60


def test_a_session_pinned_on_one_replica_is_honoured_on_another(tmp_path: Path, prefix: str) -> None:
    with FakeUpstream() as up, replicas(up, tmp_path, prefix, 2, {"a": {}}) as ((one, two), auth):
        up.push_faults([{"kind": "http_error", "status": 401}])  # large refuses: small serves and is pinned
        r = post(one, auth["a"], X_Task="chat", X_Session_Id="sess-1")
        assert r.status_code == 200 and r.headers["x-tierwise-model"] == "small"
        flushed(one)
        r = post(two, auth["a"], X_Task="chat", X_Session_Id="sess-1")
        assert r.headers["x-tierwise-model"] == "small"  # the pin made on the other replica
        r = post(two, auth["a"], X_Task="chat", X_Session_Id="sess-2")
        assert r.headers["x-tierwise-model"] == "large"  # another session: the tier's first choice


def test_a_cooldown_started_on_one_replica_is_seen_by_another(tmp_path: Path, prefix: str) -> None:
    with FakeUpstream() as up, replicas(up, tmp_path, prefix, 2, {"a": {}}) as ((one, two), auth):
        up.push_faults([{"kind": "http_error", "status": 500}] * 3)  # large fails 3 times: cooldown (3 failures)
        r = post(one, auth["a"], X_Task="chat")
        assert r.status_code == 200 and r.headers["x-tierwise-model"] == "small"
        flushed(one)
        before = sum(1 for q in up.requests if q.body.get("model") == "large-up")
        r = post(two, auth["a"], X_Task="chat")
        assert r.status_code == 200 and r.headers["x-tierwise-model"] == "small"
        assert sum(1 for q in up.requests if q.body.get("model") == "large-up") == before  # not even tried
        row = two.rows()[-1]
        assert all(a["model"] != "large" or a["outcome"] == "skipped_cooldown" for a in row["attempts"])


def test_round_trips_per_request_through_the_gateway(tmp_path: Path, prefix: str) -> None:
    """Budgets + rate limits on: one admit per request, settles batched — at most 2 round trips per request."""
    fields = {"customer": "c", "daily_budget_usd": 100.0, "rpm": 100_000, "tpm": 100_000_000}
    with FakeUpstream() as up, replicas(up, tmp_path, prefix, 1, {"p": fields}) as ((gw,), auth):
        st = state_of(gw)
        with httpx.Client(timeout=10) as c:
            for _ in range(30):
                assert post(gw, auth["p"], c, X_Session_Id="s").status_code == 200
        flushed(gw)
        sequential = (st.round_trips["admit"] + st.round_trips["settle"]) / st.admitted
        before = dict(st.round_trips), st.admitted

        def client() -> None:
            with httpx.Client(timeout=10) as c:
                for _ in range(10):
                    assert post(gw, auth["p"], c).status_code == 200

        threads = [threading.Thread(target=client) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        flushed(gw)
        concurrent = (st.round_trips["admit"] + st.round_trips["settle"] - before[0]["admit"] - before[0]["settle"]) \
            / (st.admitted - before[1])
    assert sequential <= 2.0 and concurrent <= 2.0, (sequential, concurrent)
    assert st.round_trips["script_load"] == 2


# -- a replica killed mid-traffic -----------------------------------------------------------------------------------


def _serve(tmp: Path, name: str, upstream_url: str, prefix: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    cfg = procs.write_config(tmp, upstream_url, port, f'{{path: "{tmp / (name + ".db")}", flush_interval_ms: 20}}',
                             f'state: {{backend: redis, url: "{REDIS_URL}", prefix: "{prefix}"}}\n'
                             "budgets: {caps: {global: {daily_usd: 1000}}, steps: [], reservation_ttl_s: 3}\n", name)
    return procs.start_serve(cfg, port), f"http://127.0.0.1:{port}"


def test_a_replica_killed_mid_traffic_has_its_reservations_released(tmp_path: Path, prefix: str) -> None:
    with FakeUpstream() as up:
        up.set(prompt_tokens=100, completion_tokens=50)
        (a, url_a), (b, url_b) = _serve(tmp_path, "a", up.base_url, prefix), _serve(tmp_path, "b", up.base_url, prefix)
        try:
            day = redis_day()
            up.set(latency_s=2.0)
            lost: list[Any] = []
            threads = [threading.Thread(target=lambda: lost.append(_try_post(url_a))) for _ in range(6)]
            for t in threads:
                t.start()
            deadline = time.time() + 5
            while nano(prefix, f"rv:global:{day}") == 0 and time.time() < deadline:
                time.sleep(0.02)
            time.sleep(0.3)  # all six admitted and reserved, their upstream calls in flight
            held = nano(prefix, f"rv:global:{day}")
            a.send_signal(signal.SIGKILL)
            a.wait(10)
            for t in threads:
                t.join(10)
            assert held > 0 and all(r is None or r >= 500 for r in lost)
            up.set(latency_s=0.0)
            served = [httpx.post(url_b + "/v1/chat/completions", json={"messages": MSG}, timeout=10) for _ in range(5)]
            assert [r.status_code for r in served] == [200] * 5  # the other replica goes on
            time.sleep(0.3)
            assert nano(prefix, f"rv:global:{day}") == held  # the killed replica's reservations: still held ...
            time.sleep(3.0)  # ... until their TTL (3 s) passes; the next admit anywhere releases them
            assert httpx.post(url_b + "/v1/chat/completions", json={"messages": MSG}, timeout=10).status_code == 200
            deadline = time.time() + 5
            while nano(prefix, f"rv:global:{day}") != 0 and time.time() < deadline:
                time.sleep(0.05)
            assert nano(prefix, f"rv:global:{day}") == 0
            b.send_signal(signal.SIGTERM)
            _, err = b.communicate(timeout=20)
            assert b.returncode == 0, err
            rows = sqlite3.connect(tmp_path / "b.db").execute("select cost_usd from requests where status = 'ok'").fetchall()
            assert len(rows) == 6  # the killed replica's requests were never charged: only b's six
            assert nano(prefix, f"sp:global:{day}") == pytest.approx(sum(c for (c,) in rows) * 1e9, abs=6)
            assert redis.Redis.from_url(REDIS_URL).zcard(key(prefix, "res")) == 0
        finally:
            for p in (a, b):
                if p.poll() is None:
                    p.kill()
                    p.wait(10)


def _try_post(url: str) -> int | None:
    try:
        return httpx.post(url + "/v1/chat/completions", json={"messages": MSG}, timeout=10).status_code
    except httpx.HTTPError:
        return None


# -- Redis going away and coming back (a dedicated redis-server per test) -------------------------------------------


class OwnRedis:
    """A redis-server of this test's own, on a free port, that the test stops, restarts, pauses and resumes."""

    def __init__(self, password: str | None = None) -> None:
        self.port = free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while True:
            try:
                c = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
                c.ping()
                c.close()
                return
            except redis.RedisError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server): the outage tests start their own")
    r = OwnRedis(password="s3cret-pw-42")
    r.start()
    try:
        yield r
    finally:
        r.stop()


def _wait_for(fn: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if fn():
            return True
        time.sleep(0.05)
    return False


def test_redis_down_fails_closed_with_503_then_recovers(tmp_path: Path, own_redis: OwnRedis,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tierwise.state")
    with FakeUpstream() as up, replicas(up, tmp_path, "tw", 1, {"a": {}}, {"caps": {"global": {"daily_usd": 100}}},
                                        url=own_redis.url) as ((gw,), auth):
        assert post(gw, auth["a"]).status_code == 200
        flushed(gw)
        own_redis.stop()
        down = [post(gw, auth["a"]) for _ in range(3)]
        for r in down:
            assert r.status_code == 503 and r.headers["Retry-After"] == "1"
            err = r.json()["error"]
            assert err["code"] == "state_unavailable" and err["type"] == "server_error" and "Redis" in err["message"]
        own_redis.start()  # an empty Redis: the scripts are loaded again (NOSCRIPT)
        statuses: list[int] = []

        def served() -> bool:
            statuses.append(post(gw, auth["a"]).status_code)
            return statuses[-1] == 200

        assert _wait_for(served)
        flushed(gw)
        rows = gw.rows()
        st = state_of(gw)
    assert set(statuses[:-1]) <= {503}  # refused until the probe finds Redis back (at most PROBE_INTERVAL_S)
    assert sum(1 for row in rows if row["http_status"] == 503 and row["status"] == "rejected") == 3 + len(statuses) - 1
    assert st.round_trips["script_load"] == 4
    outage = [r for r in caplog.records if "unreachable" in r.getMessage()]
    back = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(outage) == 1 and len(back) == 1, [r.getMessage() for r in caplog.records]
    assert "closed" in outage[0].getMessage() and f"127.0.0.1:{own_redis.port}/0" in outage[0].getMessage()
    assert "s3cret-pw-42" not in caplog.text and all("s3cret-pw-42" not in r.text for r in down)
    assert all("s3cret-pw-42" not in str(row) for row in rows)


def test_redis_down_fails_open_then_charges_what_was_spent(tmp_path: Path, own_redis: OwnRedis,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tierwise.state")
    with FakeUpstream() as up, replicas(up, tmp_path, "tw", 1, {"a": {}}, {"caps": {"global": {"daily_usd": 100}}},
                                        url=own_redis.url, on_unavailable="open") as ((gw,), auth):
        up.set(prompt_tokens=1000, completion_tokens=1000)
        assert post(gw, auth["a"], X_Task="label").status_code == 200
        flushed(gw)
        own_redis.stop()
        assert [post(gw, auth["a"], X_Task="label").status_code for _ in range(3)] == [200] * 3
        own_redis.start()  # empty: only what was spent during the outage is there to charge
        flushed(gw)  # the settlements queued while Redis was away are sent now
        rows = gw.rows()
        day = redis_day(own_redis.url)
    opened = [r for r in rows if any("admitted without budgets or rate limits" in n for n in r["notes"])]
    assert len(opened) == 3 and all(r["status"] == "ok" for r in opened)
    assert nano("tw", f"sp:global:{day}", own_redis.url) == round(sum(r["cost_usd"] for r in opened) * 1e9)
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1
    assert "s3cret-pw-42" not in caplog.text


async def test_redis_timing_out_settlements_wait_and_land_once(own_redis: OwnRedis, prefix: str) -> None:
    """A Redis that stops answering (paused: connections time out, its data kept): settlements wait in the queue
    and are sent when it answers again; a batch that timed out may have run as well — charged once all the same."""
    b = RedisStateBackend(own_redis.url, prefix=prefix, timeout_s=0.2)
    try:
        cap = [Cap("global", daily_usd=10.0)]
        assert (await b.admit("r1", cap, [], 0.5, 1, {}, 60)).refused is None
        own_redis.pause()
        b.settle(Settlement("r1", 0.25, 1))
        assert not await b.flush(1.0)  # Redis does not answer: the settlement waits
        with pytest.raises(APIError) as exc:
            await b.admit("r2", cap, [], 0.5, 1, {}, 60)
        assert exc.value.status == 503 and exc.value.code == "state_unavailable"
        with pytest.raises(APIError):  # failing fast now: no wait for another timeout
            started = time.monotonic()
            await b.admit("r2b", cap, [], 0.5, 1, {}, 60)
        assert time.monotonic() - started < 0.1
        assert (await b.admit("r3", [], [], 0.0, 0, {}, 60)).refused is None  # nothing governs it: admitted
        own_redis.resume()
        assert await b.flush(10)
        await asyncio.sleep(0.6)  # past the probe interval
        a = await b.admit("r4", cap, [], 0.0, 1, {}, 60)
        assert a.usage["global"].daily_spent == pytest.approx(0.25)
        assert a.usage["global"].daily_reserved in (0.0, 0.5, 1.0)  # r2's timed-out admits may have run (they expire)
        assert b.stats()["down"] is False and b.stats()["pending"] == 0
    finally:
        own_redis.resume()
        await b.aclose()


async def test_noscript_after_a_script_flush_reloads(own_redis: OwnRedis, prefix: str) -> None:
    b = RedisStateBackend(own_redis.url, prefix=prefix)
    try:
        await b.admit("r1", [Cap("global", 1.0)], [], 0.1, 1, {}, 60)
        c = redis.Redis.from_url(own_redis.url)
        c.script_flush()
        c.close()
        a = await b.admit("r2", [Cap("global", 1.0)], [], 0.1, 1, {}, 60)
        assert a.refused is None and a.usage["global"].daily_reserved == pytest.approx(0.1)
        assert b.round_trips["script_load"] == 2 and b.round_trips["admit"] == 3
    finally:
        await b.aclose()


def test_serve_workers_share_budgets_through_redis(tmp_path: Path, prefix: str) -> None:
    """`tierwise serve --workers 2` on state.backend redis (allowed: the workers share one set of counters)."""
    from tests.test_serve_workers import start, write_config

    with FakeUpstream() as up:
        up.set(prompt_tokens=500, completion_tokens=400, latency_s=0.02)
        port = free_port()
        cfg = write_config(tmp_path, up.base_url, port, f'state: {{backend: redis, url: "{REDIS_URL}", prefix: '
                           f'"{prefix}"}}\nbudgets: {{caps: {{global: {{daily_usd: 0.005}}}}, steps: []}}\n')
        proc = start(cfg, port, 2)
        codes: list[int] = []
        try:
            def client() -> None:
                for _ in range(6):
                    with httpx.Client(timeout=15) as c:
                        codes.append(c.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                                            json={"messages": MSG, "max_tokens": 400}).status_code)

            threads = [threading.Thread(target=client) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            day = redis_day()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    rows = sqlite3.connect(tmp_path / "ledger.db").execute("select cost_usd from requests where status = 'ok'").fetchall()
    spent = sum(c for (c,) in rows)
    per_request = 500 * 0.1 / 1e6 + 400 * 0.4 / 1e6
    assert set(codes) == {200, 429} and codes.count(200) == len(rows)
    assert 0.005 - per_request <= spent <= 0.005 + 16 * per_request + 1e-9, (spent, len(rows))
    assert abs(nano(prefix, f"sp:global:{day}") - round(spent * 1e9)) <= len(rows)


def test_config_and_check_config(tmp_path: Path) -> None:
    from tierwise.config import load_config_text
    from tierwise.config.load import ConfigError

    port = free_port()  # nothing listens there
    cfg = tmp_path / "t.yaml"
    body = f"""
ledger: {{path: "{tmp_path / 'ledger.db'}"}}
providers:
  fake: {{format: openai, base_url: "http://127.0.0.1:9/v1", api_key: k}}
models:
  small: {{provider: fake, price: {{input: 0.1, output: 0.4}}}}
tiers:
  chat: {{models: [small]}}
default_tier: chat
fallback_model: small
"""
    with pytest.raises(ConfigError) as exc:
        load_config_text("state: {backend: redis}\n" + body, env={})
    assert "state.url" in str(exc.value)
    with pytest.raises(ConfigError):
        load_config_text('state: {backend: redis, url: "redis://x", prefix: "a}b"}\n' + body, env={})
    cfg.write_text(f'state: {{backend: redis, url: "redis://:pw-s3cret@127.0.0.1:{port}/3"}}\n' + body)
    r = subprocess.run([sys.executable, "-m", "tierwise.cli", "check-config", str(cfg)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "state.url" in r.stderr and f"redis://127.0.0.1:{port}/3" in r.stderr
    assert "pw-s3cret" not in r.stderr + r.stdout and "Traceback" not in r.stderr
    cfg.write_text(f'state: {{backend: redis, url: "{REDIS_URL}"}}\n' + body)
    r = subprocess.run([sys.executable, "-m", "tierwise.cli", "check-config", str(cfg)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
