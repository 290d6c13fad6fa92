"""Regressions found by ``tests/test_multi_replica.py`` (three real replicas on Redis and PostgreSQL):

- a request's budget reservation ran its completion only to the tier's *expected* length (256 tokens), not to the
  request's own ``max_tokens``: a request allowed 300 tokens that used them cost more than it had reserved, so
  spend could pass a cap by more than the reservations in flight;
- a replica killed mid-traffic left requests whose cost the budgets never saw — in flight (their reservation
  expires and is released; the journal replay books them ``interrupted`` at their estimate) or ended with their
  settlement still queued — so after recovery the budgets undercounted the ledger. The journal replay (at start,
  or ``tierwise ledger recover``) now settles every replayed row, once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.harness import GatewayServer, config_for
from tests.redis_env import REDIS_URL, redis_down
from tierwise.governance.admission import Governor
from tierwise.governance.anomaly import AnomalyDetector
from tierwise.governance.principal import Principal
from tierwise.governance.recovery import charge_recovered
from tierwise.ledger.journal import IN_FLIGHT, Journal, encode_row
from tierwise.pricing import PriceBook
from tierwise.state import MemoryHealth, MemorySessionPins
from tierwise.state.backend import Cap, Settlement
from tierwise.state.memory_backend import MemoryStateBackend
from tierwise.types import LedgerRecord

MSG = [{"role": "user", "content": "hello there"}]


def test_the_reservation_runs_to_the_requests_own_max_tokens(tmp_path: Path) -> None:
    cfg = config_for("http://127.0.0.1:9/v1", tmp_path)
    book = PriceBook(cfg)
    out = 0.4 / 1e6  # small: $ per output token

    def est(body: dict, tier: str = "label", model: str = "small") -> tuple[float, float, int]:
        e = book.estimator({"messages": MSG, **body}, tier)
        return e(model), e.ceiling(model), e.prompt_tokens(model)

    expected, ceiling, prompt = est({"max_tokens": 1000})
    assert expected == pytest.approx((prompt * 0.1 + 256 * 0.4) / 1e6)  # the routing estimate: the expected length
    assert ceiling == pytest.approx((prompt * 0.1 + 1000 * 0.4) / 1e6)  # the reservation: all the client allows
    assert est({"max_completion_tokens": 1000, "n": 2})[1] == pytest.approx((prompt * 0.1) / 1e6 + 2000 * out)
    assert est({})[1] == est({})[0]  # no limit set: the expectation is all there is to go on
    assert est({"max_tokens": 50})[1] == est({"max_tokens": 50})[0]  # below the expectation: the estimate is it
    # a reasoning model's floor raises max_tokens before the call, so the reservation follows it
    _, thinker, p = est({"max_tokens": 100}, "think", "thinker")
    assert thinker == pytest.approx((p * 1.1 + 4096 * 4.4) / 1e6)

    async def admitted() -> float:
        state = MemoryStateBackend()
        gov = Governor(cfg, state, MemorySessionPins(60, 10), MemoryHealth(3, 30),
                       AnomalyDetector(cfg.anomalies, None))
        body = {"messages": MSG, "max_tokens": 1000}
        g = await gov.admit(LedgerRecord(id="r1", ts=time.time()), Principal("p", daily_budget_usd=1.0), "label",
                            ("small",), book.estimator(body, "label"))
        assert g.admitted
        return (await state.read_usage(["principal:p"]))["principal:p"].daily_reserved

    assert asyncio.run(admitted()) == pytest.approx(ceiling)


def _dead_process_journal(directory: Path) -> None:
    """What a replica killed mid-traffic leaves: r-int in flight (begin line only), r-done ended (its settlement
    was still queued), r-sent ended and settled before the kill."""
    j = Journal(directory)
    for rid, est in (("r-int", 0.45), ("r-done", 0.4), ("r-sent", 0.4)):
        j.begin(rid, encode_row({"id": rid, "ts": time.time(), "status": IN_FLIGHT, "principal": "p",
                                 "estimated_cost_usd": est})[1])
    for rid, cost in (("r-done", 0.35), ("r-sent", 0.3)):
        rec = LedgerRecord(id=rid, ts=time.time(), principal="p", status="ok", estimated_cost_usd=0.4)
        rec.cost.input_usd = cost
        j.final(rid, encode_row(rec.as_row())[1])
    j.close(None)  # the process is gone: its segment stays for the next start to replay


def test_the_journal_replay_at_start_charges_what_a_killed_replica_never_settled(tmp_path: Path,
                                                                                 prefix: str) -> None:
    if (why := redis_down()) is not None:
        pytest.skip(why)
    from tierwise.state.redis_backend import RedisStateBackend

    cap = [Cap("principal:p", daily_usd=10.0)]

    async def before_the_kill() -> None:
        st = RedisStateBackend(REDIS_URL, prefix=prefix)
        for rid, reserve in (("r-int", 0.45), ("r-done", 0.4), ("r-sent", 0.4)):
            assert (await st.admit(rid, cap, [], reserve, 10, {}, 900)).refused is None
        st.settle(Settlement("r-sent", 0.3, 10))
        assert await st.flush()
        await st.aclose()

    async def usage() -> tuple[float, float]:
        st = RedisStateBackend(REDIS_URL, prefix=prefix)
        try:
            u = (await st.read_usage(["principal:p"]))["principal:p"]
            return u.daily_spent, u.daily_reserved
        finally:
            await st.aclose()

    asyncio.run(before_the_kill())
    _dead_process_journal(tmp_path / "ledger.db.journal")
    assert asyncio.run(usage()) == (pytest.approx(0.3), pytest.approx(0.85))  # r-int and r-done still held
    cfg = config_for("http://127.0.0.1:9/v1", tmp_path,
                     extra=f'state: {{backend: redis, url: "{REDIS_URL}", prefix: "{prefix}"}}\n')
    gw = GatewayServer(cfg).start()  # the restart: replays the journal, then settles what it replayed
    try:
        assert gw.svc is not None
        assert {r["id"]: r["status"] for r in gw.svc.ledger.recovered} == \
            {"r-done": "ok", "r-sent": "ok", "r-int": "interrupted"}
        deadline = time.time() + 10
        while asyncio.run(usage())[1] > 0 and time.time() < deadline:
            time.sleep(0.05)
        # booked cost of each, once: r-int at its estimate, r-done at its real cost, r-sent not a second time
        assert asyncio.run(usage()) == (pytest.approx(0.3 + 0.35 + 0.45), 0.0)
        charge_recovered(gw.svc.governor.state, gw.svc.ledger.recovered)  # replayed again: charges nothing twice
        assert gw._run(gw.svc.governor.state.flush())  # type: ignore[attr-defined]
        assert asyncio.run(usage()) == (pytest.approx(1.1), 0.0)
    finally:
        gw.stop()


def test_an_interrupted_request_charges_the_model_it_was_planned_on(tmp_path: Path) -> None:
    """The journal's begin line names the model the request goes to first, so replaying an interrupted request
    charges that model's cap too (it had no attempts to say which model it was on)."""
    import contextlib
    import threading

    import httpx
    import orjson

    from tests.fakes.upstream import FakeUpstream
    from tierwise.governance.recovery import settlements
    from tierwise.ledger.journal import _interrupted

    with FakeUpstream() as up:
        up.set(latency_s=3.0)
        gw = GatewayServer(config_for(up.base_url, tmp_path)).start()
        try:
            sent = threading.Thread(target=lambda: httpx.post(
                gw.base_url + "/chat/completions", json={"model": "label", "messages": MSG}, timeout=10))
            sent.start()
            begin = None
            deadline = time.time() + 5
            while begin is None and time.time() < deadline:
                for seg in (tmp_path / "ledger.db.journal").glob("*"):
                    for line in seg.read_bytes().splitlines():
                        with contextlib.suppress(orjson.JSONDecodeError):  # a line being written
                            row = orjson.loads(line)
                            if isinstance(row, dict) and row.get("status") == IN_FLIGHT:
                                begin = row
                time.sleep(0.02)
            assert begin is not None and begin["model"] == "small"
            row = _interrupted(begin)
            assert row["model"] == "small" and row["status"] == "interrupted"
            (s,) = settlements([row])
            assert s.models == {"small": pytest.approx(row["cost_usd"])} and s.cost_usd > 0
        finally:
            up.set(latency_s=0.0)
            sent.join()
            gw.stop()
