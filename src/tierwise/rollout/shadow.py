"""Shadow mode: the candidate policy decides every request in parallel; the served answer never waits for it.

:meth:`ShadowRunner.observe` is called by the service once the served request's plan is made. It only copies what
it needs and schedules a task; everything else — the candidate's routing decision (the same
:class:`~tierwise.routing.engine.RoutingEngine` code, given the candidate's tiers), its cost estimate, and for a
sampled share the candidate call itself — runs in that task, after the served request has moved on. Any failure in
it is counted and logged (without prompt text) and goes no further: a shadow cannot delay, change or fail what the
client gets.

Isolation from the served path:
- the candidate's calls use their own session pins and model health (a hanging candidate model does not put the
  incumbent's copy of it in cooldown, nor re-pin anyone's session); they share only the providers' connection pools,
  bounded by ``max_in_flight``;
- a candidate call is abandoned after ``timeout_s``; when abandoned or failed mid-flight its pre-call estimate is
  booked, as the service does for hang-ups (the upstream may bill it);
- shadow calls are booked on the ledger as their own rows (``principal: shadow:<name>``, tags ``billing: shadow``
  and ``shadow_of: <request id>``), against a daily budget of their own (per gateway process);
- records wait in a bounded queue and are written by a background flush on a worker thread; a full queue drops
  records (counted in :attr:`ShadowRunner.dropped`) instead of growing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from tierwise.rollout.arms_store import ArmsStore, ShadowRecord
from tierwise.rollout.candidate import ShadowConfig, candidate_config
from tierwise.routing.engine import Decision, RouteRequest, RoutingEngine
from tierwise.routing.executor import Call, Executor, RequestFailed
from tierwise.state import MemoryHealth, MemorySessionPins
from tierwise.types import JSON, Cost, LedgerRecord

if TYPE_CHECKING:
    from tierwise.service import Predict, Tierwise

log = logging.getLogger("tierwise.shadow")

_FLUSH_S = 0.25


class ShadowRunner:
    """Runs one ``shadow:`` candidate beside a :class:`~tierwise.service.Tierwise`."""

    def __init__(self, svc: Tierwise, scfg: ShadowConfig, store: ArmsStore, *, rng: random.Random | None = None) -> None:
        from tierwise.service import _embedding_predictor, load_routers

        self.svc, self.scfg, self.store = svc, scfg, store
        self.cfg = candidate_config(svc.cfg, scfg.tiers)
        routers = {t: r for t, r in load_routers(self.cfg).items() if t in scfg.tiers}
        self.engine = RoutingEngine(self.cfg, svc.pins, svc.health, svc.engine.classifier, routers)
        self._predictors: dict[str, Predict] = {t: _embedding_predictor(r) for t, r in routers.items()}
        pins = MemorySessionPins(self.cfg.sessions.ttl_s, 1)
        health = MemoryHealth(self.cfg.retry.cooldown_failures, self.cfg.retry.cooldown_s)
        self.executor = Executor(self.cfg, svc.providers, svc.prices, pins, health)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tierwise-shadow")  # candidate router predictions
        self._rng = rng or random.Random()
        self._queue: list[ShadowRecord] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._day = -1
        self._spent = 0.0
        self._reserved = 0.0
        self.dropped = 0  # records dropped because the queue was full
        self.failed = 0  # shadow decisions that raised (a bug or a bad candidate), counted and logged
        self.write_errors = 0

    # -- the served path's only entry point: cheap, synchronous, never raises --------------------------------------
    def observe(self, route: RouteRequest, body: JSON, call: Call) -> None:
        """Schedule the candidate's decision for a request the incumbent has just planned."""
        try:
            tier = call.decision.tier
            if tier is None or not self.scfg.enabled:
                return  # a direct model request: there is no policy to compare
            snapshot = (dataclasses.replace(route, tags=dict(route.tags)), dict(body), call.record.id,
                        tier, call.decision.tier_source, list(call.decision.candidates), dict(call.excluded))
            task = asyncio.get_running_loop().create_task(self._shadow(*snapshot))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        except Exception as exc:  # never the served request's problem
            self.failed += 1
            log.warning("shadow %s: could not schedule: %s", self.scfg.name, type(exc).__name__)

    # -- background -------------------------------------------------------------------------------------------------
    async def _shadow(self, route: RouteRequest, body: JSON, request_id: str, tier: str, source: str,
                      served_plan: list[str], excluded: dict[str, str]) -> None:
        await asyncio.sleep(0)  # the served request goes first
        try:
            rec, decision = await self._decide(route, body, request_id, tier, source, served_plan, excluded)
            if rec.shadow_model is not None and self._rng.random() < self.scfg.call_share:
                await self._call(rec, body, decision)
            self._enqueue(rec)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed += 1
            log.warning("shadow %s: decision for %s failed: %s", self.scfg.name, request_id, type(exc).__name__)

    async def _decide(self, route: RouteRequest, body: JSON, request_id: str, tier: str, source: str,
                      served_plan: list[str], excluded: dict[str, str]) -> tuple[ShadowRecord, Decision]:
        svc = self.svc
        if tier in self._predictors:
            text = _prompt(body)
            loop = asyncio.get_running_loop()
            route.predicted = await loop.run_in_executor(self._pool, self._predictors[tier], text)
        elif tier in self.scfg.tiers:
            route.predicted = None  # the incumbent's prediction belongs to the incumbent's router
        estimator = svc.prices.estimator(body, tier)
        decision = self.engine.decide(route, body, time.time(), estimator, choice=(tier, source),
                                      excluded=excluded or None)
        first = decision.candidates[0] if decision.candidates else None
        tcfg = self.cfg.tiers[tier]
        if first is not None and tcfg.cascade is not None and tcfg.cascade.start is not None:
            first = tcfg.cascade.rungs[self.engine.start_rung(tier, route.predicted)].model
        served = served_plan[0] if served_plan else None
        return ShadowRecord(
            request_id=request_id, ts=time.time(), name=self.scfg.name, tier=tier, served_model=served,
            served_estimated_usd=estimator(served) if served else 0.0, shadow_tier=decision.tier,
            shadow_model=first, shadow_plan=list(decision.candidates),
            shadow_estimated_usd=estimator(first) if first else 0.0, same=first == served), decision

    async def _call(self, rec: ShadowRecord, body: JSON, decision: Decision) -> None:
        """Send the request to the candidate's plan (non-streamed), book it as shadow spend, record the outcome."""
        now = time.time()
        day = int(now // 86400)
        if day != self._day:
            self._day, self._spent = day, 0.0
        if self._in_flight >= self.scfg.max_in_flight:
            rec.call_status = "skipped:max_in_flight"
            return
        if self._spent + self._reserved + rec.shadow_estimated_usd > self.scfg.daily_budget_usd:
            rec.call_status = "skipped:budget"
            return
        sbody = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        ledger_rec = LedgerRecord(
            id=f"{rec.request_id}-shadow", ts=now, principal=f"shadow:{self.scfg.name}", tier=rec.tier,
            tier_source="shadow", requested_model=body.get("model") if isinstance(body.get("model"), str) else None,
            tags={"billing": "shadow", "shadow_of": rec.request_id}, estimated_cost_usd=rec.shadow_estimated_usd)
        tier_cfg = self.cfg.tiers[rec.tier] if rec.tier is not None else None
        scall = Call(decision, sbody, ledger_rec, self.executor.clock() + self.scfg.timeout_s, None,
                     tier_cfg.cascade if tier_cfg is not None else None)
        try:
            self.svc.ledger.begin(ledger_rec)  # journaled before any money is spent, like a served request
        except Exception:
            rec.call_status = "skipped:ledger_unwritable"
            return
        self._in_flight += 1
        self._reserved += rec.shadow_estimated_usd
        started = time.perf_counter()
        rec.called = True
        try:
            await asyncio.wait_for(self.executor.complete(scall), self.scfg.timeout_s)
            ledger_rec.status, rec.call_status = "ok", "ok"
        except TimeoutError:
            ledger_rec.status, ledger_rec.http_status, rec.call_status = "error", 504, "timeout"
            ledger_rec.error = rec.error = f"shadow call abandoned after {self.scfg.timeout_s:g}s"
        except asyncio.CancelledError:
            ledger_rec.status, ledger_rec.http_status = "client_cancelled", 499
            ledger_rec.error = "gateway shut down during the shadow call"
            self._book_estimate(ledger_rec)
            self.svc.ledger.submit(ledger_rec)
            raise
        except RequestFailed as exc:  # the executor's own deadline (timeout_s) or every model of the plan failed
            timed_out = exc.deadline_hit
            ledger_rec.status, ledger_rec.http_status = "error", 504 if timed_out else 502
            rec.call_status = "timeout" if timed_out else "error"
            ledger_rec.error = rec.error = str(exc)[:500]
        except Exception as exc:
            ledger_rec.status, ledger_rec.http_status, rec.call_status = "error", 502, "error"
            ledger_rec.error = rec.error = f"{type(exc).__name__}: {str(exc)[:400]}"
        finally:
            self._in_flight -= 1
            self._reserved -= rec.shadow_estimated_usd
        if ledger_rec.status != "ok":
            self._book_estimate(ledger_rec)
        ledger_rec.latency_ms = rec.call_latency_ms = (time.perf_counter() - started) * 1000
        ledger_rec.model = rec.call_model = ledger_rec.model or (
            ledger_rec.attempts[-1].model if ledger_rec.attempts else rec.shadow_model)
        rec.call_cost_usd = ledger_rec.cost.total_usd
        self._spent += rec.call_cost_usd
        self.svc.ledger.submit(ledger_rec)

    @staticmethod
    def _book_estimate(rec: LedgerRecord) -> None:
        if rec.cost.total_usd <= 0 and rec.estimated_cost_usd > 0:
            rec.cost = Cost(estimated_usd=rec.estimated_cost_usd)
            rec.notes.append("shadow call abandoned or failed in flight: booked at its pre-call estimate")

    def _enqueue(self, rec: ShadowRecord) -> None:
        if len(self._queue) >= self.scfg.queue_max:
            self.dropped += 1
            return
        self._queue.append(rec)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_S)
            await self.flush()

    async def flush(self) -> None:
        """Write queued records (on a worker thread); a failed write is counted and the batch dropped."""
        if not self._queue:
            return
        batch, self._queue = self._queue, []
        try:
            await asyncio.to_thread(self.store.write_shadow, batch)
        except Exception as exc:
            self.write_errors += 1
            log.error("shadow %s: %d records not written: %s", self.scfg.name, len(batch), exc)

    async def aclose(self) -> None:
        """Cancel candidate calls still running (they are booked), then write what is queued."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self.flush()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _prompt(body: JSON) -> str:
    from tierwise.requests import prompt_text

    return prompt_text(body, 1 << 30)


def shadow_summary_rows(store: ArmsStore, name: str, since: float, until: float) -> Sequence[tuple[object, ...]]:
    """Per-tier shadow totals for ``tierwise shadow report``."""
    return store.shadow_summary(name, since, until)
