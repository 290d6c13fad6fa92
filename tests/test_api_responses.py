"""POST /v1/responses driven by the official ``openai`` SDK (and raw HTTP for what the SDK will not send).

Stateless Responses over the chat engine: input items and instructions become the routed chat request, answers
and streams come back as response objects and events, and everything that needs stored state is a clear 400.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer

TOOLS: list[Any] = [{"type": "function", "name": "get_weather", "description": "weather of a city",
                     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]


def _events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if block.strip():
            lines = dict(line.split(": ", 1) for line in block.splitlines())
            out.append((lines["event"], orjson.loads(lines["data"])))
    return out


def test_create_with_instructions_and_usage(gateway: GatewayServer, client: openai.OpenAI,
                                            upstream: FakeUpstream) -> None:
    upstream.set(reply="Paris is the capital.", prompt_tokens=30, completion_tokens=5, cached_tokens=10)
    r = client.responses.create(model="chat", input="capital of France?", instructions="be brief",
                                max_output_tokens=64, temperature=0.2, metadata={"team": "geo"})
    assert r.object == "response" and r.status == "completed" and r.output_text == "Paris is the capital."
    assert r.model == "large" and r.id.startswith("resp_") and r.store is False
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.input_tokens_details.cached_tokens) == (30, 5, 10)
    sent = upstream.last_request.body
    assert sent["messages"] == [{"role": "system", "content": "be brief"},
                                {"role": "user", "content": "capital of France?"}]
    assert sent["max_completion_tokens"] == 64 and sent["temperature"] == 0.2 and "metadata" not in sent
    [row] = gateway.rows()
    assert row["status"] == "ok" and row["tags"] == {"team": "geo"} and "api: openai-responses" in row["notes"]
    assert (row["input_tokens"], row["cache_read_tokens"]) == (20, 10)
    assert row["cost_usd"] == pytest.approx((20 * 2.5 + 10 * 1.25 + 5 * 10) / 1e6)


def test_stream_events_and_completed_usage(gateway: GatewayServer, upstream: FakeUpstream) -> None:
    upstream.set(reply="one two", prompt_tokens=8, completion_tokens=2)
    r = httpx.post(gateway.base_url + "/responses", timeout=20, json={"model": "chat", "input": "hi", "stream": True})
    assert r.status_code == 200
    events = _events(r.content)
    names = [n for n, _ in events]
    assert names == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.completed"]
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    done = events[-1][1]["response"]
    assert done["status"] == "completed" and done["output"][0]["content"][0]["text"] == "one two"
    assert done["usage"]["input_tokens"] == 8 and done["usage"]["output_tokens"] == 2
    [row] = gateway.rows()
    assert row["stream"] and row["status"] == "ok"


def test_sdk_stream_on_an_anthropic_model(gateway: GatewayServer, client: openai.OpenAI,
                                          anthropic_upstream: FakeUpstream) -> None:
    anthropic_upstream.set(reply="streamed from claude", prompt_tokens=50, cached_tokens=20,
                           cache_creation_tokens=10, completion_tokens=3)
    with client.responses.stream(model="claude", input=[{"role": "user", "content": "hi"}]) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "streamed from claude" == final.output_text
    assert final.usage is not None and final.usage.input_tokens == 50
    [row] = gateway.rows()
    assert (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]) == (20, 20, 10)


def test_function_calls_and_their_outputs(gateway: GatewayServer, client: openai.OpenAI,
                                          upstream: FakeUpstream) -> None:
    upstream.set(reply="", tool_calls=[{"id": "call_9", "name": "get_weather", "arguments": {"city": "Oslo"}}])
    r = client.responses.create(model="chat", input="weather in Oslo?", tools=TOOLS, tool_choice="required")
    [call] = r.output
    assert call.type == "function_call" and call.call_id == "call_9" and call.arguments == '{"city":"Oslo"}'
    sent = upstream.last_request.body
    assert sent["tools"] == [{"type": "function", "function": {"name": "get_weather", "description":
                                                                "weather of a city",
                                                                "parameters": TOOLS[0]["parameters"]}}]
    assert sent["tool_choice"] == "required"
    upstream.set(reply="It is 3 C.", tool_calls=None)
    r2 = client.responses.create(model="chat", tools=TOOLS, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "weather in Oslo?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call", "call_id": "call_9", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
        {"type": "function_call_output", "call_id": "call_9", "output": "3 C"}])
    assert r2.output_text == "It is 3 C."
    assert upstream.last_request.body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather in Oslo?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_9", "content": "3 C"}]


def test_streamed_function_call(gateway: GatewayServer, client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.set(reply="", tool_calls=[{"name": "get_weather", "arguments": {"city": "Rome"}}])
    with client.responses.stream(model="chat", input="weather?", tools=TOOLS) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    [call] = final.output
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == '{"city":"Rome"}'


def test_text_format_and_length_limit(gateway: GatewayServer, client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.set(reply="a b c d e f g h")
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    r = client.responses.create(model="chat", input="x", max_output_tokens=3, text={
        "format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}})
    assert upstream.last_request.body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}}
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"


BAD = [
    ({"model": "chat", "input": "x", "previous_response_id": "resp_1"}, 400, "previous_response_id",
     "stores no responses"),
    ({"model": "chat", "input": "x", "store": True}, 400, "store", "stores no responses"),
    ({"model": "chat", "input": "x", "background": True}, 400, "background", "foreground"),
    ({"model": "chat", "input": "x", "conversation": "conv_1"}, 400, "conversation", "no conversations"),
    ({"model": "chat", "input": "x", "tools": [{"type": "web_search"}]}, 400, "tools[0].type", "built-in tools"),
    ({"model": "chat", "input": [{"type": "item_reference", "id": "msg_1"}]}, 400, "input[0].type", "not supported"),
    ({"model": "chat", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, 400,
     "input[0].content[0].type", "not supported"),
    ({"model": "chat", "input": []}, 400, "input", "non-empty"),
    ({"model": "chat"}, 400, "input", "'input' is required"),
    ({"input": "x"}, 400, "model", "'model' is required"),
    ({"model": "chat", "input": "x", "max_output_tokens": 0}, 400, "max_output_tokens", "integer >= 1"),
    ({"model": "chat", "input": "x", "temperature": "hot"}, 400, "temperature", "must be a number"),
    ({"model": "chat", "input": "x", "frobnicate": 1}, 400, "frobnicate", "not a Responses API field"),
    ({"model": "nope", "input": "x"}, 404, "model", "nope"),
]


@pytest.mark.parametrize(("body", "status", "param", "text"), BAD)
def test_unsupported_and_bad_requests(gateway: GatewayServer, upstream: FakeUpstream, body: dict, status: int,
                                      param: str, text: str) -> None:
    r = httpx.post(gateway.base_url + "/responses", json=body, timeout=20)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and text in err["message"]
    assert upstream.calls == 0
    [row] = gateway.rows()
    assert row["status"] == "rejected" and row["http_status"] == status


def test_hostile_body_and_sdk_errors(gateway: GatewayServer, client: openai.OpenAI, upstream: FakeUpstream) -> None:
    deep = b'{"model": "chat", "input": ' + b"[" * 80 + b"]" * 80 + b"}"
    r = httpx.post(gateway.base_url + "/responses", content=deep, headers={"content-type": "application/json"},
                   timeout=20)
    assert r.status_code == 400 and r.json()["error"]["code"] == "json_too_deep"
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="chat", input="x", previous_response_id="resp_123")
    for _ in range(20):
        upstream.http_error(503)
    with pytest.raises(openai.InternalServerError) as exc:
        client.responses.create(model="label", input="x")
    assert exc.value.status_code == 502
    assert [r["status"] for r in gateway.rows()] == ["rejected", "rejected", "error"]


def test_tier_endpoint(gateway: GatewayServer, upstream: FakeUpstream) -> None:
    c = openai.OpenAI(base_url=gateway.base_url + "/tiers/label", api_key="unused", max_retries=0)
    r = c.responses.create(model="anything", input="x")
    assert r.model == "small"
    [row] = gateway.rows()
    assert row["tier"] == "label" and row["tier_source"] == "endpoint"
