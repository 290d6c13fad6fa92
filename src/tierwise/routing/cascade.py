"""Running a cascade tier: small → big, each rung's answer judged by its gate.

Cost is every rung tried (plus verifier calls), booked as each call returns. A rung that errors after its retries,
or whose gate errors, escalates; an empty or length-truncated answer always escalates. The last rung's answer is
served as it is (if it fails outright, the tier's fallback model is the last resort).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from tierwise.config.schema import CascadeConfig
from tierwise.routing.cascade_host import CascadeHost
from tierwise.routing.failure import RequestFailed, empty_length
from tierwise.routing.gates import Gate, GateContext, RungAnswer, build_gate, hard_fail
from tierwise.routing.gates.base import Ask, clears
from tierwise.types import JSON, Completion, ErrorKind, UpstreamError

if TYPE_CHECKING:
    from tierwise.routing.executor import Call

log = logging.getLogger("tierwise.cascade")

def gates_for(ex: CascadeHost, cascade: CascadeConfig) -> list[Gate | None]:
    """Gate objects per rung, built once per cascade config and executor (learned gates load their artifact once).

    The cache lives on the executor and holds the config object itself, so an id can never be reused by another
    config while its entry exists (a new config means a new service, hence a new cache)."""
    hit = ex.gate_cache.get(id(cascade))
    if hit is None or hit[0] is not cascade:
        hit = ex.gate_cache[id(cascade)] = (cascade, [build_gate(r.gate) if r.gate else None for r in cascade.rungs])
    return hit[1]


async def run_cascade(ex: CascadeHost, call: Call, start_rung: int = 0) -> Completion:
    assert call.cascade is not None
    if call.cascade.hedge_after_ms is not None:  # the next rung may start before this one answers
        from tierwise.routing.hedge import run_hedged

        return await run_hedged(ex, call, start_rung, call.cascade.hedge_after_ms)
    rungs = call.cascade.rungs
    gates = gates_for(ex, call.cascade)
    rec = call.record
    chain = tuple(r.model for r in rungs)
    history: list[RungAnswer] = []
    last_err: UpstreamError | None = None
    # The tier's fallback model (if it is not a rung) is the last resort after the rungs.
    rest = [m for m in call.decision.candidates if m not in set(chain)]
    for i in range(start_rung, len(rungs)):
        model = rungs[i].model
        is_last = i == len(rungs) - 1
        after = [*chain[i + 1 :], *rest]  # each rung (and its verifier) leaves these their share of the deadline
        gate = None if is_last else gates[i]
        if model in call.excluded:
            rec.notes.append(f"rung {i} ({model}) left out: {call.excluded[model]}")
            continue
        if not is_last and ex.cooling_down(model):
            rec.notes.append(f"rung {i} ({model}) cooling down: skipped")
            continue
        body = ex.rung_body(call, model)
        if gate is not None:
            gate.prepare(body)
        try:
            result, att = await ex.call_model(call, model, body, after)
        except UpstreamError as err:
            last_err = err
            if not is_last:
                rec.escalations += 1
            continue
        if gate is None:
            if empty_length(result):
                last_err = ex.empty_length(call, model, att)
                break
            ex.serve(call, model, att.latency_ms)
            return result
        ctx = GateContext(call.body, result, model, _asker(ex, call, after), i, chain, list(history), call.prior)
        confidence = await _judge(call, gate, ctx)
        att.confidence = confidence
        history.append(RungAnswer(model, result.text, _lp_conf(result)))
        if clears(confidence, gate.threshold):
            ex.serve(call, model, att.latency_ms)
            return result
        att.outcome = "escalated"
        rec.escalations += 1
    # Every rung failed outright: the tier's fallback model (if it is not a rung) is the last resort.
    if rest:
        return await ex.fallback_chain(call, rest)
    raise RequestFailed(last_err or UpstreamError(ErrorKind.CONNECTION, "no cascade rung answered"), rec.attempts)


def _asker(ex: CascadeHost, call: Call, after: list[str]) -> Ask:
    """Model calls a gate makes (verifiers) go through the executor, so they are retried and booked, and leave the
    rungs after the judged one their share of the deadline."""

    async def ask(verifier: str, body: JSON) -> Completion:
        b = ex.rung_body(call, verifier, body)
        completion, att = await ex.call_model(call, verifier, b, after)
        att.outcome = "verifier"
        return completion

    return ask


def _lp_conf(c: Completion) -> float | None:
    return math.exp(min(0.0, sum(c.logprobs) / len(c.logprobs))) if c.logprobs else None


async def _judge(call: Call, gate: Gate, ctx: GateContext) -> float:
    """The gate's confidence; 0 for an empty/truncated answer or when the gate itself fails."""
    model, result = ctx.model, ctx.completion
    if len(result.body.get("choices") or []) <= 1:  # judge a lone answer's hard failures before paying a verifier
        why = hard_fail(result)
        if why is not None:
            call.record.notes.append(f"{model}: {why}: escalated")
            return 0.0
    try:
        confidence = float(await gate.confidence(ctx))
    except RequestFailed as exc:
        if exc.deadline_hit:
            raise
        call.record.notes.append(f"verifier for {model} failed ({exc.last.kind.value}): escalated")
        return 0.0
    except Exception as exc:  # a gate that errors escalates, never passes
        call.record.notes.append(f"gate on {model} failed ({type(exc).__name__}: {str(exc)[:120]}): escalated")
        return 0.0
    why = hard_fail(result)
    if why is not None:
        call.record.notes.append(f"{model}: {why}: escalated")
        return 0.0
    return min(1.0, max(0.0, confidence))
