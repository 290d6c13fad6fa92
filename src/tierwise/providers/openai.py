"""Adapter for OpenAI-compatible ``/chat/completions`` upstreams (OpenAI, vLLM, Ollama, llama.cpp server, …).

This is the gateway's hot path, so it does the minimum: the client's body is forwarded as-is (unknown fields
included; only ``stream``/``stream_options`` are set) with one ``orjson.dumps``; the reply is parsed once with
``orjson.loads`` and fixed in place to OpenAI's schema by :mod:`tierwise.providers.normalize`.

Streams always ask for ``stream_options.include_usage`` so the final usage-only chunk (``choices: []``) carries the
real token counts, cached tokens included. If an upstream ignores the option and never reports usage, no chunk
carries ``usage`` and the executor estimates it (it has the tokenizer and the prompt; this adapter does not guess).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import NamedTuple

import orjson

from tierwise.config.schema import ProviderConfig
from tierwise.cost.usage import usage_from_openai
from tierwise.providers.anthropic_translate import HINTS, strip_hints
from tierwise.providers.errors import bad_response, stream_cut, stream_error
from tierwise.providers.http import HttpProvider, resolve_api_key
from tierwise.providers.normalize import first_logprobs, normalize_chunk, normalize_completion
from tierwise.providers.sse import SSEParser
from tierwise.providers.wire import WireResponse
from tierwise.types import JSON, Completion, StreamChunk, Usage

_DONE = b"[DONE]"


def completion_from_body(body: JSON) -> Completion:
    """Completion for an already normalised ``chat.completion``."""
    choices = body["choices"]
    first = choices[0] if choices else None
    message = first["message"] if first else {}
    return Completion(
        body=body,
        usage=usage_from_openai(body.get("usage")),
        finish_reason=first["finish_reason"] if first else None,
        text=message.get("content") or "",
        logprobs=first_logprobs(body),
    )


def chunk_from_body(chunk: JSON) -> StreamChunk:
    """StreamChunk for an already normalised ``chat.completion.chunk``."""
    usage = chunk.get("usage")
    choices = chunk["choices"]
    if choices:
        first = choices[0]
        return StreamChunk(
            body=chunk,
            usage=usage_from_openai(usage) if usage is not None else None,
            text=first["delta"].get("content") or "",
            finish_reason=first["finish_reason"],
        )
    return StreamChunk(body=chunk, usage=usage_from_openai(usage) if usage is not None else None)


def completion_as_chunks(body: JSON) -> list[StreamChunk]:
    """A whole ``chat.completion`` replayed as chunks, for servers that answer ``stream: true`` with plain JSON."""
    base = {"id": body["id"], "object": "chat.completion.chunk", "created": body["created"], "model": body["model"]}
    out: list[StreamChunk] = []
    for choice in body["choices"]:
        msg = choice["message"]
        delta: JSON = {"role": "assistant", "content": msg.get("content") or ""}
        if msg.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **tc} for i, tc in enumerate(msg["tool_calls"])]
        idx = choice["index"]
        out.append(chunk_from_body({**base, "choices": [
            {"index": idx, "delta": delta, "logprobs": choice.get("logprobs"), "finish_reason": None}]}))
        last: JSON = {"index": idx, "delta": {}, "finish_reason": choice["finish_reason"]}
        if "stop_reason" in choice:  # vLLM's matched stop string or token id
            last["stop_reason"] = choice["stop_reason"]
        out.append(chunk_from_body({**base, "choices": [last]}))
    if "usage" in body:
        out.append(chunk_from_body({**base, "choices": [], "usage": body["usage"]}))
    return out


class Embeddings(NamedTuple):
    """An upstream's ``/embeddings`` answer: its body (``data`` checked to be a list) and its usage."""

    body: JSON
    usage: Usage | None  # None: the upstream reported no usage (the caller counts the input itself)


class OpenAIProvider(HttpProvider):
    """:class:`~tierwise.providers.base.Provider` for the OpenAI wire format."""

    def __init__(self, name: str, cfg: ProviderConfig) -> None:
        key = resolve_api_key(name, cfg)
        super().__init__(name, cfg, {"Authorization": f"Bearer {key}"} if key else {})

    async def complete(self, body: JSON, *, timeout_s: float) -> Completion:
        if HINTS in body:  # a request that came in as /v1/messages: no Messages-only fields to OpenAI
            body = strip_hints(body)
        if body.get("stream"):
            body = {k: v for k, v in body.items() if k != "stream_options"}
            body["stream"] = False
        model = body.get("model") or ""
        async with self._post("/chat/completions", orjson.dumps(body), timeout_s=timeout_s, streaming=False) as resp:
            parsed = await self._read_json(resp)
        if isinstance(parsed, dict) and "error" in parsed and "choices" not in parsed:
            raise stream_error(self.name, parsed["error"])  # 200 with an error object (some proxies do this)
        try:
            normalized = normalize_completion(parsed, model)
        except ValueError as exc:
            raise bad_response(self.name, f"malformed completion: {exc}", status=resp.status) from None
        return completion_from_body(normalized)

    async def embed(self, body: JSON, *, timeout_s: float) -> Embeddings:
        """One ``POST /embeddings`` (used by ``/v1/embeddings``); failures are :class:`UpstreamError` as for chat."""
        async with self._post("/embeddings", orjson.dumps(body), timeout_s=timeout_s, streaming=False) as resp:
            parsed = await self._read_json(resp)
        if isinstance(parsed, dict) and "error" in parsed and "data" not in parsed:
            raise stream_error(self.name, parsed["error"])
        if not isinstance(parsed, dict) or not isinstance(parsed.get("data"), list):
            raise bad_response(self.name, "malformed embeddings response: no 'data' list", status=resp.status)
        usage = parsed.get("usage")
        has = isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int)
        return Embeddings(parsed, usage_from_openai(usage) if has else None)

    async def stream(self, body: JSON, *, timeout_s: float) -> AsyncIterator[StreamChunk]:
        body = strip_hints(body) if HINTS in body else dict(body)
        body["stream"] = True
        opts = body.get("stream_options")
        body["stream_options"] = {**opts, "include_usage": True} if isinstance(opts, dict) else {"include_usage": True}
        model = body.get("model") or ""
        async with self._post("/chat/completions", orjson.dumps(body), timeout_s=timeout_s, streaming=True) as resp:
            if resp.content_type == "application/json":
                for chunk in await self._json_instead_of_stream(resp, model):
                    yield chunk
                return
            finished = seen = False
            parser = SSEParser()  # fed inline: one async-generator layer per event instead of two
            async for data in resp.iter_chunks():
                for event in parser.feed(data):
                    if event.data == _DONE:
                        return
                    chunk = self._chunk(event.data, model)
                    seen = True
                    if chunk.finish_reason is not None:
                        finished = True
                    yield chunk
            for event in parser.close():
                if event.data == _DONE:
                    return
                chunk = self._chunk(event.data, model)
                seen = True
                finished = finished or chunk.finish_reason is not None
                yield chunk
            if not finished:  # EOF without [DONE] or a finish_reason: cut off, or never a stream at all
                if not seen:
                    raise bad_response(self.name, f"no SSE events in the response ({resp.content_type})")
                raise stream_cut(self.name)

    def _chunk(self, data: bytes, model: str) -> StreamChunk:
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise bad_response(self.name, "stream event is not JSON") from None
        if isinstance(parsed, dict) and "error" in parsed and not parsed.get("choices"):
            raise stream_error(self.name, parsed["error"])
        try:
            return chunk_from_body(normalize_chunk(parsed, model))
        except ValueError as exc:
            raise bad_response(self.name, f"malformed stream chunk: {exc}") from None

    async def _json_instead_of_stream(self, resp: WireResponse, model: str) -> list[StreamChunk]:
        parsed = await self._read_json(resp)
        if isinstance(parsed, dict) and "error" in parsed and "choices" not in parsed:
            raise stream_error(self.name, parsed["error"])
        try:
            return completion_as_chunks(normalize_completion(parsed, model))
        except ValueError as exc:
            raise bad_response(self.name, f"malformed completion: {exc}") from None
