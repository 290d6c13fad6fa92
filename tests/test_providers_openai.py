"""OpenAIProvider over real loopback HTTP against FakeUpstream: schema conformance, usage, tools, faults, drift."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from functools import partial

import pytest
from fakes import FakeUpstream
from schemas import errors as schema_errors

from tests.provider_calls import collect
from tests.provider_calls import expect_error as expect_upstream_error
from tierwise.config.schema import ProviderConfig
from tierwise.providers.base import Provider
from tierwise.providers.errors import parse_retry_after
from tierwise.providers.openai import OpenAIProvider
from tierwise.providers.registry import build_provider
from tierwise.types import ErrorKind, UpstreamError, Usage

BODY = {"model": "gpt-test", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}


@pytest.fixture
async def provider(fake: FakeUpstream):
    p = OpenAIProvider("up", ProviderConfig(format="openai", base_url=fake.base_url, api_key="sk-test-key-123456"))
    yield p
    await p.aclose()


def assert_conforms(obj: dict, name: str) -> None:
    problems = schema_errors(obj, name)
    assert not problems, problems


# ---- happy paths -------------------------------------------------------------------------------------------------


async def test_complete_conforms_and_reports_text_usage(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    fake.set(reply="Hello there friend", prompt_tokens=12)
    result = await provider.complete(dict(BODY), timeout_s=5)
    assert_conforms(result.body, "CreateChatCompletionResponse")
    assert result.text == "Hello there friend"
    assert result.finish_reason == "stop"
    assert result.usage == Usage(input_tokens=12, output_tokens=3)
    assert result.logprobs is None
    req = fake.last_request
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer sk-test-key-123456"
    assert isinstance(provider, Provider)


async def test_usage_with_cached_and_reasoning_tokens_is_exact(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    fake.set(prompt_tokens=1000, cached_tokens=800, completion_tokens=50, reasoning_tokens=20)
    result = await provider.complete(dict(BODY), timeout_s=5)
    assert result.usage == Usage(input_tokens=200, output_tokens=50, cache_read_tokens=800, reasoning_tokens=20)
    chunks = await collect(provider, dict(BODY))
    usages = [c.usage for c in chunks if c.usage is not None]
    assert usages == [Usage(input_tokens=200, output_tokens=50, cache_read_tokens=800, reasoning_tokens=20)]


async def test_logprobs_become_a_float_list(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    fake.set(reply="one two three", logprob=-0.5)
    result = await provider.complete({**BODY, "logprobs": True, "top_logprobs": 2}, timeout_s=5)
    assert result.logprobs == [-0.5, -0.5, -0.5]
    assert_conforms(result.body, "CreateChatCompletionResponse")


async def test_request_body_is_forwarded_untouched(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    body = {**BODY, "x_vendor": {"nested": [1, 2]}, "seed": 7, "metadata": {"k": "v"}, "temperature": 0.3}
    snapshot = json.loads(json.dumps(body))
    await provider.complete(body, timeout_s=5)
    assert fake.last_request.body == snapshot
    assert body == snapshot  # the caller's dict is not mutated


async def test_stream_sets_stream_options_and_keeps_the_rest(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    body = {**BODY, "x_vendor": True, "stream_options": {"x_opt": 1}}
    await collect(provider, body)
    sent = fake.last_request.body
    assert sent["stream"] is True
    assert sent["stream_options"] == {"x_opt": 1, "include_usage": True}
    assert {k: v for k, v in sent.items() if k not in ("stream", "stream_options")} == {**BODY, "x_vendor": True}
    assert body["stream_options"] == {"x_opt": 1}


async def test_complete_turns_off_stream_flag(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    await provider.complete({**BODY, "stream": True, "stream_options": {"include_usage": True}}, timeout_s=5)
    sent = fake.last_request.body
    assert sent["stream"] is False and "stream_options" not in sent


async def test_stream_chunks_conform_and_end_with_usage(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    fake.set(reply="a b c d", prompt_tokens=9)
    chunks = await collect(provider, dict(BODY))
    for chunk in chunks:
        assert_conforms(chunk.body, "CreateChatCompletionStreamResponse")
        assert "usage" not in chunk.body or chunk.body["usage"] is not None
    assert chunks[0].body["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c.text for c in chunks) == "a b c d"
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    last = chunks[-1]
    assert last.body["choices"] == [] and last.usage == Usage(input_tokens=9, output_tokens=4)
    assert len({c.body["id"] for c in chunks}) == 1


async def test_stream_without_upstream_usage_leaves_usage_none(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    fake.set(include_usage_in_stream=False)
    chunks = await collect(provider, dict(BODY))
    assert chunks[-1].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


async def test_tool_calls_non_streaming(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    fake.set(reply="", tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}])
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    result = await provider.complete({**BODY, "tools": tools, "tool_choice": "auto"}, timeout_s=5)
    assert_conforms(result.body, "CreateChatCompletionResponse")
    assert result.finish_reason == "tool_calls" and result.text == ""
    (call,) = result.body["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "unit": "c"}
    assert fake.last_request.body["tools"] == tools


async def test_tool_calls_streaming_reassemble(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    fake.set(reply="", tool_calls=[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {"y": [2, 3]}}])
    chunks = await collect(provider, dict(BODY))
    calls: dict[int, dict] = {}
    for chunk in chunks:
        assert_conforms(chunk.body, "CreateChatCompletionStreamResponse")
        for choice in chunk.body["choices"]:
            for tc in choice["delta"].get("tool_calls", []):
                entry = calls.setdefault(tc["index"], {"name": "", "arguments": "", "id": None})
                entry["id"] = tc.get("id", entry["id"])
                entry["name"] += tc.get("function", {}).get("name", "")
                entry["arguments"] += tc.get("function", {}).get("arguments", "")
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [("a", {"x": 1}), ("b", {"y": [2, 3]})]
    assert all(c["id"] for c in calls.values())
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]


async def test_empty_length_is_reported_not_hidden(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    fake.empty_length()
    result = await provider.complete({**BODY, "max_completion_tokens": 64}, timeout_s=5)
    assert result.finish_reason == "length" and result.text == ""
    assert result.usage.output_tokens == 64 and result.usage.reasoning_tokens == 64


# ---- faults -> ErrorKind -------------------------------------------------------------------------------------------


expect_error = partial(expect_upstream_error, body=BODY)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("status", "kind"), [(500, ErrorKind.SERVER), (503, ErrorKind.SERVER),
                                              (400, ErrorKind.CLIENT), (401, ErrorKind.AUTH),
                                              (403, ErrorKind.AUTH), (404, ErrorKind.NOT_FOUND),
                                              (408, ErrorKind.TIMEOUT)])
async def test_http_status_maps_to_kind(provider: OpenAIProvider, fake: FakeUpstream, status: int, kind: ErrorKind,
                                        stream: bool) -> None:
    fake.http_error(status)
    err = await expect_error(provider, stream=stream)
    assert (err.kind, err.status) == (kind, status)
    assert err.message.startswith(f"up: HTTP {status}")
    assert "fake upstream error" not in err.message  # the upstream's text is never in the message
    assert err.body is not None and err.body["message"] == f"fake upstream error {status}"


async def test_rate_limit_carries_retry_after_seconds(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    fake.http_error(429, retry_after=7)
    err = await expect_error(provider)
    assert err.kind is ErrorKind.RATE_LIMIT and err.retry_after_s == 7.0 and err.kind.retryable


async def test_rate_limit_retry_after_ms_and_http_date(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    fake.http_error(429, retry_after=30, retry_after_ms=1500)
    assert (await expect_error(provider)).retry_after_s == 1.5
    fake.http_error(429, retry_after=format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True))
    assert 15 <= (await expect_error(provider, stream=True)).retry_after_s <= 21


async def test_auth_error_drops_upstream_text(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    body = {"error": {"message": "Incorrect API key provided: sk-proj-abcdefghijkl1234.\x00", "type": "x",
                      "param": None, "code": "invalid_api_key"}}
    fake.http_error(401, body=body)
    err = await expect_error(provider)
    assert err.kind is ErrorKind.AUTH and err.kind.falls_back and not err.kind.retryable
    assert err.message == "up: HTTP 401 (type=x, code=invalid_api_key)"
    assert err.body["code"] == "invalid_api_key"


async def test_timeout_before_headers(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    fake.delay(2.0)
    assert (await expect_error(provider, timeout_s=0.2)).kind is ErrorKind.TIMEOUT
    fake.delay(2.0)
    assert (await expect_error(provider, stream=True, timeout_s=0.2)).kind is ErrorKind.TIMEOUT


async def test_stall_between_chunks_is_a_timeout(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    fake.set(reply="a b c", inter_chunk_s=1.0)
    got = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in provider.stream(dict(BODY), timeout_s=0.3):
            got.append(chunk)
    assert info.value.kind is ErrorKind.TIMEOUT and got  # headers and first chunks arrived, then it stalled


@pytest.mark.parametrize("stream", [False, True])
async def test_dropped_connection(provider: OpenAIProvider, fake: FakeUpstream, stream: bool) -> None:
    fake.close_connection()
    assert (await expect_error(provider, stream=stream)).kind is ErrorKind.CONNECTION


async def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = OpenAIProvider("dead", ProviderConfig(format="openai", base_url=f"http://127.0.0.1:{port}/v1"))
    try:
        err = await expect_error(p)
        assert err.kind is ErrorKind.CONNECTION and "cannot connect" in err.message
    finally:
        await p.aclose()


async def test_mid_stream_disconnect(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    fake.set(reply="one two three four five")
    fake.disconnect_mid_stream(after_chunks=2)
    got = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in provider.stream(dict(BODY), timeout_s=5):
            got.append(chunk)
    assert info.value.kind is ErrorKind.CONNECTION
    assert "".join(c.text for c in got) == "one two"


async def test_body_cut_off_mid_response(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    fake.disconnect_mid_stream()
    assert (await expect_error(provider)).kind is ErrorKind.CONNECTION


@pytest.mark.parametrize("stream", [False, True])
async def test_garbage_body_is_bad_response(provider: OpenAIProvider, fake: FakeUpstream, stream: bool) -> None:
    fake.garbage_body()
    err = await expect_error(provider, stream=stream)
    assert err.kind is ErrorKind.BAD_RESPONSE and not err.kind.retryable


async def test_html_page_to_a_stream_request_is_bad_response(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    fake.raw_response("<html><body>Gateway error</body></html>", content_type="text/html")
    assert (await expect_error(provider, stream=True)).kind is ErrorKind.BAD_RESPONSE


async def test_wrong_shape_is_bad_response(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    fake.raw_response({"object": "chat.completion", "result": "no choices here"})
    assert (await expect_error(provider)).kind is ErrorKind.BAD_RESPONSE


async def test_error_object_with_200_status(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    fake.raw_response({"error": {"message": "model overloaded", "type": "server_error"}})
    err = await expect_error(provider)
    assert err.kind is ErrorKind.SERVER and "type=server_error" in err.message and "overloaded" not in err.message


async def test_error_event_mid_stream(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    fake.stream_error(after_chunks=1, error_type="server_error")
    assert (await expect_error(provider, stream=True)).kind is ErrorKind.SERVER


async def test_stream_cut_without_done_or_finish_is_an_error(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"content": "par"}, "finish_reason": None}]}
    fake.raw_response("data: " + json.dumps(chunk) + "\n\n", content_type="text/event-stream")
    assert (await expect_error(provider, stream=True)).kind is ErrorKind.CONNECTION


# ---- other servers' framing and drift -------------------------------------------------------------------------------


async def test_sse_framing_variants(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    """CRLF line ends, comments, no space after 'data:', a JSON chunk split over two data lines, usage: null."""
    c1 = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m", "usage": None,
          "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}]}
    c2 = dict(c1, choices=[{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}])
    c3 = dict(c1, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
    c4 = dict(c1, choices=[], usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
    c2_lines = "".join(f"data: {line}\r\n" for line in json.dumps(c2, indent=1).split("\n"))
    sse = (f": keep-alive\r\ndata:{json.dumps(c1)}\r\n\r\n"
           f"{c2_lines}\r\n"
           f"event: message\ndata: {json.dumps(c3)}\n\n: ping\n\ndata: {json.dumps(c4)}\n\ndata: [DONE]\n\n")
    fake.raw_response(sse, content_type="text/event-stream")
    chunks = await collect(provider, dict(BODY))
    assert "".join(c.text for c in chunks) == "Hello"
    assert chunks[-1].usage == Usage(input_tokens=3, output_tokens=2)
    for chunk in chunks:
        assert_conforms(chunk.body, "CreateChatCompletionStreamResponse")


async def test_vendor_drift_is_normalised(provider: OpenAIProvider, fake: FakeUpstream) -> None:
    drifted = {
        "choices": [{"message": {"role": "assistant", "content": "hi", "reasoning_content": "thought",
                                 "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
                     "finish_reason": "eos", "logprobs": {"tokens": ["hi"], "token_logprobs": [-0.1]}}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5, "prompt_tokens_details": None},
        "system_fingerprint": None,
    }
    fake.raw_response(drifted)
    result = await provider.complete(dict(BODY), timeout_s=5)
    assert_conforms(result.body, "CreateChatCompletionResponse")
    choice = result.body["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["logprobs"] == {"content": None, "refusal": None}
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"a": 1}
    assert choice["message"]["reasoning_content"] == "thought"  # allowed extra: kept
    assert result.body["model"] == "gpt-test" and result.body["id"].startswith("chatcmpl-")
    assert result.usage == Usage(input_tokens=4, output_tokens=1)


async def test_json_answer_to_a_stream_request_is_replayed_as_chunks(provider: OpenAIProvider,
                                                                     fake: FakeUpstream) -> None:
    fake.raw_response({"id": "c", "object": "chat.completion", "created": 5, "model": "m",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "whole"},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}})
    chunks = await collect(provider, dict(BODY))
    assert "".join(c.text for c in chunks) == "whole"
    assert chunks[-1].usage == Usage(input_tokens=2, output_tokens=1)
    for chunk in chunks:
        assert_conforms(chunk.body, "CreateChatCompletionStreamResponse")


# ---- keys, registry, helpers ---------------------------------------------------------------------------------------


async def test_key_from_environment_and_wrong_key(fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.set(api_key="sk-right-1234567890")
    monkeypatch.setenv("TW_TEST_KEY", "sk-right-1234567890")
    good = build_provider("env", ProviderConfig(format="openai", base_url=fake.base_url, api_key_env="TW_TEST_KEY"))
    bad = build_provider("lit", ProviderConfig(format="openai", base_url=fake.base_url, api_key="sk-wrong-123456"))
    try:
        assert (await good.complete(dict(BODY), timeout_s=5)).text
        err = await expect_error(bad)
        assert (err.kind, err.status) == (ErrorKind.AUTH, 401)
        assert "sk-wrong" not in repr(bad) and "sk-right" not in repr(good)
    finally:
        await good.aclose()
        await bad.aclose()


def test_retry_after_parsing() -> None:
    assert parse_retry_after({"retry-after": "12"}) == 12.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "-3"}) is None
    assert parse_retry_after({}) is None
