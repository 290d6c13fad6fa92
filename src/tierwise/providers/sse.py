"""A small, strict-enough Server-Sent Events parser for upstream streams.

Both OpenAI and Anthropic stream over SSE, and real servers differ in framing: CRLF or bare CR line endings, events
split across TCP reads, ``data:`` with or without the space, several ``data:`` lines per event, keep-alive comments
(``: ping``), and ``event:`` names (Anthropic). This follows the WHATWG event-stream rules for those fields and
ignores ``id:``/``retry:`` (no reconnection: a broken stream is an error for the executor to handle).

It works on raw ``bytes`` so ``orjson.loads`` gets the payload without a decode/encode round trip.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SSEEvent:
    event: str | None  # value of the last ``event:`` field, None when absent ("message")
    data: bytes  # ``data:`` lines joined with b"\n"


class SSEParser:
    """Incremental parser: ``feed(bytes)`` returns the events completed by those bytes."""

    __slots__ = ("_buf", "_data", "_event", "_pending_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._event: str | None = None
        self._pending_cr = False  # last chunk ended in CR: a LF starting the next chunk belongs to it

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._pending_cr = False
        buf = self._buf + chunk if self._buf else chunk
        events: list[SSEEvent] = []
        if b"\r" in buf:
            if buf.endswith(b"\r"):
                self._pending_cr = True
            lines = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        else:
            lines = buf.split(b"\n")
        self._buf = lines.pop()  # incomplete last line (b"" when the chunk ended with a newline)
        for line in lines:
            if not line:
                if self._data:
                    events.append(SSEEvent(self._event, b"\n".join(self._data)))
                self._data = []
                self._event = None
                continue
            if line[0] == 58:  # b":" comment / keep-alive
                continue
            name, sep, value = line.partition(b":")
            if sep and value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self._data.append(value)
            elif name == b"event":
                self._event = value.decode("utf-8", "replace")
            # id:, retry: and unknown fields are ignored
        return events

    def close(self) -> list[SSEEvent]:
        """Flush at end of stream: a final event without its blank line still counts (some servers omit it)."""
        events = self.feed(b"\n\n") if (self._buf or self._data) else []
        self._buf = b""
        return events

