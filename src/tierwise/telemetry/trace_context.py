"""The caller's trace context (W3C ``traceparent`` / ``tracestate``), carried from the request to its spans.

Spans are built after the request, from its ledger record (:mod:`tierwise.telemetry.tracing`), so the incoming
context has to travel to that point: :func:`middleware` (installed only when tracing is on) puts the request's
headers in a context variable for the duration of the handler, and the record's observers — called in the
handler's task when the request is booked — read them with :func:`incoming`. Nothing is parsed on the request path:
the headers are parsed once, when the spans are built, by OpenTelemetry's configured propagator
(``opentelemetry.propagate.extract``: W3C trace context and baggage unless ``OTEL_PROPAGATORS`` says otherwise).

A request without any of the propagator's headers costs a lookup per header name; a malformed header is the
propagator's business, and it ignores it: that request starts a new trace, never an error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Middleware

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

_HEADERS: ContextVar[Mapping[str, str] | None] = ContextVar("tierwise_incoming_trace_headers", default=None)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def incoming() -> Mapping[str, str] | None:
    """The headers of the request being booked, when it carried trace context (else None)."""
    return _HEADERS.get()


def make_middleware() -> Middleware:
    """An aiohttp middleware exposing the request's headers to :func:`incoming` while its handler runs, when they
    hold any field of the global propagator (read once, here: set ``OTEL_PROPAGATORS`` before the gateway starts)."""
    from opentelemetry.propagate import get_global_textmap

    fields = tuple(sorted(get_global_textmap().fields))

    @web.middleware
    async def trace_context(request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = request.headers
        if not any(f in headers for f in fields):
            return await handler(request)
        token = _HEADERS.set(headers)
        try:
            return await handler(request)
        finally:
            _HEADERS.reset(token)

    return trace_context


def parent_of(headers: Mapping[str, str] | None) -> SpanContext | None:
    """The caller's span context (remote, valid) from ``headers``, or None: no context, or a malformed one."""
    if headers is None:
        return None
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    try:
        ctx = trace.get_current_span(extract(headers)).get_span_context()
    except Exception:  # a propagator that raises on garbage must not cost the spans
        return None
    return ctx if ctx.is_valid else None
