"""The tierwise core: one object that validates, routes, executes and books a chat request.

The HTTP gateway and the in-process :class:`tierwise.Router` are thin drivers of this class, so both run the same
engine, executor and ledger code. Whatever happens to a request — success, upstream failure, deadline, client gone,
a bug — exactly one ledger record is submitted for it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tierwise.config.schema import TierwiseConfig
from tierwise.cost import count_text_tokens
from tierwise.errors import APIError, from_upstream
from tierwise.governance import ANONYMOUS, UNAUTHENTICATED, Principal
from tierwise.governance.access import check_tier, excluded_models, no_model_left
from tierwise.governance.admission import Governed, Governor
from tierwise.governance.anomaly import AnomalyDetector, alerts_path
from tierwise.governance.recovery import charge_recovered
from tierwise.ledger import JournalError, LedgerWriter, open_ledger
from tierwise.pricing import PriceBook, RequestEstimator
from tierwise.providers.base import Provider
from tierwise.providers.registry import build_providers
from tierwise.requests import MAX_NAME_CHARS, check_request_limits, prompt_text, validate_chat_body
from tierwise.rollout.arms import attach_arms, detach_arms
from tierwise.rollout.capture import build_capturer
from tierwise.routing.engine import RouteRequest, RoutingEngine, RoutingError, TierClassifier
from tierwise.routing.executor import Call, Executor, RequestFailed, count_fallbacks
from tierwise.sanitize import clean_text
from tierwise.state import MemoryHealth, MemorySessionPins, build_state_backend
from tierwise.state.backend import StateBackend
from tierwise.types import JSON, Cost, LedgerRecord, StreamChunk, Usage

if TYPE_CHECKING:
    from tierwise.routing.learned.artifact import LearnedRouter

log = logging.getLogger("tierwise")


Predict = Callable[[str], Sequence[float]]

# Request ids: a random per-process prefix plus a counter. Unique across processes and replicas (64 random bits),
# and no os.urandom system call per request (uuid4 was 2% of the gateway's CPU).
_ID_PREFIX = "chatcmpl-tw-" + uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count(1)


def _next_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


def load_routers(cfg: TierwiseConfig) -> dict[str, LearnedRouter]:
    """The learned routers the config names (policy 'learned', or a cascade's start router), by tier."""
    wanted: dict[str, tuple[str, list[str]]] = {}
    for name, tier in cfg.tiers.items():
        if tier.policy == "learned" and tier.learned is not None:
            wanted[name] = (tier.learned.artifact, tier.models)
        elif tier.cascade is not None and (tier.cascade.start is not None or tier.cascade.router is not None):
            path = tier.cascade.start.artifact if tier.cascade.start is not None else tier.cascade.router
            wanted[name] = (path, [r.model for r in tier.cascade.rungs])  # type: ignore[assignment]
    if not wanted:
        return {}
    from tierwise.routing.learned.artifact import load_router  # numpy: only when a router is configured

    return {name: load_router(path, models) for name, (path, models) in wanted.items()}


def _embedding_predictor(router: LearnedRouter) -> Predict:
    def predict(text: str) -> Sequence[float]:
        return router.predict([text])[0]

    return predict


def build_semantic_classifier(cfg: TierwiseConfig) -> TierClassifier:
    """The configured semantic classifier (tier texts are embedded once, here, at start-up)."""
    from tierwise.embed import get_embedder
    from tierwise.routing.signals.semantic import SemanticClassifier

    return SemanticClassifier(cfg, get_embedder(cfg.classifier.embedder))


def _models_of(cfg: TierwiseConfig, tier: str) -> tuple[str, ...]:
    t = cfg.tiers[tier]
    rungs = [r.model for r in t.cascade.rungs] if t.cascade is not None else []
    return tuple(dict.fromkeys([*t.models, *rungs, t.fallback or cfg.fallback_model]))


@dataclass(slots=True)
class ChatResult:
    body: JSON
    record: LedgerRecord


class Tierwise:
    """Routing engine + executor + price book + ledger, wired from one configuration."""

    def __init__(
        self,
        cfg: TierwiseConfig,
        *,
        providers: dict[str, Provider] | None = None,
        ledger: LedgerWriter | None = None,
        classifier: TierClassifier | None = None,
        predictors: dict[str, Predict] | None = None,
        state: StateBackend | None = None,
    ) -> None:
        self.cfg = cfg
        self.prices = PriceBook(cfg)
        self.pins = MemorySessionPins(cfg.sessions.ttl_s, cfg.sessions.max_sessions)
        self.health = MemoryHealth(cfg.retry.cooldown_failures, cfg.retry.cooldown_s)
        if classifier is None and cfg.classifier.kind == "semantic":
            classifier = build_semantic_classifier(cfg)
        routers = load_routers(cfg)
        self.engine = RoutingEngine(cfg, self.pins, self.health, classifier, routers)
        # tier -> text -> predicted quality per model of the tier's router. Overridable so offline replay can feed
        # cached embeddings through the very same routing code.
        self._predictors: dict[str, Predict] = {t: _embedding_predictor(r) for t, r in routers.items()}
        self._predictors.update(predictors or {})
        self.providers = providers if providers is not None else build_providers(cfg)
        self.executor = Executor(cfg, self.providers, self.prices, self.pins, self.health)
        self.ledger = ledger if ledger is not None else open_ledger(cfg.ledger)
        self.anomalies = AnomalyDetector(cfg.anomalies, alerts_path(cfg.ledger))
        self.governor = Governor(cfg, state if state is not None else build_state_backend(cfg), self.pins, self.health,
                                 self.anomalies)
        # what the start-up replay took from dead processes' journals: their settlements died with them
        charge_recovered(self.governor.state, getattr(self.ledger, "recovered", ()))
        # every model a tier's plan can contain (its models, cascade rungs, its fallback): what allow-lists filter
        self._tier_models = {name: _models_of(cfg, name) for name in cfg.tiers}
        self._value_tiered = any(m.value_tiers is not None for m in cfg.models.values())
        self._log_prompts = cfg.server.log_prompts
        # called with every record right after it is submitted to the ledger (metrics, tracing: tierwise.telemetry)
        self.observers: list[Callable[[LedgerRecord], None]] = []
        self.capture = build_capturer(cfg)  # None unless rollout.capture is on: then nothing on the hot path
        self.arms_store: object | None = None
        self.shadow, self.canary = attach_arms(self)  # shadow: / canary: (None, None without them)
        # One thread: embedders are pinned to one core, and a queue in front of it beats two threads fighting.
        self._classify_pool = ThreadPoolExecutor(1, thread_name_prefix="tierwise-classify")

    async def aclose(self) -> None:
        await detach_arms(self)  # shadow calls still running are booked before the providers and the ledger close
        for p in self.providers.values():
            try:
                await p.aclose()
            except Exception:  # one provider failing to close must not keep the ledger from flushing
                log.exception("provider close failed")
        self._classify_pool.shutdown(wait=False, cancel_futures=True)
        await self.anomalies.aclose()  # alerts already raised still reach their webhook
        await self.governor.state.aclose()  # queued settlements are sent (a bounded wait) before the ledger closes
        if self.capture is not None:
            await asyncio.to_thread(self.capture.close)
        await asyncio.to_thread(self._close_ledger)

    def _close_ledger(self) -> None:
        self.ledger.close()
        self.ledger.store.close()

    # -- request set-up --------------------------------------------------------------------------------------------
    async def begin(self, body: JSON, route: RouteRequest, principal: Principal = ANONYMOUS) -> Call:
        """Validate and route; raises :class:`APIError` (400/404) for requests that cannot be routed (the gateway
        books those with :meth:`reject`)."""
        # model and session first: a request refused by validation is still booked with them (see reject)
        if route.requested_model is None and isinstance(body.get("model"), str):
            route.requested_model = body["model"]
        if route.session_id is None and isinstance(body.get("user"), str):
            route.session_id = clean_text(body["user"], MAX_NAME_CHARS)  # cleaned and cut as X-Session-Id is
        validate_chat_body(body)
        if self.engine.needs_classifier(route):
            assert self.engine.classifier is not None
            # Embedding is CPU work: run it on the classifier's own thread, never on the event loop.
            loop = asyncio.get_running_loop()
            route.classified = await loop.run_in_executor(self._classify_pool, self.engine.classifier.classify, body)
            route.classifier_ran = True
        try:
            tier, source = self.engine.choose_tier(route, body)
        except RoutingError as exc:
            raise APIError(404, exc.message, code=exc.code, param=exc.param) from None
        engine, tier_models, predictors, arm = self.engine, self._tier_models, self._predictors, None
        if self.canary is not None and tier is not None:  # sticky arm; the canary arm plans with the candidate
            in_canary = self.canary.in_canary(route, principal)
            arm = self.canary.arm(in_canary)
            if in_canary:
                engine, tier_models, predictors = self.canary.engine, self.canary.tier_models, self.canary.predictors
        # exact now that the tier is known (the gateway's pre-check must assume the widest tier for classified 'auto')
        check_request_limits(body, self.cfg, tier, route.requested_model if tier is None else None)
        check_tier(principal, tier, route.requested_model if tier is None else None, self.cfg)
        excluded = (excluded_models(principal, tier_models[tier], self.cfg)
                    if tier is not None and (principal.allowed_models is not None or self._value_tiered) else None)
        route.revenue_usd = principal.revenue_per_request_usd
        if route.predicted is None and tier in predictors:
            text = prompt_text(body, 1 << 30)  # the router takes the part it was trained on (its tail)
            predict = predictors[tier]
            if getattr(predict, "inline", False):  # a lookup of precomputed predictions (offline replay)
                route.predicted = predict(text)
            else:
                loop = asyncio.get_running_loop()
                route.predicted = await loop.run_in_executor(self._classify_pool, predict, text)
        record = LedgerRecord(
            id=_next_request_id(),
            ts=time.time(),
            principal=principal.name,
            key_id=principal.key_id,
            customer=principal.customer,
            department=principal.department,
            project=principal.project,
            tags=route.tags,
            requested_model=route.requested_model,
            session_id=route.session_id,
            stream=bool(body.get("stream")),
            revenue_usd=principal.revenue_per_request_usd,  # kept only if the request is answered (_finish)
            arm=arm,
        )
        estimator = self.prices.estimator(body, tier)
        models = tier_models[tier] if tier is not None else (route.requested_model or "",)
        governed = await self.governor.admit(record, principal, tier, models, estimator)
        try:
            return self._plan(body, route, record, (tier, source), estimator, excluded, governed, engine)
        except BaseException:
            if governed.admitted:
                self.governor.settle_nothing(record.id)
            raise

    def _plan(self, body: JSON, route: RouteRequest, record: LedgerRecord, choice: tuple[str | None, str],
              estimator: RequestEstimator, excluded: dict[str, str] | None, governed: Governed,
              engine: RoutingEngine | None = None) -> Call:
        """The plan and the call, once the request is admitted (access and budgets may have left models out)."""
        if governed.excluded:
            excluded = {**governed.excluded, **(excluded or {})}
        engine = engine or self.engine  # the canary arm's engine, or the incumbent's
        decision = engine.decide(route, body, time.time(), estimator, choice=choice, excluded=excluded)
        if not decision.candidates:
            if governed.excluded:
                raise APIError(429, f"budgets leave no model of tier '{decision.tier}' to use",
                               type="insufficient_quota", code="budget_exceeded")
            raise no_model_left(decision.tier or "")
        record.tier, record.tier_source = decision.tier, decision.tier_source
        record.notes.extend(decision.notes)
        record.estimated_cost_usd = estimator(decision.candidates[0])
        deadline = self.executor.clock() + self.cfg.server.request_deadline_s
        if self._log_prompts:
            log.info("request %s messages=%s", record.id, body.get("messages"))
        cascade = engine.cfg.tiers[decision.tier].cascade if decision.tier is not None else None
        call = Call(decision, body, record, deadline, route.session_id, cascade)
        if excluded:
            call.excluded = excluded
        call.reserved = governed.admitted
        if governed.grade is not None and governed.grade.step is not None:
            call.budget = governed.grade.header
            record.notes.append(governed.grade.why)
        if route.predicted is not None and decision.tier in engine.routers:
            models = engine.routers[decision.tier].models
            call.prior = {m: float(q) for m, q in zip(models, route.predicted, strict=True)}
        if cascade is not None and cascade.start is not None:
            call.start_rung = engine.start_rung(decision.tier, route.predicted)  # type: ignore[arg-type]
            if call.start_rung:
                record.notes.append(f"start router: began at rung {call.start_rung} ({cascade.rungs[call.start_rung].model})")
        self._journal_begin(record, decision.candidates[0])
        if self.shadow is not None:
            self.shadow.observe(route, body, call)  # schedules the candidate's decision; never raises, never waits
        return call

    def _journal_begin(self, record: LedgerRecord, model: str | None = None) -> None:
        """Put the request in the crash journal before any upstream call (``model``: the one it is planned to go to
        first, which an interrupted row names). When the journal cannot be written
        (disk full, read-only), refuse the request (``ledger.on_unwritable: refuse``): serving it would spend money
        no record could show."""
        try:
            self.ledger.begin(record, model)
        except JournalError as exc:
            if self.cfg.ledger.on_unwritable == "serve":
                record.notes.append("not crash-safe: the ledger journal could not be written")
                log.critical("serving %s without a crash-safe record: %s", record.id, exc)
                return
            log.critical("refusing request %s: %s", record.id, exc)
            raise APIError(
                503, "tierwise cannot record requests right now (its ledger journal cannot be written), so it "
                "refuses them rather than spend money it could not account for; the operator has been told",
                type="server_error", code="ledger_unavailable",
            ) from None

    def reject(self, err: APIError, principal: Principal | None, body: JSON | None, route: RouteRequest | None,
               status: str = "rejected") -> str:
        """Book a request that ended before routing, no cost: ``rejected`` (bad input, unknown model, auth, shutting
        down), or ``client_cancelled`` / ``error`` for a hang-up or a bug before routing. Returns its request id
        (for the response header)."""
        who = principal or UNAUTHENTICATED
        rec = LedgerRecord(id=_next_request_id(), ts=time.time(), principal=who.name, key_id=who.key_id,
                           customer=who.customer, department=who.department, project=who.project,
                           tags=route.tags if route is not None else {})
        if body is not None:
            model = body.get("model")
            rec.requested_model = model if isinstance(model, str) else None
            rec.stream = body.get("stream") is True
        if route is not None:
            rec.session_id = route.session_id
            rec.tier = route.endpoint_tier or route.task_header
        rec.status, rec.http_status, rec.error = status, err.status, err.message[:500]
        self.ledger.submit(rec)
        for observe in self.observers:
            observe(rec)
        return rec.id

    def _finish(self, call: Call, started: float, status: str, http_status: int, error: str | None) -> None:
        rec = call.record
        rec.latency_ms = (time.perf_counter() - started) * 1000
        rec.status, rec.http_status, rec.error = status, http_status, error
        if status != "ok":
            rec.revenue_usd = None  # a request that was not answered earns nothing
        rec.fallbacks = count_fallbacks(rec.attempts, rec.model)
        if call.reserved:
            self.governor.settle(call)
        if rec.cost.total_usd > 0:
            self.anomalies.observe(rec.principal, rec.model or "-", rec.cost.total_usd, time.time())
        self.ledger.submit(rec)
        for observe in self.observers:
            observe(rec)

    def _fail(self, call: Call, started: float, exc: BaseException) -> APIError:
        """Book a failed request and turn the failure into the client's error."""
        if isinstance(exc, RequestFailed):
            err = from_upstream(exc.last, [a.as_dict() for a in exc.attempts], exc.deadline_hit)
        elif isinstance(exc, APIError):
            err = exc
        else:
            log.error("internal error on %s: %s", call.record.id, type(exc).__name__, exc_info=exc)
            err = APIError(500, f"internal error ({type(exc).__name__}); request id {call.record.id}",
                           type="server_error", code="internal_error")
        self._finish(call, _start_of(call), "error", err.status, err.message)
        if self.capture is not None:
            self.capture.offer(call.record, call.body, None)
        return err

    # -- non-streaming ---------------------------------------------------------------------------------------------
    async def complete(self, call: Call) -> ChatResult:
        started = _start_of(call)
        try:
            completion = await self.executor.complete(call)
            await self.governor.share_pin(call)  # before the answer: the session's next turn may go to another replica
        except asyncio.CancelledError:
            self._book_cancelled(call)
            self._finish(call, started, "client_cancelled", 499, "client disconnected before the answer")
            raise
        except Exception as exc:
            raise self._fail(call, started, exc) from None
        body = completion.body
        body["model"] = call.record.model
        if self._log_prompts:
            log.info("answer %s: %s", call.record.id, completion.text)
        self._finish(call, started, "ok", 200, None)
        if self.capture is not None:
            self.capture.offer(call.record, call.body, completion.text)
        return ChatResult(body, call.record)

    @staticmethod
    def _book_cancelled(call: Call) -> None:
        """A client that hangs up does not stop the upstream from billing the call in flight: book the pre-call
        estimate for it, marked as such, unless some attempt already reported its real cost."""
        rec = call.record
        if rec.cost.total_usd > 0 or rec.estimated_cost_usd <= 0:
            return
        rec.cost = Cost(estimated_usd=rec.estimated_cost_usd)
        rec.notes.append("cost booked at tierwise's pre-call estimate: the client disconnected while the upstream "
                         "call was in flight, and the upstream may bill it")

    # -- streaming -------------------------------------------------------------------------------------------------
    async def open_stream(self, call: Call) -> ChatStream:
        """Get the first chunk (falling back as needed) before the caller commits to a 200 response."""
        started = _start_of(call)
        try:
            model, first, rest, attempt_started = await self.executor.open_stream(call)
        except asyncio.CancelledError:
            self._book_cancelled(call)
            self._finish(call, started, "client_cancelled", 499, "client disconnected before the first token")
            raise
        except Exception as exc:
            raise self._fail(call, started, exc) from None
        return ChatStream(self, call, model, first, rest, started, attempt_started)


class ChatStream:
    """The rest of a stream after its first chunk. Iterate it once; the ledger record is booked when it ends,
    however it ends (finished, upstream error mid-stream, or the consumer closing it early)."""

    def __init__(
        self, svc: Tierwise, call: Call, model: str, first: StreamChunk, rest: AsyncIterator[StreamChunk],
        started: float, attempt_started: float,
    ) -> None:
        self.svc, self.call, self.model = svc, call, model
        self.record = call.record
        self._first, self._rest = first, rest
        self.prompt_usage = first.prompt_usage  # the prompt's tokens as the upstream reported them at its start
        self._started, self._attempt_started = started, attempt_started
        opts = call.body.get("stream_options") or {}
        self._client_wants_usage = bool(opts.get("include_usage"))
        self.error: APIError | None = None

    async def chunks(self) -> AsyncGenerator[JSON, None]:
        """Yield OpenAI chunk dicts for the client; after an upstream failure mid-stream, ``self.error`` is set."""
        text_parts: list[str] = []
        usage_chunks: list[StreamChunk] = []
        outcome: str = "client_cancelled"
        err_msg: str | None = "client disconnected mid-stream"
        try:
            await self.svc.governor.share_pin(self.call)  # before the first chunk (see Tierwise.complete)
            chunk: StreamChunk | None = self._first
            while chunk is not None:
                if chunk.usage is not None:
                    usage_chunks.append(chunk)
                if chunk.text:
                    text_parts.append(chunk.text)
                if chunk.usage is None or self._client_wants_usage or chunk.body.get("choices"):
                    body = chunk.body
                    body["model"] = self.model
                    if chunk.usage is not None and not self._client_wants_usage:
                        body.pop("usage", None)
                    yield body
                chunk = await _next(self._rest)
            outcome, err_msg = "ok", None
        except _UpstreamMidStream as exc:
            outcome, err_msg = exc.err.kind.value, exc.err.message
            self.error = APIError(502, f"upstream failed mid-stream: {exc.err.message}", type="upstream_error",
                                  code="upstream_stream_interrupted")
        finally:
            self._book(outcome, err_msg, usage_chunks, "".join(text_parts))

    def _book(self, outcome: str, err_msg: str | None, usage_chunks: list[StreamChunk], text: str) -> None:
        ex = self.svc.executor
        if not self.call.prebooked and not any(c.usage is not None for c in usage_chunks):
            # The stream ended before the provider reported usage: count what was actually received.
            enc_model = self.model
            est = self.svc.prices.estimator(self.call.body, self.record.tier)
            out_tokens = count_text_tokens(text, self.svc.prices.encoding(enc_model)) if text else 0
            usage_chunks = [StreamChunk({}, Usage(input_tokens=est.prompt_tokens(enc_model), output_tokens=out_tokens))]
            self.record.notes.append("usage estimated by tierwise: the stream ended before the provider reported it")
        if not self.call.prebooked:
            ex.settle_stream(self.call, self.model, usage_chunks, self._attempt_started, outcome, err_msg)
        if self.svc._log_prompts:
            log.info("answer %s: %s", self.record.id, text)
        status = {"ok": "ok", "client_cancelled": "client_cancelled"}.get(outcome, "error")
        http = 200 if status != "client_cancelled" else 499
        self.svc._finish(self.call, self._started, status, http, err_msg)
        if self.svc.capture is not None:
            self.svc.capture.offer(self.record, self.call.body, text)


class _UpstreamMidStream(Exception):
    def __init__(self, err: Exception) -> None:
        from tierwise.types import ErrorKind, UpstreamError

        self.err = err if isinstance(err, UpstreamError) else UpstreamError(ErrorKind.CONNECTION, str(err))


async def _next(it: AsyncIterator[StreamChunk]) -> StreamChunk | None:
    try:
        return await it.__anext__()
    except StopAsyncIteration:
        return None
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise _UpstreamMidStream(exc) from None


def _start_of(call: Call) -> float:
    """perf_counter() value at which the request started (kept on the call to time the whole request)."""
    return call.started


__all__ = ["ChatResult", "ChatStream", "Tierwise"]
