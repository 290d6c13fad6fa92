"""Hedged cascades (``cascade.hedge_after_ms``): do not wait out a slow rung before trying the next.

Why: a cascade pays the cheap rung's whole answer before it escalates (seed 001). When the cheap rung is slow on a
request — a queue, a long answer — the escalation it may end in starts late. With a hedge budget ``H``, when the
newest running rung has not answered within ``H`` ms, the next rung starts beside it (at most two rungs in flight).

Which answer is served: the first one that passes — a gated rung's answer when its gate clears, the last rung's
answer by definition (it has no gate). Answers are judged as they arrive, so a higher rung's answer may be judged
before a lower one's (its gate then sees no history of the lower rung). A rung whose gate fails escalates as in a
plain cascade; while the other rung is still running, that one is awaited; when none is, the next rung starts.

Booking: every attempt is on the ledger record. An answer that arrived but was not served keeps its real cost
(``escalated``, or ``hedge_unused`` when it came in the same instant as the served one); a call still in flight when
another was served is cancelled and booked as ``hedge_cancelled`` at tierwise's pre-call estimate (the upstream may
bill it; no usage came back). The hedge costs money, never correctness: with ``H`` above every rung's latency it is a
plain cascade.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from tierwise.routing.cascade_host import CascadeHost
from tierwise.routing.failure import RequestFailed, empty_length
from tierwise.routing.gates import GateContext, RungAnswer
from tierwise.routing.gates.base import clears
from tierwise.types import Attempt, Completion, ErrorKind, UpstreamError

if TYPE_CHECKING:
    from tierwise.routing.executor import Call

_Outcome = tuple[Completion, Attempt]


class _Flight:
    """The rungs in flight: start them in order (skipping excluded / cooling ones, as a plain cascade does)."""

    def __init__(self, ex: CascadeHost, call: Call, start_rung: int, hedge_ms: float) -> None:
        from tierwise.routing.cascade import gates_for

        assert call.cascade is not None
        self.ex, self.call, self.hedge_ms = ex, call, hedge_ms
        self.rungs = call.cascade.rungs
        self.gates = gates_for(ex, call.cascade)
        self.chain = tuple(r.model for r in self.rungs)
        self.rest = [m for m in call.decision.candidates if m not in set(self.chain)]
        self.todo = list(range(start_rung, len(self.rungs)))
        self.running: dict[asyncio.Future[_Outcome], tuple[int, float]] = {}
        self.loop = asyncio.get_running_loop()

    def is_last(self, i: int) -> bool:
        return i == len(self.rungs) - 1

    def after(self, i: int) -> list[str]:
        return [*self.chain[i + 1 :], *self.rest]

    def start_next(self, hedging: int | None = None) -> bool:
        """Start the next eligible rung; False when none is left."""
        rec = self.call.record
        while self.todo:
            i = self.todo.pop(0)
            model = self.chain[i]
            if model in self.call.excluded:
                rec.notes.append(f"rung {i} ({model}) left out: {self.call.excluded[model]}")
                continue
            if not self.is_last(i) and self.ex.cooling_down(model):
                rec.notes.append(f"rung {i} ({model}) cooling down: skipped")
                continue
            body = self.ex.rung_body(self.call, model)
            gate = None if self.is_last(i) else self.gates[i]
            if gate is not None:
                gate.prepare(body)
            task = asyncio.ensure_future(self.ex.call_model(self.call, model, body, self.after(i)))
            self.running[task] = (i, self.loop.time())
            if hedging is not None:
                rec.notes.append(f"hedge: rung {i} ({model}) started beside rung {hedging} ({self.chain[hedging]}), "
                                 f"which had not answered in {self.hedge_ms:g} ms")
            return True
        return False

    def hedge_wait(self) -> float | None:
        """Seconds until the newest running rung's hedge budget runs out (None: no hedge to start)."""
        if len(self.running) >= 2 or not self.todo:
            return None
        i, t0 = max(self.running.values())
        if self.is_last(i):
            return None
        return max(0.0, t0 + self.hedge_ms / 1000.0 - self.loop.time())

    async def abandon(self, served: tuple[int, str] | None) -> None:
        """Cancel what is still running and book it; mark answers that arrived but were not served."""
        why = f"rung {served[0]} ({served[1]}) served first" if served else "the request ended first"
        for task, (i, t0) in list(self.running.items()):
            if task.done():
                if not task.cancelled() and task.exception() is None:
                    task.result()[1].outcome = "hedge_unused"  # its real cost is already booked
                continue
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            if task.cancelled():
                self.ex.book_cancelled(self.call, self.chain[i], (self.loop.time() - t0) * 1000, f"cancelled: {why}")
        self.running.clear()


async def run_hedged(ex: CascadeHost, call: Call, start_rung: int, hedge_ms: float) -> Completion:
    """A cascade whose next rung starts when the current one is slower than ``hedge_ms`` (see the module text)."""
    from tierwise.routing.cascade import _asker, _judge, _lp_conf

    f = _Flight(ex, call, start_rung, hedge_ms)
    rec = call.record
    history: list[RungAnswer] = []
    last_err: UpstreamError | None = None
    served: tuple[int, str] | None = None
    try:
        f.start_next()
        while f.running:
            done, _ = await asyncio.wait(f.running, timeout=f.hedge_wait(), return_when=asyncio.FIRST_COMPLETED)
            if not done:
                f.start_next(hedging=max(f.running.values())[0])
                continue
            for task in sorted(done, key=lambda t: f.running[t][0]):
                i, _t0 = f.running.pop(task)
                model = f.chain[i]
                try:
                    result, att = task.result()
                except UpstreamError as err:
                    last_err = err
                    if not f.is_last(i):
                        rec.escalations += 1
                    continue
                gate = None if f.is_last(i) else f.gates[i]
                if gate is None:
                    if empty_length(result):
                        last_err = ex.empty_length(call, model, att)
                        continue
                    served = (i, model)
                else:
                    ctx = GateContext(call.body, result, model, _asker(ex, call, f.after(i)), i, f.chain,
                                      list(history), call.prior)
                    att.confidence = confidence = await _judge(call, gate, ctx)
                    history.append(RungAnswer(model, result.text, _lp_conf(result)))
                    if clears(confidence, gate.threshold):
                        served = (i, model)
                    else:
                        att.outcome = "escalated"
                        rec.escalations += 1
                if served is not None:
                    await f.abandon(served)
                    ex.serve(call, model, att.latency_ms)
                    return result
            if not f.running:
                f.start_next()
    finally:
        if f.running:
            await f.abandon(served)
    if f.rest:
        return await ex.fallback_chain(call, f.rest)
    raise RequestFailed(last_err or UpstreamError(ErrorKind.CONNECTION, "no cascade rung answered"), rec.attempts)
