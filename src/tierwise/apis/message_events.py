"""OpenAI chat chunks of one stream -> Anthropic Messages stream events (pure; one instance per stream).

Blocks go out strictly one after another, as Anthropic's API sends them (``content_block_start``, its deltas,
``content_block_stop``, then the next block): the SDK, which finds a block by ``index``, and clients that follow
"the current block" both read them right. OpenAI-shaped upstreams do not promise that order: a stream may carry
several tool calls whose argument fragments interleave by their ``index``. A stopped block takes no more deltas, so:

- text opens a text block (or continues the open one); the first tool call closes it and streams *live* as a
  ``tool_use`` block (``input_json_delta`` per fragment) for as long as the stream lasts;
- everything else — another tool call's fragments, text after a tool call began — is assembled per ``index`` and
  sent at the end of the stream, each block whole (one delta), in the order it first appeared, after the live block
  is closed. An upstream that sends calls one after another (OpenAI) only loses the live streaming of the second
  and later calls, whose input a client cannot act on before ``message_stop`` anyway.

``message_start`` carries the prompt's usage as known when the stream starts (``start_usage``: what the upstream
reported, or the gateway's estimate), ``message_delta`` the booked usage of the answer (cumulative, as Anthropic's
are), ``stop_reason`` and ``stop_sequence`` (:func:`tierwise.apis.messages.matched_stop`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from tierwise.apis.messages import error_body, matched_stop, stop_reason, usage_json
from tierwise.errors import APIError
from tierwise.types import JSON, Usage


def _event(name: str, data: JSON) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class _Pending:
    """A block assembled while another one is live: text, or one tool call (by its OpenAI ``index``)."""

    __slots__ = ("kind", "parts", "id", "name")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.parts: list[str] = []
        self.id = ""
        self.name = ""


class MessageEvents:
    """See the module docstring. ``stop_sequences``: the request's (for ``stop_sequence``)."""

    def __init__(self, msg_id: str, model: str, stop_sequences: Sequence[str] = (),
                 start_usage: Usage | None = None) -> None:
        self.msg_id, self.model = msg_id, model
        self.stop_sequences = stop_sequences
        self.start_usage = start_usage or Usage()
        self.index = -1  # the latest content block started
        self.open: str | None = None  # the live block: "text" | "tool" | None
        self.live_tool: int | None = None  # the OpenAI tool_calls index streaming live
        self.pending: list[_Pending] = []  # blocks to send whole at the end, in order of first appearance
        self.pending_tools: dict[int, _Pending] = {}
        self.tools = 0  # tool calls seen (live or pending)
        self.finish: str | None = None
        self.stop_seq: str | None = None

    def start(self) -> bytes:
        message: JSON = {"id": self.msg_id, "type": "message", "role": "assistant", "model": self.model,
                         "content": [], "stop_reason": None, "stop_sequence": None,
                         "usage": usage_json(self.start_usage)}
        return _event("message_start", {"type": "message_start", "message": message}) + _event("ping", {"type": "ping"})

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _begin(self, block: JSON) -> bytes:
        out = self._close()
        self.index += 1
        return out + _event("content_block_start", {"type": "content_block_start", "index": self.index,
                                                    "content_block": block})

    def _delta(self, delta: JSON) -> bytes:
        return _event("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def _text(self, text: str) -> bytes:
        if self.live_tool is None:  # no tool call yet: text streams live
            out = b""
            if self.open != "text":
                out += self._begin({"type": "text", "text": ""})
                self.open = "text"
            return out + self._delta({"type": "text_delta", "text": text})
        last = self.pending[-1] if self.pending else None
        if last is None or last.kind != "text":
            last = _Pending("text")
            self.pending.append(last)
        last.parts.append(text)
        return b""

    def _tool(self, tc: JSON) -> bytes:
        fn: JSON = tc["function"] if isinstance(tc.get("function"), dict) else {}
        i = tc.get("index", 0)
        args = fn.get("arguments")
        args = args if isinstance(args, str) else ""
        if self.live_tool is None:
            self.live_tool = i
            self.tools += 1
            out = self._begin({"type": "tool_use", "id": tc.get("id") or f"toolu_{self.msg_id}_{i}",
                               "name": fn.get("name") or "", "input": {}})
            self.open = "tool"
            return out + (self._delta({"type": "input_json_delta", "partial_json": args}) if args else b"")
        if i == self.live_tool:
            return self._delta({"type": "input_json_delta", "partial_json": args}) if args else b""
        p = self.pending_tools.get(i)
        if p is None:
            p = self.pending_tools[i] = _Pending("tool")
            self.pending.append(p)
            self.tools += 1
        if not p.id and isinstance(tc.get("id"), str):
            p.id = tc["id"]
        if not p.name and isinstance(fn.get("name"), str):
            p.name = fn["name"]
        if args:
            p.parts.append(args)
        return b""

    def feed(self, chunk: JSON) -> bytes:
        choices = chunk.get("choices") or ()
        if not choices:
            return b""
        choice = choices[0]
        delta = choice.get("delta") or {}
        out = b""
        text = delta.get("content") or delta.get("refusal")
        if isinstance(text, str) and text:
            out += self._text(text)
        for tc in delta.get("tool_calls") or ():
            if isinstance(tc, dict):
                out += self._tool(tc)
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]
            self.stop_seq = matched_stop(choice, self.stop_sequences)
        return out

    def _flush(self) -> bytes:
        """Close the live block, then send each pending block whole."""
        out = self._close()
        for n, p in enumerate(self.pending):
            data = "".join(p.parts)
            if p.kind == "text":
                out += self._begin({"type": "text", "text": ""}) + self._delta({"type": "text_delta", "text": data})
            else:
                out += self._begin({"type": "tool_use", "id": p.id or f"toolu_{self.msg_id}_p{n}", "name": p.name,
                                    "input": {}})
                if data:
                    out += self._delta({"type": "input_json_delta", "partial_json": data})
            self.open = p.kind
            out += self._close()
        self.pending = []
        return out

    def end(self, usage: Usage, error: APIError | None) -> bytes:
        """The closing events: the blocks still open or pending, then ``message_delta`` + ``message_stop``, or an
        ``error`` event when the upstream failed mid-stream (as Anthropic's API ends such a stream)."""
        out = self._flush()
        if error is not None:
            return out + _event("error", error_body(error))
        delta: dict[str, Any] = {"stop_reason": stop_reason(self.finish, self.tools > 0, self.stop_seq),
                                 "stop_sequence": self.stop_seq}
        out += _event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage_json(usage)})
        return out + _event("message_stop", {"type": "message_stop"})
