"""OpenAI Chat Completions wire format for the fake upstream: bodies, stream chunks, errors, model list.

Shapes follow platform.openai.com/docs/api-reference/chat (and the vendored schema in ``tests/schemas``):
streams send ``data: <chunk>\\n\\n`` events, the first delta carries ``role``, every chunk carries ``usage: null``
when ``include_usage`` is on and a final ``choices: []`` chunk carries the usage, then ``data: [DONE]``.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time

import orjson

from .behaviour import JSON, Answer, split_arguments

_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def usage(a: Answer) -> JSON:
    return {
        "prompt_tokens": a.prompt_tokens,
        "completion_tokens": a.completion_tokens,
        "total_tokens": a.prompt_tokens + a.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": a.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": a.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _token_logprob(piece: str, logprob: float) -> JSON:
    return {"token": piece, "logprob": logprob, "bytes": list(piece.encode()), "top_logprobs": []}


def _choice(a: Answer, index: int) -> JSON:
    message: JSON = {"role": "assistant", "content": a.text if (a.text or not a.tool_calls) else None,
                     "refusal": None}
    if a.tool_calls:
        message["tool_calls"] = [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in a.tool_calls
        ]
    logprobs = (
        {"content": [_token_logprob(p, a.logprob) for p in a.pieces], "refusal": None} if a.logprobs else None
    )
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": a.finish}


def completion(a: Answer, cid: str, model: str, more: list[Answer] | None = None) -> bytes:
    """A ``chat.completion``; ``more`` adds choices 1..n-1 (requests with ``n`` > 1), their tokens added to usage."""
    u = usage(a)
    for extra in more or ():
        u["completion_tokens"] += extra.completion_tokens
        u["total_tokens"] += extra.completion_tokens
    return orjson.dumps({
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [_choice(x, i) for i, x in enumerate([a, *(more or ())])],
        "usage": u,
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    })


def _event(obj: JSON) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def stream_events(a: Answer, cid: str, model: str, include_usage: bool) -> tuple[list[bytes], list[bytes]]:
    """(head, body): head is the role chunk; body is the content chunks, tool-call chunks, the finish chunk, the
    usage chunk and ``[DONE]``, in order, so the server can pace or cut the stream "after N chunks" by index.
    """
    created = int(time.time())
    base: JSON = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                  "system_fingerprint": "fp_fake"}
    if include_usage:
        base["usage"] = None

    def chunk(delta: JSON, finish: str | None = None, logprobs: JSON | None = None) -> bytes:
        return _event({**base, "choices": [
            {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]})

    head = [chunk({"role": "assistant", "content": "", "refusal": None})]
    body: list[bytes] = []
    for piece in a.pieces:
        lp = {"content": [_token_logprob(piece, a.logprob)], "refusal": None} if a.logprobs else None
        body.append(chunk({"content": piece}, logprobs=lp))
    for i, call in enumerate(a.tool_calls):
        body.append(chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                           "function": {"name": call["name"], "arguments": ""}}]}))
        for frag in split_arguments(call["arguments"]):
            body.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": frag}}]}))
    body.append(chunk({}, finish=a.finish))
    if include_usage:
        body.append(_event({**base, "choices": [], "usage": usage(a)}))
    body.append(b"data: [DONE]\n\n")
    return head, body


def error_body(status: int, message: str) -> bytes:
    etype, code = _ERROR_TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return orjson.dumps({"error": {"message": message, "type": etype, "param": None, "code": code}})


def stream_error_event(error_type: str, message: str) -> bytes:
    return _event({"error": {"message": message, "type": error_type, "param": None, "code": None}})


def models(ids: tuple[str, ...]) -> bytes:
    return orjson.dumps({
        "object": "list",
        "data": [{"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"} for m in ids],
    })


def _vector(item: str | list[int], dims: int) -> list[float]:
    """A deterministic unit-ish vector for an input (same input, same vector), like a real model's."""
    seed = hashlib.sha256(orjson.dumps(item)).digest()
    raw = (seed * (dims // 8 + 1))[: dims * 4]
    return [round((v / 0xFFFFFFFF) * 2 - 1, 6) for v in struct.unpack(f"<{dims}I", raw)]


def embedding_tokens(item: str | list[int]) -> int:
    """Stand-in tokenizer: ~4 characters per token for text; token arrays count exactly."""
    return len(item) if isinstance(item, list) else max(1, len(item) // 4)


def embeddings(inputs: list[str | list[int]], model: str, dims: int, b64: bool, with_usage: bool,
               prompt_tokens: int | None) -> bytes:
    """An ``/embeddings`` answer (platform.openai.com/docs/api-reference/embeddings/object): one ``embedding``
    object per input, floats or base64 little-endian float32, and ``usage`` with prompt and total tokens."""
    data = []
    for i, item in enumerate(inputs):
        vec = _vector(item, dims)
        emb: object = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if b64 else vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    body: JSON = {"object": "list", "data": data, "model": model}
    if with_usage:
        n = prompt_tokens if prompt_tokens is not None else sum(embedding_tokens(x) for x in inputs)
        body["usage"] = {"prompt_tokens": n, "total_tokens": n}
    return orjson.dumps(body)
