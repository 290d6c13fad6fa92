"""The pure translators of the client APIs: any JSON body is either translated or refused with a 400/404
:class:`APIError` (never another exception, which would be a 500), and the Messages-only hints are removed for
OpenAI-format upstreams without touching the caller's body."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierwise.apis.embeddings import parse_embeddings
from tierwise.apis.embeddings_config import EmbeddingsConfig
from tierwise.apis.message_events import MessageEvents
from tierwise.apis.messages import chat_to_message, messages_to_chat
from tierwise.apis.response_events import ResponseEvents
from tierwise.apis.responses import responses_to_chat
from tierwise.errors import APIError
from tierwise.providers.anthropic_translate import HINTS, strip_hints, to_anthropic_request
from tierwise.types import Usage

_scalars = st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8)
_keys = st.sampled_from(["model", "messages", "max_tokens", "role", "content", "type", "text", "tools", "name",
                         "input", "input_schema", "tool_choice", "tool_use_id", "system", "source", "stream",
                         "instructions", "function_call", "call_id", "arguments", "output", "cache_control",
                         "is_error", "metadata", "user_id", "stop_sequences", "data", "x"])
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=5),
                     max_leaves=30)
_roles = st.sampled_from(["user", "assistant", "system", "developer", 7])
_blocks = st.lists(st.fixed_dictionaries({"type": st.sampled_from(
    ["text", "image", "tool_use", "tool_result", "thinking", "document", "input_text", "function_call"])},
    optional={"text": _scalars, "id": _scalars, "name": _scalars, "input": _json, "content": _json,
              "source": _json, "tool_use_id": _scalars, "cache_control": _json, "is_error": _scalars}), max_size=4)
_message = st.fixed_dictionaries({"role": _roles}, optional={"content": st.text(max_size=5) | _blocks})
_body = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["chat", "", 3]) | st.text(max_size=4), "max_tokens": _scalars,
    "messages": st.lists(_message, max_size=4) | _json, "system": _json | _blocks, "tools": _json,
    "tool_choice": _json, "stream": _scalars, "metadata": _json, "stop_sequences": _json, "input": _json,
    "instructions": _json, "text": _json, "reasoning": _json, "store": _scalars, "cache_control": _json})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_body)
def test_translators_refuse_with_api_errors_only(body: dict[str, Any]) -> None:
    for translate in (messages_to_chat, responses_to_chat,
                      lambda b: parse_embeddings(b, EmbeddingsConfig(models=["e"]))):
        try:
            translate(dict(body))
        except APIError as err:
            assert err.status in (400, 404) and err.message


def test_strip_hints_copies_and_removes_only_messages_fields() -> None:
    body = messages_to_chat({
        "model": "m", "max_tokens": 5, "top_k": 3, "cache_control": {"type": "ephemeral"},
        "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": "r", "is_error": True}]}]})
    assert body[HINTS] is True
    stripped = strip_hints(body)
    assert stripped == {"model": "m", "max_tokens": 5, "messages": [
        {"role": "system", "content": [{"type": "text", "text": "s"}]},
        {"role": "tool", "tool_call_id": "t", "content": "r"}]}
    assert body["messages"][1]["is_error"] is True  # the caller's body (other rungs, other models) is untouched
    upstream = to_anthropic_request(body)  # the round trip to an Anthropic upstream keeps them
    assert upstream["top_k"] == 3 and upstream["cache_control"] == {"type": "ephemeral"}
    assert upstream["messages"][0]["content"][0]["is_error"] is True


def test_answers_with_invalid_tool_arguments_keep_them() -> None:
    chat = {"choices": [{"message": {"content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]},
        "finish_reason": "tool_calls"}]}
    msg = chat_to_message(chat, Usage(1, 2, 3, 4), "m", "msg_1")
    assert msg["content"] == [{"type": "tool_use", "id": "c1", "name": "f", "input": {"value": "{not json"}}]
    assert msg["usage"] == {"input_tokens": 1, "output_tokens": 2, "cache_read_input_tokens": 3,
                            "cache_creation_input_tokens": 4}
    assert msg["stop_reason"] == "tool_use"


@pytest.mark.parametrize("finish", ["stop", "length", "content_filter"])
def test_stream_writers_close_what_they_opened(finish: str) -> None:
    chunks = [{"choices": [{"delta": {"role": "assistant", "content": ""}}]},
              {"choices": [{"delta": {"content": "hi"}}]},
              {"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f",
                                                                                         "arguments": "{}"}}]}}]},
              {"choices": [{"delta": {}, "finish_reason": finish}]}]
    m = MessageEvents("msg_1", "m")
    r = ResponseEvents("resp_1", "m", {})
    out_m = m.start() + b"".join(m.feed(c) for c in chunks) + m.end(Usage(1, 1), None)
    out_r = r.start() + b"".join(r.feed(c) for c in chunks) + r.end(Usage(1, 1), None)
    assert out_m.count(b"event: content_block_start") == out_m.count(b"event: content_block_stop") == 2
    assert out_r.count(b"event: response.output_item.added") == out_r.count(b"event: response.output_item.done") == 2
    expected = {"stop": b"response.completed", "length": b"response.incomplete",
                "content_filter": b"response.incomplete"}[finish]
    assert expected in out_r.rsplit(b"event: ", 1)[-1]
    stop = {"stop": b'"stop_reason":"tool_use"', "length": b'"stop_reason":"max_tokens"',
            "content_filter": b'"stop_reason":"refusal"'}[finish]
    assert stop in out_m
