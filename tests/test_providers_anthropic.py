"""AnthropicProvider: request/response translation (pure) and the adapter over loopback HTTP against FakeUpstream."""

from __future__ import annotations

import json
from functools import partial

import pytest
from fakes import FakeUpstream
from schemas import errors as schema_errors

from tests.provider_calls import collect
from tests.provider_calls import expect_error as expect_upstream_error
from tierwise.config.schema import ProviderConfig
from tierwise.providers.anthropic import AnthropicProvider, StreamTranslator
from tierwise.providers.anthropic_translate import from_anthropic_response, to_anthropic_request
from tierwise.types import ErrorKind, UpstreamError, Usage

BODY = {"model": "claude-test", "messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Hi"}]}
PNG = "iVBORw0KGgoAAAANSUhEUg=="


def assert_conforms(obj: dict, name: str) -> None:
    problems = schema_errors(obj, name)
    assert not problems, problems


# ---- request translation (pure) ---------------------------------------------------------------------------------


def test_system_and_developer_messages_become_system() -> None:
    req = to_anthropic_request({"model": "m", "messages": [
        {"role": "system", "content": "A."},
        {"role": "developer", "content": [{"type": "text", "text": "B."}]},
        {"role": "user", "content": "hi"},
    ]})
    assert req == {"model": "m", "system": "A.\n\nB.", "max_tokens": 4096,
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}


def test_content_parts_and_images() -> None:
    req = to_anthropic_request({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]}]})
    assert req["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_tool_round_trip_messages() -> None:
    req = to_anthropic_request({"model": "m", "messages": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "wx", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "wx", "arguments": '{"city": "Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
        {"role": "user", "content": "Thanks, and tomorrow?"},
    ]})
    assert [m["role"] for m in req["messages"]] == ["user", "assistant", "user"]
    assert req["messages"][1]["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "wx", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "wx", "input": {"city": "Rome"}},
    ]
    assert req["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
        {"type": "text", "text": "Thanks, and tomorrow?"},
    ]


def test_consecutive_user_turns_merge_and_empty_content_is_skipped() -> None:
    req = to_anthropic_request({"model": "m", "messages": [
        {"role": "user", "content": "a"}, {"role": "user", "content": ""}, {"role": "user", "content": "b"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}]},
    ]})
    assert req["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c", "name": "f", "input": {}}]},
    ]


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    ("auto", None, {"type": "auto"}),
    ("none", None, {"type": "none"}),
    ("required", None, {"type": "any"}),
    ({"type": "function", "function": {"name": "wx"}}, None, {"type": "tool", "name": "wx"}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    (None, None, None),
])
def test_tools_and_tool_choice(choice: object, parallel: object, expected: dict | None) -> None:
    body: dict = {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [
        {"type": "function", "function": {"name": "wx", "description": "Weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "noargs"}},
    ]}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    req = to_anthropic_request(body)
    assert req["tools"] == [
        {"name": "wx", "description": "Weather", "input_schema": {"type": "object",
                                                                  "properties": {"city": {"type": "string"}}}},
        {"name": "noargs", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert req.get("tool_choice") == expected


def test_sampling_limits_and_metadata() -> None:
    req = to_anthropic_request({**BODY, "stop": "END", "max_tokens": 100, "max_completion_tokens": 200,
                                "temperature": 1.6, "top_p": 0.9, "user": "u-42", "top_k": 5,
                                "logprobs": True, "seed": 3, "frequency_penalty": 0.5, "stream": True})
    assert req["stop_sequences"] == ["END"]
    assert req["max_tokens"] == 200
    assert req["temperature"] == 1.0  # Anthropic's range is 0..1
    assert (req["top_p"], req["top_k"], req["metadata"], req["stream"]) == (0.9, 5, {"user_id": "u-42"}, True)
    assert not {"logprobs", "seed", "frequency_penalty", "user", "stop"} & set(req)
    assert to_anthropic_request({**BODY, "stop": ["a", "b"]})["stop_sequences"] == ["a", "b"]


def test_response_format_is_a_system_instruction() -> None:
    schema = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
    req = to_anthropic_request({**BODY, "response_format": {"type": "json_schema",
                                                            "json_schema": {"name": "x", "schema": schema}}})
    assert req["system"].startswith("Be brief.\n\n")
    assert json.dumps(schema, separators=(",", ":")) in req["system"]
    req = to_anthropic_request({**BODY, "response_format": {"type": "json_object"}})
    assert "valid JSON object" in req["system"]


def test_cache_control_is_kept() -> None:
    req = to_anthropic_request({"model": "m", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "long doc", "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "q"}]})
    assert req["system"] == [{"type": "text", "text": "long doc", "cache_control": {"type": "ephemeral"}}]


@pytest.mark.parametrize("body", [
    {"model": "m", "messages": []},
    {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2},
    {"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
    {"model": "m", "messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]},
    {"model": "m", "messages": [{"role": "tool", "content": "orphan"}]},
])
def test_untranslatable_requests_are_client_errors(body: dict) -> None:
    with pytest.raises(UpstreamError) as info:
        to_anthropic_request(body)
    assert info.value.kind is ErrorKind.CLIENT


# ---- response translation (pure) ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("stop_reason", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
    ("refusal", "content_filter"), ("pause_turn", "stop"), (None, "stop"),
])
def test_stop_reasons(stop_reason: str | None, finish: str) -> None:
    msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "stop_reason": stop_reason,
           "content": [{"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "A"},
                       {"type": "text", "text": "B"}],
           "usage": {"input_tokens": 5, "output_tokens": 2}}
    result = from_anthropic_response(msg, "fallback")
    assert_conforms(result.body, "CreateChatCompletionResponse")
    assert (result.finish_reason, result.text, result.body["model"]) == (finish, "AB", "claude-x")
    assert result.usage == Usage(input_tokens=5, output_tokens=2)


def test_tool_use_response() -> None:
    msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "stop_reason": "tool_use",
           "content": [{"type": "tool_use", "id": "toolu_9", "name": "wx", "input": {"city": "Oslo"}}],
           "usage": {"input_tokens": 5, "output_tokens": 2}}
    result = from_anthropic_response(msg, "m")
    assert_conforms(result.body, "CreateChatCompletionResponse")
    message = result.body["choices"][0]["message"]
    assert message["content"] is None and result.text == ""
    assert message["tool_calls"] == [{"id": "toolu_9", "type": "function",
                                      "function": {"name": "wx", "arguments": '{"city":"Oslo"}'}}]


def test_stream_translator_error_events_map_by_type() -> None:
    for etype, kind in [("overloaded_error", ErrorKind.SERVER), ("rate_limit_error", ErrorKind.RATE_LIMIT),
                        ("invalid_request_error", ErrorKind.CLIENT), ("authentication_error", ErrorKind.AUTH),
                        ("not_found_error", ErrorKind.NOT_FOUND), ("something_new", ErrorKind.SERVER)]:
        with pytest.raises(UpstreamError) as info:
            StreamTranslator("a", "m").feed({"type": "error", "error": {"type": etype, "message": "x"}})
        assert info.value.kind is kind


def test_stream_translator_ignores_ping_and_thinking() -> None:
    t = StreamTranslator("a", "m")
    assert t.feed({"type": "ping"}) == []
    t.feed({"type": "message_start", "message": {"id": "msg_1", "model": "m", "usage": {"input_tokens": 3}}})
    assert t.feed({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "thinking_delta", "thinking": "..."}}) == []
    assert t.feed({"type": "some_future_event"}) == []


# ---- over HTTP ---------------------------------------------------------------------------------------------------


@pytest.fixture
async def provider(fake: FakeUpstream):
    cfg = ProviderConfig(format="anthropic", base_url=fake.base_url, api_key="ant-test-key-0001")
    p = AnthropicProvider("claude", cfg)
    yield p
    await p.aclose()


async def test_complete_over_http(provider: AnthropicProvider, fake: FakeUpstream) -> None:
    fake.set(reply="Hello from Claude", prompt_tokens=20)
    result = await provider.complete(dict(BODY), timeout_s=5)
    assert_conforms(result.body, "CreateChatCompletionResponse")
    assert (result.text, result.finish_reason) == ("Hello from Claude", "stop")
    req = fake.last_request
    assert req.path == "/v1/messages"
    assert req.headers["x-api-key"] == "ant-test-key-0001" and req.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in req.headers
    assert req.body == {"model": "claude-test", "system": "Be brief.", "max_tokens": 4096,
                        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}


async def test_cache_usage_is_exact(provider: AnthropicProvider, fake: FakeUpstream) -> None:
    fake.set(prompt_tokens=1000, cached_tokens=600, cache_creation_tokens=300, completion_tokens=42)
    expected = Usage(input_tokens=100, output_tokens=42, cache_read_tokens=600, cache_write_tokens=300)
    result = await provider.complete(dict(BODY), timeout_s=5)
    assert result.usage == expected
    assert result.body["usage"]["prompt_tokens"] == 1000
    assert result.body["usage"]["prompt_tokens_details"]["cached_tokens"] == 600
    chunks = await collect(provider, dict(BODY))
    assert [c.usage for c in chunks if c.usage is not None] == [expected]


async def test_stream_over_http(provider: AnthropicProvider, fake: FakeUpstream) -> None:
    fake.set(reply="one two three", prompt_tokens=8)
    chunks = await collect(provider, {**BODY, "max_tokens": 50})
    for chunk in chunks:
        assert_conforms(chunk.body, "CreateChatCompletionStreamResponse")
    assert chunks[0].body["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c.text for c in chunks) == "one two three"
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert chunks[-1].body["choices"] == [] and chunks[-1].usage == Usage(input_tokens=8, output_tokens=3)
    assert fake.last_request.body["stream"] is True and fake.last_request.body["max_tokens"] == 50


async def test_tool_calls_over_http(provider: AnthropicProvider, fake: FakeUpstream) -> None:
    fake.set(reply="Let me check.", tool_calls=[{"name": "wx", "arguments": {"city": "Oslo"}},
                                                {"name": "tz", "arguments": {"city": "Oslo", "dst": True}}])
    tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in ("wx", "tz")]
    result = await provider.complete({**BODY, "tools": tools, "tool_choice": "required"}, timeout_s=5)
    assert_conforms(result.body, "CreateChatCompletionResponse")
    assert result.finish_reason == "tool_calls" and result.text == "Let me check."
    calls = result.body["choices"][0]["message"]["tool_calls"]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("wx", {"city": "Oslo"}), ("tz", {"city": "Oslo", "dst": True})]
    assert fake.last_request.body["tool_choice"] == {"type": "any"}

    chunks = await collect(provider, {**BODY, "tools": tools})
    streamed: dict[int, dict] = {}
    for chunk in chunks:
        assert_conforms(chunk.body, "CreateChatCompletionStreamResponse")
        for choice in chunk.body["choices"]:
            for tc in choice["delta"].get("tool_calls", []):
                entry = streamed.setdefault(tc["index"], {"id": tc.get("id"), "name": "", "arguments": ""})
                entry["name"] += tc.get("function", {}).get("name", "")
                entry["arguments"] += tc.get("function", {}).get("arguments", "")
    assert [(e["name"], json.loads(e["arguments"])) for e in streamed.values()] == [
        ("wx", {"city": "Oslo"}), ("tz", {"city": "Oslo", "dst": True})]
    assert all(e["id"].startswith("toolu_") for e in streamed.values())
    assert "".join(c.text for c in chunks) == "Let me check."
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]


async def test_empty_length(provider: AnthropicProvider, fake: FakeUpstream) -> None:
    fake.empty_length()
    result = await provider.complete({**BODY, "max_tokens": 32}, timeout_s=5)
    assert (result.finish_reason, result.text) == ("length", "")


expect_error = partial(expect_upstream_error, body=BODY)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("status", "kind"), [(529, ErrorKind.SERVER), (500, ErrorKind.SERVER),
                                              (400, ErrorKind.CLIENT), (413, ErrorKind.CLIENT),
                                              (401, ErrorKind.AUTH), (403, ErrorKind.AUTH),
                                              (404, ErrorKind.NOT_FOUND)])
async def test_status_mapping(provider: AnthropicProvider, fake: FakeUpstream, status: int, kind: ErrorKind,
                              stream: bool) -> None:
    fake.http_error(status)
    err = await expect_error(provider, stream=stream)
    assert (err.kind, err.status) == (kind, status)
    assert err.body is not None and err.body["message"] == f"fake upstream error {status}"
    assert err.message == f"{provider.name}: HTTP {status} (type={err.body['type']})"  # no upstream text


async def test_rate_limit_retry_after(provider: AnthropicProvider, fake: FakeUpstream) -> None:
    fake.http_error(429, retry_after=4)
    err = await expect_error(provider)
    assert (err.kind, err.retry_after_s) == (ErrorKind.RATE_LIMIT, 4.0)


async def test_transport_faults(provider: AnthropicProvider, fake: FakeUpstream) -> None:
    fake.delay(2.0)
    assert (await expect_error(provider, timeout_s=0.2)).kind is ErrorKind.TIMEOUT
    fake.close_connection()
    assert (await expect_error(provider, stream=True)).kind is ErrorKind.CONNECTION
    fake.garbage_body()
    assert (await expect_error(provider)).kind is ErrorKind.BAD_RESPONSE
    fake.garbage_body()
    assert (await expect_error(provider, stream=True)).kind is ErrorKind.BAD_RESPONSE
    fake.raw_response("<html>proxy error</html>", content_type="text/html")
    assert (await expect_error(provider, stream=True)).kind is ErrorKind.BAD_RESPONSE
    fake.raw_response({"id": "msg_1", "type": "message", "content": "not a list"})
    assert (await expect_error(provider)).kind is ErrorKind.BAD_RESPONSE


async def test_mid_stream_disconnect(provider: AnthropicProvider, fake: FakeUpstream) -> None:
    fake.set(reply="alpha beta gamma delta")
    fake.disconnect_mid_stream(after_chunks=3)  # block start + two text deltas
    got = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in provider.stream(dict(BODY), timeout_s=5):
            got.append(chunk)
    assert info.value.kind is ErrorKind.CONNECTION
    assert "".join(c.text for c in got) == "alpha beta"


@pytest.mark.parametrize(("etype", "kind"), [("overloaded_error", ErrorKind.SERVER),
                                             ("rate_limit_error", ErrorKind.RATE_LIMIT)])
async def test_error_event_mid_stream(provider: AnthropicProvider, fake: FakeUpstream, etype: str,
                                      kind: ErrorKind) -> None:
    fake.stream_error(after_chunks=2, error_type=etype)
    assert (await expect_error(provider, stream=True)).kind is kind


async def test_translation_errors_never_reach_the_wire(provider: AnthropicProvider, fake: FakeUpstream) -> None:
    with pytest.raises(UpstreamError) as info:
        await provider.complete({**BODY, "n": 3}, timeout_s=5)
    assert info.value.kind is ErrorKind.CLIENT and fake.calls == 0
