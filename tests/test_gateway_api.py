"""The OpenAI-compatible API end to end: real gateway, real fake upstream, the official openai client."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer
from tests.schemas import validate

MSG = [{"role": "user", "content": "Classify: my card was charged twice"}]


def test_non_streaming_conforms_and_sets_headers(client: openai.OpenAI, gateway: GatewayServer) -> None:
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=MSG)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello! How can I help you today?"
    assert completion.model == "large"  # the tierwise model name, not the upstream's
    h = raw.headers
    assert h["x-tierwise-tier"] == "chat"
    assert h["x-tierwise-tier-source"] == "auto-default"
    assert h["x-tierwise-model"] == "large"
    assert h["x-tierwise-escalations"] == "0"
    assert h["x-tierwise-request-id"].startswith("chatcmpl-tw-")
    assert float(h["x-tierwise-cost-usd"]) > 0
    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    row = gateway.rows()[-1]
    assert row["id"] == h["x-tierwise-request-id"]
    assert row["model"] == "large" and row["status"] == "ok" and row["tier"] == "chat"
    assert row["cost_usd"] == pytest.approx(float(h["x-tierwise-cost-usd"]), abs=1e-10)


def test_streaming_with_usage_conforms(client: openai.OpenAI, upstream: FakeUpstream, gateway: GatewayServer) -> None:
    upstream.set(reply="one two three four", prompt_tokens=40, completion_tokens=4)
    with client.chat.completions.with_streaming_response.create(
        model="label", messages=MSG, stream=True, stream_options={"include_usage": True}
    ) as resp:
        assert resp.headers["x-tierwise-tier"] == "label"
        assert resp.headers["x-tierwise-cost-estimated"] == "true"
        chunks = list(resp.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert all(c.model == "small" for c in chunks)
    row = gateway.rows()[-1]
    assert row["stream"] is True and row["status"] == "ok"
    assert (row["input_tokens"], row["output_tokens"]) == (40, 4)
    assert row["cost_usd"] == pytest.approx((40 * 0.1 + 4 * 0.4) / 1e6, rel=1e-12)
    assert row["ttft_ms"] is not None


def test_stream_chunks_validate_against_schema(gateway: GatewayServer) -> None:
    import orjson

    body = {"model": "chat", "messages": MSG, "stream": True}
    with httpx.stream("POST", gateway.base_url + "/chat/completions", json=body, timeout=10) as r:
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    for ln in lines[:-1]:
        validate(orjson.loads(ln[6:]), "CreateChatCompletionStreamResponse")
    # the client did not ask for usage: no usage-only chunk is forwarded
    assert all(orjson.loads(ln[6:]).get("choices") for ln in lines[:-1])


def test_models_health_ready(client: openai.OpenAI, gateway: GatewayServer) -> None:
    models = client.models.list()
    ids = {m.id for m in models.data}
    assert {"auto", "chat", "label", "small", "large", "fb"} <= ids
    validate(httpx.get(gateway.base_url + "/models").json(), "ListModelsResponse")
    assert httpx.get(gateway.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gateway.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_explicit_routing_header_endpoint_and_direct_model(gateway: GatewayServer, upstream: FakeUpstream) -> None:
    c = openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0, default_headers={"X-Task": "label"})
    raw = c.chat.completions.with_raw_response.create(model="auto", messages=MSG)
    assert (raw.headers["x-tierwise-tier"], raw.headers["x-tierwise-tier-source"]) == ("label", "header")
    assert upstream.last_request.body["model"] == "small-up"
    tier_client = openai.OpenAI(base_url=gateway.base_url + "/tiers/label", api_key="x", max_retries=0)
    raw = tier_client.chat.completions.with_raw_response.create(model="whatever-is-ignored", messages=MSG)
    assert raw.headers["x-tierwise-tier-source"] == "endpoint"
    plain = openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0)
    raw = plain.chat.completions.with_raw_response.create(model="fb", messages=MSG)
    assert raw.headers["x-tierwise-model"] == "fb"


def test_fields_pass_through_untouched(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "description": "find",
                                               "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]
    client.chat.completions.create(
        model="chat", messages=MSG, tools=tools, tool_choice="auto", response_format={"type": "json_object"},
        temperature=0.3, stop=["\n\n"], n=1, user="u-42", seed=7,
        extra_body={"vendor_extension": {"keep": [1, 2, 3]}, "top_k": 5},
    )
    sent = upstream.last_request.body
    assert sent["model"] == "large-up"
    assert sent["tools"] == tools and sent["tool_choice"] == "auto"
    assert sent["response_format"] == {"type": "json_object"}
    assert (sent["temperature"], sent["stop"], sent["n"], sent["user"], sent["seed"]) == (0.3, ["\n\n"], 1, "u-42", 7)
    assert sent["vendor_extension"] == {"keep": [1, 2, 3]} and sent["top_k"] == 5
    assert "authorization" in upstream.last_request.headers


def test_tool_calls_come_back(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.set(tool_calls=[{"name": "lookup", "arguments": {"q": "refund"}}])
    c = client.chat.completions.create(model="chat", messages=MSG, tools=[
        {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}])
    call = c.choices[0].message.tool_calls[0]
    assert call.function.name == "lookup" and call.function.arguments == '{"q":"refund"}'
    assert c.choices[0].finish_reason == "tool_calls"


def test_anthropic_model_through_gateway(client: openai.OpenAI, anthropic_upstream: FakeUpstream,
                                         gateway: GatewayServer) -> None:
    anthropic_upstream.set(reply="Bonjour", prompt_tokens=1000, cached_tokens=800, cache_creation_tokens=100,
                           completion_tokens=10)
    c = client.chat.completions.create(model="claude", messages=[{"role": "system", "content": "be brief"}, *MSG])
    assert c.choices[0].message.content == "Bonjour"
    assert c.usage.prompt_tokens == 1000 and c.usage.prompt_tokens_details.cached_tokens == 800
    sent = anthropic_upstream.last_request.body
    assert sent["system"] == "be brief" and sent["model"] == "claude-test"
    row = gateway.rows()[-1]
    assert (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]) == (100, 800, 100)
    # $3/M uncached in, $0.30/M cache read, $3.75/M cache write, $15/M out
    assert row["cost_usd"] == pytest.approx((100 * 3 + 800 * 0.3 + 100 * 3.75 + 10 * 15) / 1e6, rel=1e-12)


def test_cached_tokens_billed_once(client: openai.OpenAI, upstream: FakeUpstream, gateway: GatewayServer) -> None:
    upstream.set(prompt_tokens=2006, cached_tokens=1920, completion_tokens=300)
    client.chat.completions.create(model="chat", messages=MSG)
    row = gateway.rows()[-1]
    # large: $2.50/M input, $1.25/M cache read, $10/M output: 86*2.5 + 1920*1.25 + 300*10 = 5615 micro-dollars
    assert row["cost_usd"] == pytest.approx(0.005615, rel=1e-12)
    assert row["cost_breakdown"]["cache_read"] == pytest.approx(0.0024, rel=1e-12)


def test_anthropic_stream_through_gateway_conforms(anthropic_upstream: FakeUpstream, gateway: GatewayServer) -> None:
    import orjson

    anthropic_upstream.set(reply="Bonjour tout le monde", prompt_tokens=120, cached_tokens=100, completion_tokens=4)
    body = {"model": "claude", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", gateway.base_url + "/chat/completions", json=body, timeout=10) as r:
        events = [orjson.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: {")]
    for e in events:
        validate(e, "CreateChatCompletionStreamResponse")
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) == \
        "Bonjour tout le monde"
    assert events[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 100
    row = gateway.rows()[-1]
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (20, 100, 4)
    assert row["cost_usd"] == pytest.approx((20 * 3 + 100 * 0.3 + 4 * 15) / 1e6, rel=1e-12)
