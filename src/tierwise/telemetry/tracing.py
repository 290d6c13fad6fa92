"""OpenTelemetry traces: one span per request, one child span per upstream attempt or cascade rung.

Spans are made from the finished :class:`~tierwise.types.LedgerRecord` (the same hook the metrics use), with explicit
start and end timestamps, so the request path runs no tracing code at all: the root span covers the request
(``record.ts`` + ``latency_ms``); each attempt's span has its measured duration and is laid after the previous one
(the record keeps durations, not start times, so a retry's backoff wait shows as the gap at the end). Needs the
``otel`` extra (``opentelemetry-api``, ``opentelemetry-sdk``); OTLP export also needs
``opentelemetry-exporter-otlp-proto-http``. Spans go through a ``BatchSpanProcessor``: exporting happens on its
thread, never on the event loop.

Attributes follow the OpenTelemetry GenAI semantic conventions — ``gen_ai.operation.name`` (``chat``),
``gen_ai.provider.name`` (and the older ``gen_ai.system``), ``gen_ai.request.model`` (what the client asked for:
``auto``, a tier or a model), ``gen_ai.response.model`` (the tierwise model that answered), ``gen_ai.response.id``,
``gen_ai.usage.input_tokens`` (every prompt token, cached ones included), ``gen_ai.usage.output_tokens``,
``gen_ai.usage.cache_read.input_tokens``, ``gen_ai.usage.cache_creation.input_tokens``, ``error.type`` — plus
``tierwise.*``: tier, routing reason (``tier_source``) and notes, cost, escalations, fallbacks, status, principal
and attribution. Never a prompt, an answer, a key or a session id.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tierwise.config.schema import TierwiseConfig
from tierwise.telemetry.config import TracingConfig
from tierwise.types import Attempt, LedgerRecord, Usage

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("tierwise.telemetry")

_PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "llamacpp": "llama_cpp", "replay": "tierwise.replay"}
_NOT_FAILED = frozenset({"ok", "escalated", "verifier", "skipped_cooldown"})
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
            return ("telemetry.tracing.exporter 'otlp' needs the OTLP exporter: pip install "
                    "opentelemetry-exporter-otlp-proto-http (or use exporter: console / none)")
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
    """A tracer provider of its own (never the global one: several gateways may share a process in tests) and
    the record-to-spans translation. ``exporter`` overrides the configured one (tests: an in-memory exporter)."""

    def __init__(self, cfg: TracingConfig, tw: TierwiseConfig, exporter: SpanExporter | None = None) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

        self._trace = trace
        self.provider: TracerProvider = TracerProvider(
            resource=Resource.create({"service.name": cfg.service_name}), sampler=TraceIdRatioBased(cfg.sample_ratio))
        exp = exporter if exporter is not None else _exporter(cfg)
        if exp is not None:
            self.provider.add_span_processor(BatchSpanProcessor(exp))
        self.tracer = self.provider.get_tracer("tierwise")
        self._provider_of = {m: _PROVIDER_NAMES.get(tw.providers[mc.provider].format, tw.providers[mc.provider].format)
                             for m, mc in tw.models.items()}
        self._failed = False

    def observe(self, rec: LedgerRecord) -> None:
        """Emit the request's spans. Never raises into the request path (a failure is logged once)."""
        try:
            self._emit(rec)
        except Exception:
            if not self._failed:
                self._failed = True
                log.exception("tracing: could not emit the spans of %s (logged once)", rec.id)

    def _emit(self, rec: LedgerRecord) -> None:
        trace = self._trace
        start = _ns(rec.ts)
        end = start + _ns(rec.latency_ms / 1000.0)
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
        failed = rec.status != "ok"
        if failed:
            attrs["error.type"] = str(rec.http_status) if rec.status == "error" else rec.status
        root = self.tracer.start_span(f"chat {requested}", kind=trace.SpanKind.SERVER, attributes=attrs,
                                      start_time=start)
        if failed:
            root.set_status(trace.Status(trace.StatusCode.ERROR, (rec.error or rec.status)[:300]))
        if rec.attempts and root.is_recording():
            ctx = trace.set_span_in_context(root)
            cursor = start
            for i, a in enumerate(rec.attempts):
                cursor = self._attempt(a, i, ctx, cursor)
        root.end(end_time=max(end, start))

    def _attempt(self, a: Attempt, index: int, ctx: Any, at: int) -> int:
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
        failed = a.outcome not in _NOT_FAILED
        if failed:
            attrs["error.type"] = a.outcome
        end = at + _ns(a.latency_ms / 1000.0)
        span = self.tracer.start_span(f"chat {a.model}", context=ctx, kind=trace.SpanKind.CLIENT, attributes=attrs,
                                      start_time=at)
        if failed:
            span.set_status(trace.Status(trace.StatusCode.ERROR, (a.error or a.outcome)[:300]))
        span.end(end_time=end)
        return end

    def shutdown(self) -> None:
        """Export what is queued and stop the exporter thread (at gateway shutdown, off the event loop)."""
        self.provider.shutdown()
