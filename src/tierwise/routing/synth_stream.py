"""Turn a finished completion into OpenAI stream chunks (a cascade streams its served answer once gated)."""

from __future__ import annotations

import re

from tierwise.types import JSON, Completion, StreamChunk

_PIECES = re.compile(r"\S+\s*|\s+")


def completion_chunks(c: Completion, piece_chars: int = 48) -> list[StreamChunk]:
    """Role chunk, content pieces (~``piece_chars`` each), tool calls, finish chunk, then a usage-only chunk."""
    body = c.body
    base: JSON = {"id": body.get("id", "chatcmpl-tierwise"), "object": "chat.completion.chunk",
                  "created": body.get("created", 0), "model": body.get("model", "")}
    choice = (body.get("choices") or [{}])[0]
    message = choice.get("message") or {}

    def chunk(delta: JSON, finish: str | None = None, text: str = "") -> StreamChunk:
        b = dict(base)
        b["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        return StreamChunk(b, None, text, finish)

    out = [chunk({"role": "assistant", "content": ""})]
    buf = ""
    for piece in _PIECES.findall(c.text):
        buf += piece
        if len(buf) >= piece_chars:
            out.append(chunk({"content": buf}, text=buf))
            buf = ""
    if buf:
        out.append(chunk({"content": buf}, text=buf))
    if message.get("tool_calls"):
        calls = [{"index": i, **tc} for i, tc in enumerate(message["tool_calls"])]
        out.append(chunk({"tool_calls": calls}))
    out.append(chunk({}, finish=c.finish_reason or "stop"))
    if isinstance(choice.get("stop_reason"), str):  # the stop sequence that ended it (vLLM's field), for /v1/messages
        out[-1].body["choices"][0]["stop_reason"] = choice["stop_reason"]
    usage_body = dict(base)
    usage_body["choices"] = []
    usage_body["usage"] = c.usage.to_openai()
    out.append(StreamChunk(usage_body, c.usage))
    return out
