"""OpenTelemetry traces: one span per request, one child span per upstream attempt or cascade rung.

Spans are made from the finished :class:`~tierwise.types.LedgerRecord` (the same hook the metrics use), with explicit
start and end timestamps, so the request path runs no tracing code until the request is booked. They are built as
finished SDK ``ReadableSpan`` objects and handed to the span processors directly: a live span per attempt through
``Tracer.start_span`` (context, sampler, attribute re-validation, locks) cost ≈60 µs of CPU per request, this path a
fraction of it (``bench/telemetry_overhead.py``). The root span covers the request
(``record.ts`` + ``latency_ms``); each attempt's span has its measured duration and is laid after the previous one
(the record keeps durations, not start times, so a retry's backoff wait shows as the gap at the end). Needs the
``otel`` extra (``opentelemetry-api``, ``opentelemetry-sdk``, ``opentelemetry-exporter-otlp-proto-http``). Spans go through a ``BatchSpanProcessor``: exporting happens on its
thread, never on the event loop.

Attributes follow the OpenTelemetry GenAI semantic conventions — ``gen_ai.operation.name`` (``chat``),
``gen_ai.provider.name`` (and the older ``gen_ai.system``), ``gen_ai.request.model`` (what the client asked for:
``auto``, a tier or a model), ``gen_ai.response.model`` (the tierwise model that answered), ``gen_ai.response.id``,
``gen_ai.usage.input_tokens`` (every prompt token, cached ones included), ``gen_ai.usage.output_tokens``,
``gen_ai.usage.cache_read.input_tokens``, ``gen_ai.usage.cache_creation.input_tokens``, ``error.type`` — plus
``tierwise.*``: tier, routing reason (``tier_source``) and notes, cost, escalations, fallbacks, status, principal
and attribution. Never a prompt, an answer, a key or a session id.

Joining the caller's trace: a request that carries W3C trace context (``traceparent``, ``tracestate``; any
propagator ``OTEL_PROPAGATORS`` configures) gets its SERVER span as a child of the caller's span, in the caller's
trace, with its ``tracestate`` (:mod:`tierwise.telemetry.trace_context`). Sampling is then the caller's, as OTel's
default ``ParentBased`` sampler has it: a sampled parent's request is traced whatever ``sample_ratio`` says, an
unsampled one's is not. Without context, or with a malformed one, the request starts a new trace, sampled by
``sample_ratio``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tierwise.config.schema import TierwiseConfig
from tierwise.telemetry.config import TracingConfig
from tierwise.telemetry.trace_context import incoming, parent_of
from tierwise.types import Attempt, LedgerRecord, Usage

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("tierwise.telemetry")

_PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "llamacpp": "llama_cpp", "replay": "tierwise.replay"}
_NOT_FAILED = frozenset({"ok", "escalated", "verifier", "skipped_cooldown", "hedge_cancelled", "hedge_unused"})
MAX_NOTES = 20


def tracing_problem(cfg: TracingConfig) -> str | None:
    """Why tracing cannot start with what is installed (checked by check-config / serve), or None."""
    if not cfg.enabled:
        return None
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return "telemetry.tracing needs the otel extra: pip install 'tierwise[otel]'"
    if cfg.exporter == "otlp":
        try:
            import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
        except ImportError:
            return ("telemetry.tracing.exporter 'otlp' needs the OTLP exporter: pip install 'tierwise[otel]' "
                    "(opentelemetry-exporter-otlp-proto-http), or use exporter: console / none")
    return None


def _exporter(cfg: TracingConfig) -> SpanExporter | None:
    if cfg.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if cfg.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=cfg.endpoint) if cfg.endpoint else OTLPSpanExporter()
    return None


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _usage_attrs(attrs: dict[str, Any], u: Usage) -> None:
    attrs["gen_ai.usage.input_tokens"] = u.prompt_tokens
    attrs["gen_ai.usage.output_tokens"] = u.output_tokens
    if u.cache_read_tokens:
        attrs["gen_ai.usage.cache_read.input_tokens"] = u.cache_read_tokens
    if u.cache_write_tokens:
        attrs["gen_ai.usage.cache_creation.input_tokens"] = u.cache_write_tokens
    if u.reasoning_tokens:
        attrs["tierwise.usage.reasoning_tokens"] = u.reasoning_tokens


class Tracing:
    """Record-to-spans translation and the span processors the finished spans go to (its own, never the global
    tracer provider: several gateways may share a process in tests). ``exporter`` overrides the configured one."""

    def __init__(self, cfg: TracingConfig, tw: TierwiseConfig, exporter: SpanExporter | None = None) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self._trace = trace
        self._span = ReadableSpan
        self._ids = RandomIdGenerator()
        self._resource = Resource.create({"service.name": cfg.service_name})
        self._scope = InstrumentationScope("tierwise")
        self._flags = trace.TraceFlags(trace.TraceFlags.SAMPLED)
        self._ok = trace.Status(trace.StatusCode.UNSET)
        # TraceIdRatioBased's rule: sampled when the trace id's low 64 bits are below ratio x 2^64
        self._bound = round(cfg.sample_ratio * (1 << 64))
        self.processors: list[SpanProcessor] = []
        exp = exporter if exporter is not None else _exporter(cfg)
        if exp is not None:
            self.add_span_processor(BatchSpanProcessor(exp))
        self._provider_of = {m: _PROVIDER_NAMES.get(tw.providers[mc.provider].format, tw.providers[mc.provider].format)
                             for m, mc in tw.models.items()}
        self._failed = False

    def add_span_processor(self, processor: SpanProcessor) -> None:
        """Every finished span goes to ``processor.on_end`` (tests add one with an in-memory exporter)."""
        self.processors.append(processor)

    def observe(self, rec: LedgerRecord) -> None:
        """Emit the request's spans. Never raises into the request path (a failure is logged once)."""
        try:
            self._emit(rec)
        except Exception:
            if not self._failed:
                self._failed = True
                log.exception("tracing: could not emit the spans of %s (logged once)", rec.id)

    def _finish(self, name: str, ctx: Any, parent: Any, kind: Any, attrs: dict[str, Any], start: int, end: int,
                error: str | None) -> None:
        status = self._ok if error is None else self._trace.Status(self._trace.StatusCode.ERROR, error[:300])
        span = self._span(name, context=ctx, parent=parent, resource=self._resource, attributes=attrs, kind=kind,
                          status=status, start_time=start, end_time=end, instrumentation_scope=self._scope)
        for p in self.processors:
            p.on_end(span)

    def _emit(self, rec: LedgerRecord) -> None:
        trace = self._trace
        parent = parent_of(incoming())
        if parent is not None:  # the caller's trace, the caller's sampling decision (ParentBased)
            if not parent.trace_flags.sampled:
                return
            trace_id, state = parent.trace_id, parent.trace_state
        else:
            trace_id, state = self._ids.generate_trace_id(), None
            if trace_id & 0xFFFFFFFFFFFFFFFF >= self._bound:  # (exporter none still makes them: benches, tests)
                return
        start = _ns(rec.ts)
        end = max(start, start + _ns(rec.latency_ms / 1000.0))
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.response.id": rec.id,
            "http.response.status_code": rec.http_status,
            "tierwise.status": rec.status,
            "tierwise.stream": rec.stream,
            "tierwise.cost_usd": rec.cost.total_usd,
            "tierwise.estimated_cost_usd": rec.estimated_cost_usd,
            "tierwise.escalations": rec.escalations,
            "tierwise.fallbacks": rec.fallbacks,
            "tierwise.attempts": len(rec.attempts),
            "tierwise.principal": rec.principal,
        }
        requested = rec.requested_model or "auto"
        attrs["gen_ai.request.model"] = requested
        if rec.model is not None:
            attrs["gen_ai.response.model"] = rec.model
            provider = self._provider_of.get(rec.model)
            if provider is not None:
                attrs["gen_ai.provider.name"] = attrs["gen_ai.system"] = provider
        if rec.tier is not None:
            attrs["tierwise.tier"] = rec.tier
        if rec.tier_source is not None:
            attrs["tierwise.routing.reason"] = rec.tier_source
        if rec.notes:
            attrs["tierwise.notes"] = [n[:300] for n in rec.notes[:MAX_NOTES]]
        if rec.ttft_ms is not None:
            attrs["tierwise.ttft_ms"] = rec.ttft_ms
        for name in ("key_id", "customer", "department", "project"):
            value = getattr(rec, name)
            if value:
                attrs[f"tierwise.{name}"] = value
        _usage_attrs(attrs, rec.usage)
        error = None
        if rec.status != "ok":
            attrs["error.type"] = str(rec.http_status) if rec.status == "error" else rec.status
            error = rec.error or rec.status
        root = trace.SpanContext(trace_id, self._ids.generate_span_id(), False, self._flags, state)
        cursor = start
        for i, a in enumerate(rec.attempts):
            cursor = self._attempt(a, i, root, cursor)
        self._finish(f"chat {requested}", root, parent, trace.SpanKind.SERVER, attrs, start, end, error)

    def _attempt(self, a: Attempt, index: int, root: Any, at: int) -> int:
        trace = self._trace
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": a.model,
            "tierwise.attempt.index": index,
            "tierwise.attempt.outcome": a.outcome,
            "tierwise.attempt.retry": a.retry,
            "tierwise.cost_usd": a.cost_usd,
        }
        provider = self._provider_of.get(a.model)
        if provider is not None:
            attrs["gen_ai.provider.name"] = attrs["gen_ai.system"] = provider
        if a.outcome in ("ok", "escalated", "verifier"):
            attrs["gen_ai.response.model"] = a.model
        if a.status is not None:
            attrs["http.response.status_code"] = a.status
        if a.confidence is not None:
            attrs["tierwise.cascade.confidence"] = a.confidence
        if a.usage is not None:
            _usage_attrs(attrs, a.usage)
        error = None
        if a.outcome not in _NOT_FAILED:
            attrs["error.type"] = a.outcome
            error = a.error or a.outcome
        end = at + _ns(a.latency_ms / 1000.0)
        ctx = trace.SpanContext(root.trace_id, self._ids.generate_span_id(), False, self._flags, root.trace_state)
        self._finish(f"chat {a.model}", ctx, root, trace.SpanKind.CLIENT, attrs, at, end, error)
        return end

    def shutdown(self) -> None:
        """Export what is queued and stop the exporters' threads (at gateway shutdown, off the event loop)."""
        for p in self.processors:
            p.shutdown()
