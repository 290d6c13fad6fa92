"""Anthropic Messages wire format for the fake upstream (docs.anthropic.com/en/api/messages and /messages-streaming).

Streams are ``event: <type>\\ndata: <json>\\n\\n``: message_start (input-side usage, provisional output_tokens),
content_block_start/delta/stop per block (text_delta, input_json_delta), a ping, message_delta (stop_reason and the
cumulative output_tokens), message_stop. Usage splits the prompt into ``input_tokens`` (uncached),
``cache_read_input_tokens`` and ``cache_creation_input_tokens``.
"""

from __future__ import annotations

import orjson

from .behaviour import JSON, Answer, split_arguments

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def usage(a: Answer, *, output_tokens: int | None = None) -> JSON:
    uncached = max(0, a.prompt_tokens - a.cached_tokens - a.cache_creation_tokens)
    return {
        "input_tokens": uncached,
        "cache_creation_input_tokens": a.cache_creation_tokens,
        "cache_read_input_tokens": a.cached_tokens,
        "output_tokens": a.completion_tokens if output_tokens is None else output_tokens,
        "service_tier": "standard",
    }


def _blocks(a: Answer) -> list[JSON]:
    blocks: list[JSON] = []
    if a.text:
        blocks.append({"type": "text", "text": a.text})
    for call in a.tool_calls:
        blocks.append({"type": "tool_use", "id": call["id"].replace("call_", "toolu_"), "name": call["name"],
                       "input": orjson.loads(call["arguments"] or "{}")})
    return blocks


def message(a: Answer, mid: str, model: str) -> bytes:
    return orjson.dumps({
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": _blocks(a),
        "stop_reason": STOP_REASONS[a.finish],
        "stop_sequence": None,
        "usage": usage(a),
    })


def _event(name: str, obj: JSON) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def stream_events(a: Answer, mid: str, model: str) -> tuple[list[bytes], list[bytes]]:
    """(head, body): head is message_start + ping; body starts with the content events (cut/paced by index)."""
    start = {"id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
             "stop_reason": None, "stop_sequence": None, "usage": usage(a, output_tokens=1)}
    head = [_event("message_start", {"type": "message_start", "message": start}),
            _event("ping", {"type": "ping"})]
    body: list[bytes] = []
    index = 0
    if a.pieces:
        body.append(_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                   "content_block": {"type": "text", "text": ""}}))
        for piece in a.pieces:
            body.append(_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                       "delta": {"type": "text_delta", "text": piece}}))
        body.append(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        index = 1
    for call in a.tool_calls:
        block = {"type": "tool_use", "id": call["id"].replace("call_", "toolu_"), "name": call["name"], "input": {}}
        body.append(_event("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": block}))
        for frag in split_arguments(call["arguments"]):
            body.append(_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                       "delta": {"type": "input_json_delta", "partial_json": frag}}))
        body.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    body.append(_event("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": STOP_REASONS[a.finish], "stop_sequence": None},
                                         "usage": {"output_tokens": a.completion_tokens}}))
    body.append(_event("message_stop", {"type": "message_stop"}))
    return head, body


def error_body(status: int, message: str) -> bytes:
    etype = _ERROR_TYPES.get(status, "api_error")
    return orjson.dumps({"type": "error", "error": {"type": etype, "message": message}})


def stream_error_event(error_type: str, message: str) -> bytes:
    return _event("error", {"type": "error", "error": {"type": error_type, "message": message}})
