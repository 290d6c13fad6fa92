"""The executor: carries out a routing :class:`Decision` against providers.

Retries with exponential backoff and full jitter on 429/5xx/timeouts/connection errors (honouring ``Retry-After``),
cooldowns for models that keep failing, a per-request deadline, fallback down the plan, session (re-)pinning and
reasoning completion floors. Every step lands in the request's :class:`LedgerRecord`, whatever happens.

Errors that are the operator's (the upstream refused tierwise's key: :attr:`ErrorKind.AUTH`; it has no such model
or endpoint: :attr:`ErrorKind.NOT_FOUND`) are not retried on that model but fall back and count toward its cooldown;
only a request the upstream rejected as the caller's fault (:attr:`ErrorKind.CLIENT`) ends the request at once.

**Sharing the deadline.** Retries must not eat the time of the models after the one being tried (three timed-out
tries of a slow primary used to spend a whole 6 s deadline, so the healthy fallback never got its turn). When a
model's first try starts with ``R`` seconds of the deadline left and ``k`` models after it, it gets a *budget* of
``R - reserve``, where ``reserve = min(S, R·k/(k+1))`` and ``S`` is ``retry.fallback_reserve_s`` if set, else the
provider timeout of the next model not cooling down — the next model's turn, but never more than the later models'
fair share, so the model being tried always has at least ``R/(k+1)``. Every try on the model runs with
``min(provider timeout, budget left)``, and a retry starts only while at least half its provider timeout still fits
in the budget after the backoff; otherwise the executor falls back at once (and notes it). Fast failures (a 500 in
milliseconds) are thus still retried; slow ones (timeouts) stop once they would eat the next model's turn. The last
model has no one to leave time for: its budget is the whole deadline, and it retries while the backoff fits in it.
``retry.fallback_reserve_s: 0`` turns the sharing off (every model is then treated like the last, as before).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from tierwise.config.schema import CascadeConfig, TierwiseConfig
from tierwise.pricing import PriceBook
from tierwise.providers.base import Provider
from tierwise.routing.engine import Decision
from tierwise.routing.failure import RequestFailed
from tierwise.routing.failure import empty_length as _empty_length
from tierwise.state.protocols import HealthState, SessionPins
from tierwise.types import (
    JSON,
    Attempt,
    Completion,
    Cost,
    ErrorKind,
    LedgerRecord,
    StreamChunk,
    UpstreamError,
)

Sleep = Callable[[float], Awaitable[None]]
_MIN_RETRY_SHARE = 0.5  # a retry needs this share of its provider timeout left in the model's deadline budget
T = TypeVar("T")
Clock = Callable[[], float]


@dataclass(slots=True)
class Call:
    """One request in flight: its plan, body, record and deadline."""

    decision: Decision
    body: JSON
    record: LedgerRecord
    deadline: float  # clock() value after which no new attempt starts
    session_id: str | None = None
    cascade: CascadeConfig | None = None  # set when the tier's policy is a cascade
    prebooked: bool = False  # a synthesised stream whose calls were already booked (cascade answers)
    start_rung: int = 0  # a cascade's first rung to call (a start router may skip cheap rungs)
    prior: dict[str, float] | None = None  # a learned router's predicted quality per model, when the tier has one
    excluded: Mapping[str, str] = field(default_factory=dict)  # models governance left out, with why (cascade rungs)
    budget: str | None = None  # the budget step that degraded the plan, for the x-tierwise-budget header
    reserved: bool = False  # the state backend admitted this request: it awaits a settle
    new_pin: str | None = None  # the session was (re-)pinned to this model: shared before the answer (Governor.share_pin)
    cooldowns: list[str] = field(default_factory=list)  # models this request put in cooldown (shared at settle)
    started: float = field(default_factory=time.perf_counter)  # for the request's total latency


def apply_completion_floor(body: JSON, floor: int) -> str | None:
    """Raise a too-small completion budget to the reasoning floor; return a ledger note when it changed."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and value < floor:
            body[key] = floor
            return f"{key} raised from {value} to reasoning floor {floor}"
    return None


_NOT_A_FAILURE = frozenset({"ok", "escalated", "verifier", "hedge_cancelled", "hedge_unused"})


def count_fallbacks(attempts: list[Attempt], served: str | None) -> int:
    """Models passed over — they failed or were cooling down — for another model that was then tried.

    A request that tried one model and failed has 0 fallbacks (nothing was fallen back to), one that tried two and
    both failed has 1, and one where the second served has 1. The served model never counts; cascade escalations
    (``escalated``) and verifier calls are counted apart, as escalations, and are not failures."""
    passed: set[str] = set()
    pending: set[str] = set()  # failed or skipped, and no other model tried since
    for a in attempts:
        if a.outcome != "skipped_cooldown":  # a model actually tried: every other pending model was passed over
            passed.update(m for m in pending if m != a.model)
            pending.intersection_update((a.model,))
        if a.outcome not in _NOT_A_FAILURE:
            pending.add(a.model)
    if served is not None:  # a stream's served attempt is booked when it ends, after its headers were sent
        passed.update(pending)
    return len(passed - {served})


class Executor:
    def __init__(
        self,
        cfg: TierwiseConfig,
        providers: dict[str, Provider],
        prices: PriceBook,
        pins: SessionPins,
        health: HealthState,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.providers = providers  # keyed by provider name
        self.prices = prices
        self.pins = pins
        self.health = health
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.gate_cache: dict[int, tuple[CascadeConfig, list]] = {}  # see routing.cascade.gates_for

    # -- the cascade's interface (tierwise.routing.cascade_host.CascadeHost) ----------------------------------------
    def rung_body(self, call: Call, model: str, request: JSON | None = None) -> JSON:
        return self._prepare_for(call, model, call.body if request is None else request)

    def cooling_down(self, model: str) -> bool:
        return self.health.cooling_down(model, time.time())

    def serve(self, call: Call, model: str, latency_ms: float | None) -> None:
        self._succeed(call, model, latency_ms)

    def book_cancelled(self, call: Call, model: str, latency_ms: float, why: str) -> Attempt:
        """A call abandoned in flight (a hedged cascade served another rung first): the upstream may bill it anyway,
        and no usage came back, so it is booked at tierwise's pre-call estimate, marked as an estimate."""
        usage = self.prices.estimator(call.body, call.record.tier).usage(model)
        est = self.prices.cost(model, usage).total_usd
        att = Attempt(model, "hedge_cancelled", None, f"{why}; cost booked at tierwise's pre-call estimate",
                      latency_ms, 0, usage, est)
        call.record.attempts.append(att)
        call.record.cost = call.record.cost + Cost(estimated_usd=est)
        return att

    # -- shared pieces ---------------------------------------------------------------------------------------------
    def _prepare(self, call: Call, model: str) -> JSON:
        return self._prepare_for(call, model, call.body)

    def _prepare_for(self, call: Call, model: str, request: JSON) -> JSON:
        """The upstream body for ``model``: a shallow copy with the upstream name, the output budget clamped to the
        model's ``max_output`` (a tier admits the largest limit among its models; the smaller ones must not be sent
        a budget they refuse), and the reasoning floor."""
        mcfg = self.cfg.models[model]
        body = dict(request)
        body["model"] = mcfg.upstream or model
        if mcfg.max_output is not None:
            for key in ("max_completion_tokens", "max_tokens"):
                value = body.get(key)
                if isinstance(value, int) and value > mcfg.max_output:
                    body[key] = mcfg.max_output
                    call.record.notes.append(f"{model}: {key} lowered from {value} to its max_output {mcfg.max_output}")
        if mcfg.reasoning:
            note = apply_completion_floor(body, mcfg.completion_floor)
            if note:
                call.record.notes.append(f"{model}: {note}")
        return body

    def _provider(self, model: str) -> tuple[Provider, float]:
        mcfg = self.cfg.models[model]
        return self.providers[mcfg.provider], self.cfg.providers[mcfg.provider].timeout_s

    def _backoff_s(self, retry: int, err: UpstreamError) -> float | None:
        """Seconds to wait before retry number ``retry`` (1-based); None means stop retrying this model."""
        rc = self.cfg.retry
        if retry > rc.max_retries or not err.kind.retryable:
            return None
        if err.retry_after_s is not None:
            return None if err.retry_after_s > rc.max_retry_after_s else err.retry_after_s
        cap = min(rc.max_delay_ms, rc.base_delay_ms * (2 ** (retry - 1))) / 1000.0
        return self.rng.uniform(0.0, cap)

    def _fail(self, call: Call, model: str, err: UpstreamError, started: float, retry: int) -> None:
        call.record.attempts.append(
            Attempt(model, err.kind.value, err.status, err.message[:300], (self.clock() - started) * 1000, retry)
        )
        if err.kind is not ErrorKind.CLIENT and self.health.record_failure(model, time.time()):
            call.record.notes.append(f"{model}: cooldown {self.cfg.retry.cooldown_s:g}s after repeated failures")
            call.cooldowns.append(model)

    def _succeed(self, call: Call, model: str, ttft_ms: float | None) -> None:
        self.health.record_success(model, ttft_ms, time.time())
        rec = call.record
        rec.model = model
        if call.session_id and call.cascade is None:  # a cascade decides per request: pins would bypass gates
            pinned = call.decision.pinned
            if pinned != model:
                self.pins.set(call.session_id, model, time.time())
                call.new_pin = model
                if pinned is not None:
                    why = next((a.outcome for a in reversed(rec.attempts) if a.model == pinned), "unavailable")
                    rec.notes.append(f"session re-pinned from {pinned} to {model}: {pinned} {why}")

    def _skip_cooling(self, call: Call, model: str, is_last: bool) -> bool:
        if self.health.cooling_down(model, time.time()) and not is_last:
            call.record.attempts.append(Attempt(model, "skipped_cooldown"))
            return True
        return False

    def _remaining(self, call: Call) -> float:
        return call.deadline - self.clock()

    def _budget_end(self, call: Call, after: Sequence[str]) -> float:
        """The clock time until which a model's tries may run, leaving the models ``after`` it their turn (see
        "Sharing the deadline" in the module docstring)."""
        remaining = self._remaining(call)
        if not after or remaining <= 0:
            return call.deadline
        reserve = self.cfg.retry.fallback_reserve_s
        if reserve is None:
            now = time.time()
            nxt = next((m for m in after if not self.health.cooling_down(m, now)), after[-1])
            reserve = self._provider(nxt)[1]
        k = len(after)
        return call.deadline - min(reserve, remaining * k / (k + 1))

    def _deadline_error(self, call: Call) -> RequestFailed:
        err = UpstreamError(
            ErrorKind.TIMEOUT, f"request deadline of {self.cfg.server.request_deadline_s:g}s exceeded", status=504
        )
        return RequestFailed(err, call.record.attempts, deadline_hit=True)

    # -- non-streaming ---------------------------------------------------------------------------------------------
    def _book_ok(self, call: Call, model: str, result: Completion, started: float, retry: int) -> Attempt:
        """Record a successful call and charge what it cost (the provider's billed figure when it reports one)."""
        latency = (self.clock() - started) * 1000
        if result.billed_usd is not None:
            cost = Cost(output_usd=result.billed_usd)
        else:
            cost = self.prices.cost(model, result.usage)
        att = Attempt(model, "ok", 200, None, latency, retry, result.usage, cost.total_usd)
        call.record.attempts.append(att)
        call.record.usage = call.record.usage + result.usage
        call.record.cost = call.record.cost + cost
        return att

    async def _with_retries(
        self, call: Call, model: str, attempt: Callable[[float], Awaitable[T]], after: Sequence[str] = ()
    ) -> tuple[T, float, int]:
        """Run ``attempt(timeout_s)`` against one model with retries, backoff and the request deadline.

        ``after`` are the models that may be tried after this one: its tries stay within its share of the deadline
        (module docstring, "Sharing the deadline"). Returns (result, start time of the successful try, its retry
        number); books every failed try. Raises the last :class:`UpstreamError` when retries are exhausted or the
        model's share is spent (the caller falls back), :class:`RequestFailed` for a client error or the deadline
        (nothing else to try)."""
        _, timeout_s = self._provider(model)
        budget_end = self._budget_end(call, after)
        retry = 0
        while True:
            remaining = self._remaining(call)
            if remaining <= 0:
                raise self._deadline_error(call)
            started = self.clock()
            try:
                return await attempt(min(timeout_s, budget_end - started)), started, retry
            except UpstreamError as err:
                self._fail(call, model, err, started, retry)
                if err.kind is ErrorKind.CLIENT:
                    raise RequestFailed(err, call.record.attempts) from None
                retry += 1
                wait = self._backoff_s(retry, err)
                if wait is None:
                    raise
                if budget_end < call.deadline:  # time is kept for the models after this one
                    left = budget_end - self.clock() - wait
                    if left < timeout_s * _MIN_RETRY_SHARE:
                        call.record.notes.append(
                            f"{model}: retry {retry} not started: {max(left, 0.0):.3g}s of its deadline share left, "
                            "the models after it get their turn"
                        )
                        raise
                elif wait >= self._remaining(call):
                    raise self._deadline_error(call) from None
                await self.sleep(wait)

    async def call_model(
        self, call: Call, model: str, body: JSON, after: Sequence[str] = ()
    ) -> tuple[Completion, Attempt]:
        """One model, with retries and backoff, leaving the models ``after`` it their share of the deadline; books
        every attempt. Raises the last :class:`UpstreamError`."""
        provider, _ = self._provider(model)
        result, started, retry = await self._with_retries(
            call, model, lambda timeout: provider.complete(body, timeout_s=timeout), after
        )
        return result, self._book_ok(call, model, result, started, retry)

    async def complete(self, call: Call) -> Completion:
        """Non-streaming request: a cascade tier runs its rungs; any other plan falls back down its candidates."""
        if call.cascade is not None:
            from tierwise.routing.cascade import run_cascade

            return await run_cascade(self, call, call.start_rung)
        return await self.fallback_chain(call, call.decision.candidates)

    async def fallback_chain(self, call: Call, candidates: list[str]) -> Completion:
        last: UpstreamError | None = None
        for i, model in enumerate(candidates):
            if self._skip_cooling(call, model, i == len(candidates) - 1):
                continue
            try:
                result, att = await self.call_model(call, model, self._prepare(call, model), candidates[i + 1 :])
            except UpstreamError as err:
                last = err
                continue
            if _empty_length(result):
                last = self.empty_length(call, model, att)
                continue
            self._succeed(call, model, att.latency_ms)
            return result
        if last is None:
            last = UpstreamError(ErrorKind.CONNECTION, "no model could be tried")
        raise RequestFailed(last, call.record.attempts)

    def empty_length(self, call: Call, model: str, att: Attempt) -> UpstreamError:
        """An empty length-truncated answer is a failure (still billed, and booked as such)."""
        att.outcome = ErrorKind.EMPTY_LENGTH.value
        att.error = "finish_reason=length with empty content"
        if self.health.record_failure(model, time.time()):
            call.cooldowns.append(model)
        return UpstreamError(
            ErrorKind.EMPTY_LENGTH,
            f"model '{model}' hit its completion limit before producing any content "
            "(finish_reason=length, empty answer); raise max_tokens",
            status=502,
        )

    # -- streaming -------------------------------------------------------------------------------------------------
    async def open_stream(self, call: Call) -> tuple[str, StreamChunk, AsyncIterator[StreamChunk], float]:
        """Try candidates until one yields its first chunk; return (model, first chunk, rest, start time).

        Failures before the first chunk fall back like non-streaming calls. After it, the client has bytes and a
        failure can only end the stream (the gateway sends an error event and records what was received).
        """
        if call.cascade is not None and not call.cascade.stream_first_rung:
            # The gate needs the whole answer: run the cascade, then stream the served answer.
            from tierwise.routing.cascade import run_cascade
            from tierwise.routing.synth_stream import completion_chunks

            started = self.clock()
            result = await run_cascade(self, call, call.start_rung)
            call.record.ttft_ms = (self.clock() - started) * 1000
            call.prebooked = True
            chunks = completion_chunks(result)
            return call.record.model or "", chunks[0], _aiter(chunks[1:]), started
        if call.cascade is not None:
            call.record.notes.append("stream_first_rung: first rung streamed live without its gate")
        last: UpstreamError | None = None
        cands = call.decision.candidates
        for i, model in enumerate(cands):
            if self._skip_cooling(call, model, i == len(cands) - 1):
                continue
            provider, _ = self._provider(model)
            body = self._prepare(call, model)

            async def first_chunk(timeout: float) -> tuple[StreamChunk, AsyncIterator[StreamChunk]]:
                """Open the stream and wait, at most ``timeout`` in all, for its first chunk with substance.

                Upstreams send a role-only chunk (OpenAI-compatible servers) or ``message_start`` (Anthropic) before
                the first token; committing to a model on that would turn a slow time to first token into a failed
                stream instead of a fallback. Those empty chunks are held back and sent before the first real one."""
                name = provider.name  # noqa: B023 - awaited in this iteration
                it = provider.stream(body, timeout_s=timeout).__aiter__()  # noqa: B023 - awaited in this iteration
                held: list[StreamChunk] = []
                try:
                    async with asyncio.timeout(timeout):
                        chunk = await it.__anext__()
                        while not _has_substance(chunk):
                            held.append(chunk)
                            chunk = await it.__anext__()
                except StopAsyncIteration:
                    await _aclose(it)
                    raise UpstreamError(
                        ErrorKind.BAD_RESPONSE, f"{name}: the stream ended without any content"
                    ) from None
                except TimeoutError:
                    await _aclose(it)
                    raise UpstreamError(ErrorKind.TIMEOUT, f"{name}: no first token within {timeout:.3g}s") from None
                except BaseException:
                    await _aclose(it)
                    raise
                if not held:
                    return chunk, it
                return held[0], _chain([*held[1:], chunk], it)

            try:
                (first, it), started, _ = await self._with_retries(call, model, first_chunk, cands[i + 1 :])
            except UpstreamError as err:
                last = err
                continue
            ttft = (self.clock() - started) * 1000
            call.record.ttft_ms = ttft
            self._succeed(call, model, ttft)
            return model, first, it, started
        if last is None:
            last = UpstreamError(ErrorKind.CONNECTION, "no model could be tried")
        raise RequestFailed(last, call.record.attempts)

    def settle_stream(
        self, call: Call, model: str, usage_chunks: list[StreamChunk], started: float, outcome: str, error: str | None
    ) -> None:
        """Book the streamed attempt: usage from the provider's final chunk, cost, latency, outcome."""
        usage = next((c.usage for c in reversed(usage_chunks) if c.usage is not None), None)
        cost = self.prices.cost(model, usage) if usage is not None else None
        call.record.attempts.append(
            Attempt(model, outcome, 200, error, (self.clock() - started) * 1000, 0, usage,
                    cost.total_usd if cost else 0.0)
        )
        if usage is not None and cost is not None:
            call.record.usage = call.record.usage + usage
            call.record.cost = call.record.cost + cost


async def _aiter(chunks: list[StreamChunk]) -> AsyncIterator[StreamChunk]:
    for c in chunks:
        yield c


async def _chain(chunks: list[StreamChunk], rest: AsyncIterator[StreamChunk]) -> AsyncIterator[StreamChunk]:
    """``chunks`` then the rest of the upstream stream (closed with this iterator)."""
    try:
        for c in chunks:
            yield c
        async for c in rest:
            yield c
    finally:
        await _aclose(rest)


def _has_substance(chunk: StreamChunk) -> bool:
    """Whether a stream chunk carries anything of the answer (text, a tool call, reasoning, a finish, usage), as
    opposed to a role-only opener."""
    if chunk.text or chunk.finish_reason is not None or chunk.usage is not None:
        return True
    for choice in chunk.body.get("choices") or ():
        delta = choice.get("delta") or {}
        if any(v for k, v in delta.items() if k != "role"):
            return True
    return False


async def _aclose(it: AsyncIterator[StreamChunk]) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):  # closing a broken stream must never mask the original error
            await aclose()
