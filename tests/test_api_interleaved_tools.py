"""Two streamed tool calls whose argument fragments interleave by ``index`` in the upstream's chat-completions stream
(call 0, call 1, call 0, …, and both in one delta), through a real gateway:

- ``/v1/responses`` with the ``openai`` SDK: each call is its own output item; every
  ``response.function_call_arguments.delta`` names its own item, the deltas of an item add up to its arguments, its
  ``…done`` event carries them whole, and the SDK's final response has both calls intact;
- ``/v1/messages`` with the ``anthropic`` SDK: blocks go out strictly one after another (no delta for a block that
  is not the open one), and the SDK's final message has both ``tool_use`` inputs intact.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer

SSE = "text/event-stream"
WEATHER = {"city": "Paris", "days": [1, 2, 3]}
TIME = {"tz": "Europe/Paris"}
RESPONSES_TOOLS: list[Any] = [
    {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}]
MESSAGES_TOOLS: list[Any] = [{"name": "get_weather", "input_schema": {"type": "object"}},
                             {"name": "get_time", "input_schema": {"type": "object"}}]


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "large-up",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _frag(index: int, args: str, **head: Any) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": args}}
    if head:
        call["id"], call["type"] = head["id"], "function"
        call["function"]["name"] = head["name"]
    return call


def interleaved(text: str = "") -> str:
    """Text (optional), then call 0 and call 1 opened, their fragments alternating, one delta carrying both."""
    w, t = orjson.dumps(WEATHER).decode(), orjson.dumps(TIME).decode()
    w_parts = [w[:5], w[5:12], w[12:20], w[20:]]
    t_parts = [t[:3], t[3:9], t[9:]]
    chunks = [_chunk({"role": "assistant", "content": ""})]
    if text:
        chunks.append(_chunk({"content": text}))
    chunks += [
        _chunk({"tool_calls": [_frag(0, "", id="call_w", name="get_weather")]}),
        _chunk({"tool_calls": [_frag(1, t_parts[0], id="call_t", name="get_time")]}),
        _chunk({"tool_calls": [_frag(0, w_parts[0])]}),
        _chunk({"tool_calls": [_frag(1, t_parts[1]), _frag(0, w_parts[1])]}),  # both in one delta
        _chunk({"tool_calls": [_frag(0, w_parts[2])]}),
        _chunk({"tool_calls": [_frag(1, t_parts[2])]}),
        _chunk({"tool_calls": [_frag(0, w_parts[3])]}),
        _chunk({}, "tool_calls"),
        b"data: " + orjson.dumps({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1,
                                  "model": "large-up", "choices": [],
                                  "usage": {"prompt_tokens": 30, "completion_tokens": 12,
                                            "total_tokens": 42}}) + b"\n\n",
        b"data: [DONE]\n\n",
    ]
    return b"".join(chunks).decode()


@pytest.fixture
def client(gateway: GatewayServer) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=20)
    try:
        yield c
    finally:
        c.close()


@pytest.mark.parametrize("text", ["", "Let me look both up."])
def test_responses_stream_assembles_each_call_in_its_own_item(gateway: GatewayServer, client: openai.OpenAI,
                                                              upstream: FakeUpstream, text: str) -> None:
    upstream.raw_response(interleaved(text), content_type=SSE)
    with client.responses.stream(model="chat", input="weather and time in Paris?", tools=RESPONSES_TOOLS) as s:
        events = list(s)
        final = s.get_final_response()
    calls = [o for o in final.output if o.type == "function_call"]
    assert [(c.call_id, c.name) for c in calls] == [("call_w", "get_weather"), ("call_t", "get_time")]
    assert [orjson.loads(c.arguments) for c in calls] == [WEATHER, TIME]
    assert final.output_text == text and final.status == "completed"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (30, 12)

    added = {e.output_index: e.item for e in events if e.type == "response.output_item.added"}
    by_index = {i: item for i, item in added.items() if item.type == "function_call"}
    assert sorted(item.call_id for item in by_index.values()) == ["call_t", "call_w"]
    deltas: dict[int, str] = {}
    for e in events:
        if e.type == "response.function_call_arguments.delta":
            assert e.item_id == by_index[e.output_index].id  # each delta names its own item
            deltas[e.output_index] = deltas.get(e.output_index, "") + e.delta
    done = {e.output_index: e for e in events if e.type == "response.function_call_arguments.done"}
    for i, item in by_index.items():
        want = WEATHER if item.name == "get_weather" else TIME
        assert orjson.loads(deltas[i]) == want and orjson.loads(done[i].arguments) == want
        assert done[i].item_id == item.id and done[i].name == item.name
    items_done = [e for e in events if e.type == "response.output_item.done"]
    assert sorted(e.output_index for e in items_done) == sorted(added)
    seq = [e.sequence_number for e in events]
    assert seq == sorted(seq) and len(set(seq)) == len(seq)
    [row] = gateway.rows()
    assert row["status"] == "ok" and (row["input_tokens"], row["output_tokens"]) == (30, 12)


@pytest.mark.parametrize("text", ["", "Let me look both up."])
def test_messages_stream_keeps_blocks_sequential_and_inputs_whole(gateway: GatewayServer, upstream: FakeUpstream,
                                                                  text: str) -> None:
    upstream.raw_response(interleaved(text), content_type=SSE)
    c = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0, timeout=20)
    try:
        with c.messages.stream(model="chat", max_tokens=100, tools=MESSAGES_TOOLS, messages=[
                {"role": "user", "content": "weather and time in Paris?"}]) as s:
            events = list(s)
            final = s.get_final_message()
    finally:
        c.close()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [(b.id, b.name, b.input) for b in uses] == [("call_w", "get_weather", WEATHER),
                                                       ("call_t", "get_time", TIME)]
    assert [b.type for b in final.content] == (["text"] if text else []) + ["tool_use", "tool_use"]
    assert final.stop_reason == "tool_use"
    open_block: int | None = None
    started = []
    for e in events:
        if e.type == "content_block_start":
            assert open_block is None  # the previous block was stopped first
            open_block = e.index
            started.append(e.index)
        elif e.type == "content_block_delta":
            assert e.index == open_block  # never a delta for a block that is not the open one
        elif e.type == "content_block_stop":
            assert e.index == open_block
            open_block = None
    assert open_block is None and started == list(range(len(final.content)))
