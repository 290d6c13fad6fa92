"""OpenTelemetry spans from a real gateway: one SERVER span per request, one CLIENT child per attempt or cascade
rung, GenAI semantic-convention attributes plus tierwise.*, collected with the SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for
from tierwise.telemetry.endpoint import TELEMETRY_KEY, telemetry_problems

PROMPT = "tell me the secret plan"
MSG = [{"role": "user", "content": PROMPT}]
EXTRA = """  casc:
    policy: cascade
    cascade:
      rungs:
        - {model: small, gate: {kind: logprob, threshold: 0.7}}
        - {model: large}
telemetry: {tracing: {enabled: true, exporter: none}}
"""


@pytest.fixture
def traced(upstream: FakeUpstream, tmp_path: Path) -> Iterator[tuple[GatewayServer, InMemorySpanExporter]]:
    gw = GatewayServer(config_for(upstream.base_url, tmp_path, extra=EXTRA)).start()
    spans = InMemorySpanExporter()
    tel = gw.runner.app[TELEMETRY_KEY]  # type: ignore[union-attr]
    assert tel.tracing is not None
    tel.tracing.add_span_processor(SimpleSpanProcessor(spans))
    try:
        yield gw, spans
    finally:
        gw.stop()


def tree(spans: tuple[ReadableSpan, ...]) -> dict[ReadableSpan, list[ReadableSpan]]:
    roots = [s for s in spans if s.parent is None]
    return {r: sorted((s for s in spans if s.parent is not None and s.parent.span_id == r.context.span_id),
                      key=lambda s: s.attributes["tierwise.attempt.index"]) for r in roots}


def test_cascade_span_tree(traced: tuple[GatewayServer, InMemorySpanExporter], upstream: FakeUpstream) -> None:
    gw, spans = traced
    upstream.set(logprob=-1.0, prompt_tokens=100, completion_tokens=10, cached_tokens=20)
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": "casc", "messages": MSG}, timeout=20)
    assert r.status_code == 200
    row = gw.rows()[-1]
    (root, children), = tree(spans.get_finished_spans()).items()
    assert root.name == "chat casc" and root.kind is SpanKind.SERVER
    a = root.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "casc"
    assert a["gen_ai.response.model"] == "large" and a["gen_ai.response.id"] == row["id"]
    assert a["gen_ai.provider.name"] == a["gen_ai.system"] == "openai"
    # two calls of 100 prompt tokens (20 of them cached reads) and 10 output tokens each
    assert a["gen_ai.usage.input_tokens"] == 200 and a["gen_ai.usage.output_tokens"] == 20
    assert a["gen_ai.usage.cache_read.input_tokens"] == 40
    assert a["tierwise.tier"] == "casc" and a["tierwise.routing.reason"] == row["tier_source"]
    assert a["tierwise.cost_usd"] == pytest.approx(row["cost_usd"]) and a["tierwise.escalations"] == 1
    assert a["tierwise.principal"] == "anonymous" and root.status.status_code is StatusCode.UNSET
    assert root.end_time - root.start_time == pytest.approx(row["latency_ms"] * 1e6, rel=1e-6)
    assert root.start_time == pytest.approx(row["ts"] * 1e9, abs=1e3)
    assert [c.name for c in children] == ["chat small", "chat large"]
    assert [c.attributes["tierwise.attempt.outcome"] for c in children] == ["escalated", "ok"]
    assert all(c.kind is SpanKind.CLIENT and c.context.trace_id == root.context.trace_id for c in children)
    small = children[0].attributes
    assert small["gen_ai.request.model"] == "small" and small["tierwise.cascade.confidence"] == pytest.approx(0.3679,
                                                                                                           abs=1e-4)
    assert small["gen_ai.usage.input_tokens"] == 100
    assert small["tierwise.cost_usd"] == pytest.approx(row["attempts"][0]["cost_usd"])
    assert children[0].end_time <= children[1].start_time  # laid one after the other, within the request
    assert root.start_time <= children[0].start_time and children[1].end_time <= root.end_time + 1e6
    for s in spans.get_finished_spans():  # never the prompt or the answer
        assert all(PROMPT not in str(v) and "Hello!" not in str(v) for v in s.attributes.values())


def test_fallback_and_error_spans(traced: tuple[GatewayServer, InMemorySpanExporter],
                                  upstream: FakeUpstream) -> None:
    gw, spans = traced
    upstream.http_error(401)
    assert httpx.post(gw.base_url + "/chat/completions", json={"model": "chat", "messages": MSG}).status_code == 200
    (root, children), = tree(spans.get_finished_spans()).items()
    assert root.attributes["tierwise.fallbacks"] == 1 and root.status.status_code is StatusCode.UNSET
    assert [(c.name, c.status.status_code) for c in children] == [("chat large", StatusCode.ERROR),
                                                                  ("chat small", StatusCode.UNSET)]
    assert children[0].attributes["error.type"] == "auth" and children[0].attributes["http.response.status_code"] == 401
    spans.clear()
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": "nope", "messages": MSG})
    assert r.status_code == 404
    (root, children), = tree(spans.get_finished_spans()).items()
    assert children == [] and root.status.status_code is StatusCode.ERROR
    assert root.attributes["error.type"] == "rejected" and root.attributes["http.response.status_code"] == 404
    assert root.attributes["gen_ai.request.model"] == "nope" and "gen_ai.response.model" not in root.attributes


def test_tracing_config_problems(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/v1"
    cfg = config_for(url, tmp_path, extra="telemetry: {tracing: {enabled: true, exporter: otlp}}\n")
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401
        has_otlp = True
    except ImportError:
        has_otlp = False
    problems = dict(telemetry_problems(cfg, {}))
    if has_otlp:
        assert problems == {}
    else:
        assert "opentelemetry-exporter-otlp-proto-http" in problems["telemetry.tracing"]
    assert telemetry_problems(config_for(url, tmp_path, extra="telemetry: {tracing: {enabled: true, exporter: "
                                                              "console}}\n"), {}) == []
    cfg = config_for(url, tmp_path, extra="telemetry: {metrics: {listener: admin, token_env: NOPE}}\n")
    problems = dict(telemetry_problems(cfg, {"NOPE": "short"}))
    assert "own listener" in problems["telemetry.metrics.listener"]
    assert "NOPE" in problems["telemetry.metrics.token_env"]


def test_otlp_export_reaches_a_collector(upstream: FakeUpstream, tmp_path: Path) -> None:
    """exporter: otlp against a real OTLP/HTTP receiver on loopback: the spans arrive as protobuf when the gateway
    stops (the batch processor is flushed at shutdown)."""
    import asyncio
    import threading

    from aiohttp import web
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    got: list[bytes] = []
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    async def receive(request: web.Request) -> web.Response:
        got.append(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def serve() -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/v1/traces", receive)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port.append(runner.addresses[0][1])
        return runner

    def run() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(serve())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    extra = (f"telemetry: {{tracing: {{enabled: true, exporter: otlp, endpoint: 'http://127.0.0.1:{port[0]}/v1/traces',"
             " service_name: tw-test}}\n")
    gw = GatewayServer(config_for(upstream.base_url, tmp_path, extra=extra)).start()
    try:
        assert httpx.post(gw.base_url + "/chat/completions", json={"model": "chat", "messages": MSG}).status_code == 200
        rid = gw.rows()[-1]["id"]
    finally:
        gw.stop()  # flushes the batch processor
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    spans = []
    for body in got:
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        for rs in req.resource_spans:
            service = {a.key: a.value.string_value for a in rs.resource.attributes}["service.name"]
            assert service == "tw-test"
            for ss in rs.scope_spans:
                spans += list(ss.spans)
    assert sorted(s.name for s in spans) == ["chat chat", "chat large"]
    root = next(s for s in spans if s.name == "chat chat")
    attrs = {a.key: a.value for a in root.attributes}
    assert attrs["gen_ai.response.id"].string_value == rid and attrs["gen_ai.usage.output_tokens"].int_value > 0
    child = next(s for s in spans if s.name == "chat large")
    assert child.parent_span_id == root.span_id and child.trace_id == root.trace_id
