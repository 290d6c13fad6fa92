"""/v1/messages, driven by the ``anthropic`` SDK through a real gateway: ``stop_sequence`` says which of the
request's stop sequences ended the answer when the upstream said so (an Anthropic upstream's ``stop_sequence``,
vLLM's ``stop_reason`` string on an OpenAI-shaped choice), and is null when it cannot be known (OpenAI's plain
``finish_reason: "stop"``); a stream's ``message_start`` carries the prompt's tokens as known at that point (the
Anthropic upstream's own count, a gated cascade's booked usage, else the gateway's estimate) and ``message_delta``
the final usage. Upstream answers are hand-made bytes (the fake's ``raw_response``) so every field is exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for
from tierwise.apis.messages import messages_to_chat

HI = [{"role": "user", "content": "count to ten"}]
STOPS = ["END", "STOP"]
SSE = "text/event-stream"


@pytest.fixture
def claude(gateway: GatewayServer) -> Iterator[anthropic.Anthropic]:
    c = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0, timeout=20)
    try:
        yield c
    finally:
        c.close()


def _sse(events: list[tuple[str | None, dict[str, Any] | str]]) -> str:
    out = []
    for name, data in events:
        body = data if isinstance(data, str) else orjson.dumps(data).decode()
        out.append((f"event: {name}\n" if name else "") + f"data: {body}\n\n")
    return "".join(out)


def anthropic_stream(stop_reason: str, stop_sequence: str | None, *, input_tokens: int = 25,
                     cache_read: int = 5, output_tokens: int = 3) -> str:
    start = {"id": "msg_up", "type": "message", "role": "assistant", "model": "claude-test", "content": [],
             "stop_reason": None, "stop_sequence": None,
             "usage": {"input_tokens": input_tokens, "cache_read_input_tokens": cache_read,
                       "cache_creation_input_tokens": 0, "output_tokens": 1}}
    return _sse([
        ("message_start", {"type": "message_start", "message": start}),
        ("ping", {"type": "ping"}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text",
                                                                                              "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "one two three"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason,
                                                              "stop_sequence": stop_sequence},
                           "usage": {"output_tokens": output_tokens}}),
        ("message_stop", {"type": "message_stop"}),
    ])


def anthropic_message(stop_reason: str, stop_sequence: str | None) -> dict[str, Any]:
    return {"id": "msg_up", "type": "message", "role": "assistant", "model": "claude-test",
            "content": [{"type": "text", "text": "one two three"}], "stop_reason": stop_reason,
            "stop_sequence": stop_sequence, "usage": {"input_tokens": 20, "output_tokens": 3}}


def openai_completion(finish: str, stop_reason: Any = "absent") -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": "one two three"},
                              "finish_reason": finish, "logprobs": None}
    if stop_reason != "absent":
        choice["stop_reason"] = stop_reason
    return {"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "large-up", "choices": [choice],
            "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}}


def openai_stream(finish: str, stop_reason: Any = "absent", prompt_tokens: int = 20) -> str:
    def chunk(delta: dict[str, Any], fin: str | None = None, **extra: Any) -> dict[str, Any]:
        return {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "large-up",
                "choices": [{"index": 0, "delta": delta, "finish_reason": fin, **extra}]}
    last = chunk({}, finish) if stop_reason == "absent" else chunk({}, finish, stop_reason=stop_reason)
    return _sse([
        (None, chunk({"role": "assistant", "content": ""})),
        (None, chunk({"content": "one two"})),
        (None, chunk({"content": " three"})),
        (None, last),
        (None, {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "large-up",
                "choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 3,
                                         "total_tokens": prompt_tokens + 3}}),
        (None, "[DONE]"),
    ])


# ---- stop_sequence ------------------------------------------------------------------------------------------------

def test_anthropic_upstream_names_the_stop_sequence(gateway: GatewayServer, claude: anthropic.Anthropic,
                                                    anthropic_upstream: FakeUpstream) -> None:
    anthropic_upstream.raw_response(anthropic_message("stop_sequence", "STOP"))
    msg = claude.messages.create(model="claude", max_tokens=50, messages=HI, stop_sequences=STOPS)
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "STOP")
    assert msg.content[0].text == "one two three"
    assert anthropic_upstream.last_request.body["stop_sequences"] == STOPS

    anthropic_upstream.raw_response(anthropic_stream("stop_sequence", "END"), content_type=SSE)
    with claude.messages.stream(model="claude", max_tokens=50, messages=HI, stop_sequences=STOPS) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "END")

    anthropic_upstream.raw_response(anthropic_message("end_turn", None))  # a natural end: null
    msg = claude.messages.create(model="claude", max_tokens=50, messages=HI, stop_sequences=STOPS)
    assert (msg.stop_reason, msg.stop_sequence) == ("end_turn", None)


def test_vllm_style_upstream_names_it_and_plain_openai_cannot(gateway: GatewayServer, claude: anthropic.Anthropic,
                                                              upstream: FakeUpstream) -> None:
    upstream.raw_response(openai_completion("stop", "END"))  # vLLM: choices[].stop_reason is the matched string
    msg = claude.messages.create(model="chat", max_tokens=50, messages=HI, stop_sequences=STOPS)
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "END")

    upstream.raw_response(openai_stream("stop", "STOP"), content_type=SSE)
    with claude.messages.stream(model="chat", max_tokens=50, messages=HI, stop_sequences=STOPS) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "STOP")
    assert final.content[0].text == "one two three"

    # OpenAI: finish_reason "stop" whether the model ended its turn or hit a stop sequence -> not determinable
    upstream.raw_response(openai_completion("stop"))
    msg = claude.messages.create(model="chat", max_tokens=50, messages=HI, stop_sequences=STOPS)
    assert (msg.stop_reason, msg.stop_sequence) == ("end_turn", None)
    upstream.raw_response(openai_stream("stop"), content_type=SSE)
    with claude.messages.stream(model="chat", max_tokens=50, messages=HI, stop_sequences=STOPS) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("end_turn", None)

    # a stop string the request did not ask for (the server's own), or a stop token id, names no stop sequence
    for other in ("</s>", 2, None):
        upstream.raw_response(openai_completion("stop", other))
        msg = claude.messages.create(model="chat", max_tokens=50, messages=HI, stop_sequences=STOPS)
        assert (msg.stop_reason, msg.stop_sequence) == ("end_turn", None)
    upstream.raw_response(openai_completion("length", "END"))  # cut by max_tokens: not a stop sequence
    msg = claude.messages.create(model="chat", max_tokens=50, messages=HI, stop_sequences=STOPS)
    assert (msg.stop_reason, msg.stop_sequence) == ("max_tokens", None)


def test_chat_completions_on_an_anthropic_model_carries_it_as_vllm_does(gateway: GatewayServer,
                                                                        anthropic_upstream: FakeUpstream) -> None:
    import openai

    anthropic_upstream.raw_response(anthropic_message("stop_sequence", "END"))
    c = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=20)
    try:
        r = c.chat.completions.create(model="claude", messages=HI, stop=STOPS)
    finally:
        c.close()
    assert r.choices[0].finish_reason == "stop" and r.choices[0].model_extra == {"stop_reason": "END"}


# ---- message_start usage -------------------------------------------------------------------------------------------

def _start_and_delta(stream: Any) -> tuple[Any, Any, Any]:
    start = delta = None
    for event in stream:
        if event.type == "message_start":
            start = event.message.usage
        elif event.type == "message_delta":
            delta = event.usage
    return start, delta, stream.get_final_message()


def test_message_start_carries_the_anthropic_upstreams_prompt_count(
        gateway: GatewayServer, claude: anthropic.Anthropic, anthropic_upstream: FakeUpstream) -> None:
    anthropic_upstream.raw_response(anthropic_stream("end_turn", None, input_tokens=25, cache_read=5,
                                                     output_tokens=3), content_type=SSE)
    with claude.messages.stream(model="claude", max_tokens=50, messages=HI) as stream:
        start, delta, final = _start_and_delta(stream)
    assert (start.input_tokens, start.cache_read_input_tokens, start.output_tokens) == (25, 5, 0)
    assert (delta.input_tokens, delta.cache_read_input_tokens, delta.output_tokens) == (25, 5, 3)
    assert (final.usage.input_tokens, final.usage.output_tokens) == (25, 3)
    [row] = gateway.rows()
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (25, 5, 3)


def test_message_start_carries_the_gateways_estimate_for_openai_upstreams(
        gateway: GatewayServer, claude: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    """OpenAI-shaped upstreams report usage at the end only: message_start has the gateway's own prompt count (the
    served model's tokenizer, as admission estimates it), message_delta the upstream's final figures."""
    upstream.raw_response(openai_stream("stop", prompt_tokens=20), content_type=SSE)
    body = {"model": "chat", "max_tokens": 50, "messages": HI, "system": "be terse"}
    with claude.messages.stream(**body) as stream:  # type: ignore[arg-type]
        start, delta, final = _start_and_delta(stream)
    assert gateway.svc is not None
    expected = gateway.svc.prices.estimator(messages_to_chat(body), "chat").prompt_tokens("large")
    assert expected > 0 and (start.input_tokens, start.output_tokens) == (expected, 0)
    assert (delta.input_tokens, delta.output_tokens) == (20, 3)
    assert final.usage.input_tokens == 20


@pytest.fixture
def cascade_gw(upstream: FakeUpstream, tmp_path: Path) -> Iterator[GatewayServer]:
    extra = """  casc:
    policy: cascade
    cascade:
      rungs:
        - {model: small, gate: {kind: logprob, threshold: 0.5}}
        - {model: large}
"""
    gw = GatewayServer(config_for(upstream.base_url, tmp_path, extra=extra)).start()
    try:
        yield gw
    finally:
        gw.stop()


def test_message_start_of_a_gated_cascade_has_the_served_calls_usage(cascade_gw: GatewayServer,
                                                                     upstream: FakeUpstream) -> None:
    upstream.set(reply="fine answer", logprob=-0.01, prompt_tokens=77, cached_tokens=7, completion_tokens=2)
    c = anthropic.Anthropic(base_url=cascade_gw.url, api_key="unused", max_retries=0, timeout=20)
    try:
        with c.messages.stream(model="casc", max_tokens=50, messages=HI) as stream:
            start, delta, final = _start_and_delta(stream)
    finally:
        c.close()
    assert final.model == "small" and final.content[0].text == "fine answer"
    assert (start.input_tokens, start.cache_read_input_tokens, start.output_tokens) == (70, 7, 0)
    assert (delta.input_tokens, delta.output_tokens) == (70, 2)
