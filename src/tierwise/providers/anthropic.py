"""Adapter for Anthropic's Messages API: OpenAI chat requests in, OpenAI chat completions / chunks out.

Translation of bodies lives in :mod:`tierwise.providers.anthropic_translate`; this module does the HTTP call and
turns the Messages event stream into OpenAI chunks:

``message_start``            -> first chunk, ``delta: {role: assistant, content: ""}``; its input-side usage is
                                kept for the final count and set on that chunk as ``prompt_usage``
``content_block_start``      -> for ``tool_use``: a tool-call delta with index / id / type / name / ``arguments: ""``
``content_block_delta``      -> ``text_delta`` -> content delta; ``input_json_delta`` -> tool-call arguments delta
``message_delta``            -> chunk with ``finish_reason`` (usage counts are cumulative: they replace, not add)
                                and the matched ``stop_sequence`` as the choice's ``stop_reason`` (vLLM's field)
``message_stop``             -> final usage-only chunk (``choices: []``), then the stream ends
``ping`` / unknown events    -> ignored; ``error`` -> :class:`UpstreamError` of the kind its ``type`` says
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from tierwise.config.schema import ProviderConfig
from tierwise.cost.usage import usage_from_anthropic, usage_from_anthropic_stream
from tierwise.providers.anthropic_translate import (
    MATCHED_STOP,
    STOP_REASONS,
    from_anthropic_response,
    to_anthropic_request,
)
from tierwise.providers.errors import bad_response, stream_cut, stream_error
from tierwise.providers.http import HttpProvider, resolve_api_key
from tierwise.providers.normalize import new_id
from tierwise.providers.sse import SSEParser
from tierwise.types import JSON, Completion, StreamChunk, Usage


class StreamTranslator:
    """Stateful Anthropic-event -> OpenAI-chunk converter for one stream (pure; no I/O)."""

    def __init__(self, provider: str, model: str) -> None:
        self.provider = provider
        self.id = new_id()
        self.model = model
        self.created = int(time.time())
        self.start_usage: JSON | None = None
        self.delta_usages: list[Any] = []
        self.tool_index: dict[int, int] = {}  # Anthropic content block index -> OpenAI tool_calls index
        self.started = False
        self.finished = False  # message_delta with stop_reason seen
        self.done = False  # message_stop seen

    def _chunk(self, delta: JSON, finish_reason: str | None = None, text: str = "") -> StreamChunk:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        return StreamChunk(body=body, text=text, finish_reason=finish_reason)

    def _first(self) -> list[StreamChunk]:
        if self.started:
            return []
        self.started = True
        first = self._chunk({"role": "assistant", "content": ""})
        if isinstance(self.start_usage, dict):
            u = usage_from_anthropic(self.start_usage)  # its output_tokens is provisional: the prompt side only
            first.prompt_usage = Usage(input_tokens=u.input_tokens, cache_read_tokens=u.cache_read_tokens,
                                       cache_write_tokens=u.cache_write_tokens)
        return [first]

    def feed(self, event: Any) -> list[StreamChunk]:
        """Chunks for one decoded event (``data`` of an SSE event; its ``type`` names the event)."""
        if not isinstance(event, dict):
            raise ValueError("event is not a JSON object")
        etype = event.get("type")
        if etype == "content_block_delta":
            delta = event.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                text = delta.get("text") or ""
                return [*self._first(), self._chunk({"content": text}, text=text)] if text else []
            if dtype == "input_json_delta":
                block_index = event.get("index")
                idx = self.tool_index.get(block_index) if isinstance(block_index, int) else None
                partial = delta.get("partial_json") or ""
                if idx is None or not partial:
                    return []
                return [self._chunk({"tool_calls": [{"index": idx, "function": {"arguments": partial}}]})]
            return []  # thinking_delta, signature_delta, citations_delta
        if etype == "message_start":
            message = event.get("message") or {}
            if isinstance(message.get("id"), str):
                self.id = message["id"]
            if isinstance(message.get("model"), str):
                self.model = message["model"]
            self.start_usage = message.get("usage")
            return self._first()
        if etype == "content_block_start":
            block = event.get("content_block") or {}
            out = self._first()
            if block.get("type") == "tool_use":
                idx = len(self.tool_index)
                block_index = event.get("index")
                if isinstance(block_index, int):
                    self.tool_index[block_index] = idx
                call = {
                    "index": idx,
                    "id": block.get("id") or new_id("toolu_"),
                    "type": "function",
                    "function": {"name": block.get("name") or "", "arguments": ""},
                }
                out.append(self._chunk({"tool_calls": [call]}))
            elif block.get("type") == "text" and block.get("text"):
                out.append(self._chunk({"content": block["text"]}, text=block["text"]))
            return out
        if etype == "message_delta":
            delta = event.get("delta") or {}
            self.delta_usages.append(event.get("usage"))
            reason = delta.get("stop_reason")
            if reason is None:
                return []
            self.finished = True
            finish = STOP_REASONS.get(reason, "tool_calls" if self.tool_index else "stop")
            last = self._chunk({}, finish_reason=finish)
            if reason == "stop_sequence" and isinstance(delta.get("stop_sequence"), str):
                last.body["choices"][0][MATCHED_STOP] = delta["stop_sequence"]
            return [*self._first(), last]
        if etype == "message_stop":
            self.done = True
            usage = usage_from_anthropic_stream(self.start_usage, *self.delta_usages)
            body = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage.to_openai(),
            }
            return [StreamChunk(body=body, usage=usage)]
        if etype == "error":
            raise stream_error(self.provider, event.get("error"))
        return []  # ping, content_block_stop, future event types


class AnthropicProvider(HttpProvider):
    """:class:`~tierwise.providers.base.Provider` for the Anthropic Messages wire format."""

    def __init__(self, name: str, cfg: ProviderConfig) -> None:
        key = resolve_api_key(name, cfg)
        headers = {"anthropic-version": cfg.anthropic_version}
        if key:
            headers["x-api-key"] = key
        super().__init__(name, cfg, headers)

    async def complete(self, body: JSON, *, timeout_s: float) -> Completion:
        request = to_anthropic_request(body)
        request.pop("stream", None)
        model = body.get("model") or ""
        async with self._post("/messages", orjson.dumps(request), timeout_s=timeout_s, streaming=False) as resp:
            parsed = await self._read_json(resp)
        if isinstance(parsed, dict) and parsed.get("type") == "error":
            raise stream_error(self.name, parsed.get("error"))
        try:
            return from_anthropic_response(parsed, model)
        except ValueError as exc:
            raise bad_response(self.name, f"malformed message: {exc}", status=resp.status) from None

    def _translate(self, translator: StreamTranslator, data: bytes) -> list[StreamChunk]:
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise bad_response(self.name, "stream event is not JSON") from None
        try:
            return translator.feed(parsed)
        except ValueError as exc:
            raise bad_response(self.name, f"malformed stream event: {exc}") from None

    async def stream(self, body: JSON, *, timeout_s: float) -> AsyncIterator[StreamChunk]:
        request = to_anthropic_request(body)
        request["stream"] = True
        translator = StreamTranslator(self.name, body.get("model") or "")
        async with self._post("/messages", orjson.dumps(request), timeout_s=timeout_s, streaming=True) as resp:
            parser = SSEParser()
            async for data in resp.iter_chunks():
                for event in parser.feed(data):
                    for chunk in self._translate(translator, event.data):
                        yield chunk
                    if translator.done:
                        return
            for event in parser.close():
                for chunk in self._translate(translator, event.data):
                    yield chunk
                if translator.done:
                    return
            if not translator.finished:
                if not translator.started:
                    raise bad_response(self.name, f"no message events in the response ({resp.content_type})")
                raise stream_cut(self.name)
            # stop_reason seen but no message_stop: still report the usage we have
            for chunk in translator.feed({"type": "message_stop"}):
                yield chunk
