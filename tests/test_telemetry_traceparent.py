"""A caller's W3C trace context joins the gateway's spans (real gateway, SDK in-memory exporter): the request's SERVER
span is a child of the caller's span in the caller's trace, with its ``tracestate``, for every client API and for
streams and refusals alike; the caller's sampled flag decides (ParentBased); a malformed ``traceparent`` starts a
new trace and never fails the request; one request's context never leaks into the next on the same connection."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for
from tierwise.telemetry.endpoint import TELEMETRY_KEY

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
MSG = [{"role": "user", "content": "hi"}]


def traceparent(flags: str = "01") -> str:
    return f"00-{TRACE_ID}-{PARENT_ID}-{flags}"


def _gateway(upstream: FakeUpstream, tmp: Path, ratio: float) -> tuple[GatewayServer, InMemorySpanExporter]:
    extra = f"telemetry: {{tracing: {{enabled: true, exporter: none, sample_ratio: {ratio}}}}}\n"
    gw = GatewayServer(config_for(upstream.base_url, tmp, extra=extra)).start()
    spans = InMemorySpanExporter()
    tel = gw.runner.app[TELEMETRY_KEY]  # type: ignore[union-attr]
    tel.tracing.add_span_processor(SimpleSpanProcessor(spans))
    return gw, spans


@pytest.fixture
def traced(upstream: FakeUpstream, tmp_path: Path) -> Iterator[tuple[GatewayServer, InMemorySpanExporter]]:
    gw, spans = _gateway(upstream, tmp_path, 1.0)
    try:
        yield gw, spans
    finally:
        gw.stop()


def roots(spans: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]


def assert_joined(spans: InMemorySpanExporter) -> ReadableSpan:
    [root] = roots(spans)
    assert f"{root.context.trace_id:032x}" == TRACE_ID
    assert root.parent is not None and f"{root.parent.span_id:016x}" == PARENT_ID and root.parent.is_remote
    assert root.context.trace_state.get("congo") == "t61rcWkgMzE"
    children = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert all(c.context.trace_id == root.context.trace_id and c.parent is not None
               and c.parent.span_id == root.context.span_id for c in children)
    return root


def test_the_request_span_is_a_child_of_the_callers_span(traced: tuple[GatewayServer, InMemorySpanExporter],
                                                         upstream: FakeUpstream) -> None:
    gw, spans = traced
    headers = {"traceparent": traceparent(), "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"}
    cases = [
        ("/v1/chat/completions", {"model": "chat", "messages": MSG}, 200),
        ("/v1/chat/completions", {"model": "chat", "messages": MSG, "stream": True}, 200),  # booked as it ends
        ("/v1/messages", {"model": "chat", "max_tokens": 20, "messages": MSG}, 200),
        ("/v1/responses", {"model": "chat", "input": "hi", "stream": True}, 200),
        ("/v1/chat/completions", {"model": "no-such-model", "messages": MSG}, 404),  # refused before routing
    ]
    for path, body, status in cases:
        spans.clear()
        r = httpx.post(gw.url + path, json=body, headers=headers, timeout=20)
        assert r.status_code == status, (path, r.text)
        root = assert_joined(spans)
        assert root.attributes["gen_ai.response.id"] == r.headers["x-tierwise-request-id"]
        if status == 200:
            assert len([s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]) == 1


def test_the_callers_sampling_decides(upstream: FakeUpstream, tmp_path: Path) -> None:
    """sample_ratio 0: nothing of the gateway's own is traced, but a sampled caller's request is (ParentBased);
    an unsampled caller's request is not traced even at ratio 1."""
    gw, spans = _gateway(upstream, tmp_path / "a", 0.0)
    try:
        body = {"model": "chat", "messages": MSG}
        assert httpx.post(gw.base_url + "/chat/completions", json=body, timeout=20).status_code == 200
        assert roots(spans) == []
        r = httpx.post(gw.base_url + "/chat/completions", json=body, timeout=20,
                       headers={"traceparent": traceparent("01"), "tracestate": "congo=t61rcWkgMzE"})
        assert r.status_code == 200
        assert_joined(spans)
    finally:
        gw.stop()
    gw, spans = _gateway(upstream, tmp_path / "b", 1.0)
    try:
        r = httpx.post(gw.base_url + "/chat/completions", json={"model": "chat", "messages": MSG}, timeout=20,
                       headers={"traceparent": traceparent("00")})
        assert r.status_code == 200 and roots(spans) == []
    finally:
        gw.stop()


BAD = [
    "garbage",
    "",
    f"00-{TRACE_ID}-{PARENT_ID}",  # no flags
    f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id: invalid
    f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id: invalid
    f"ff-{TRACE_ID}-{PARENT_ID}-01",  # version ff is forbidden
    f"00-{TRACE_ID[:-1]}z-{PARENT_ID}-01",  # not hex
    f"00-{TRACE_ID}-{PARENT_ID}-01-extra-fields-for-version-00",
    "00-" + "a" * 4000,  # long
    f"00-{TRACE_ID}-{PARENT_ID}-01\u00e9",  # not ASCII
]


@pytest.mark.parametrize("bad", BAD)
def test_a_malformed_traceparent_starts_a_new_trace(traced: tuple[GatewayServer, InMemorySpanExporter],
                                                    bad: str) -> None:
    gw, spans = traced
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": "chat", "messages": MSG}, timeout=20,
                   headers={"traceparent": bad.encode("utf-8"), "tracestate": "congo=t61rcWkgMzE"})
    assert r.status_code == 200, r.text
    [root] = roots(spans)
    assert root.parent is None and f"{root.context.trace_id:032x}" != TRACE_ID and root.context.trace_id != 0
    assert root.attributes["gen_ai.response.id"] == r.headers["x-tierwise-request-id"]


def test_context_does_not_leak_to_the_next_request_on_the_connection(
        traced: tuple[GatewayServer, InMemorySpanExporter]) -> None:
    gw, spans = traced
    with httpx.Client(timeout=20) as c:  # one keep-alive connection
        body = {"model": "chat", "messages": MSG}
        assert c.post(gw.base_url + "/chat/completions", json=body,
                      headers={"traceparent": traceparent(), "tracestate": "congo=t61rcWkgMzE"}).status_code == 200
        assert_joined(spans)
        spans.clear()
        assert c.post(gw.base_url + "/chat/completions", json=body).status_code == 200
    [root] = roots(spans)
    assert root.parent is None and f"{root.context.trace_id:032x}" != TRACE_ID
