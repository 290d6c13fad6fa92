"""The SSE parser against the framing real servers use, with every possible TCP split."""

from __future__ import annotations

import pytest

from tierwise.providers.sse import SSEEvent, SSEParser

STREAM = (
    b": comment\r\n"
    b"event: message_start\r\ndata: {\"a\": 1}\r\n\r\n"
    b"data:{\"b\":2}\n\n"
    b"data: line1\rdata: line2\r\r"
    b"id: 7\nretry: 100\nevent: ping\ndata: \n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent("message_start", b'{"a": 1}'),
    SSEEvent(None, b'{"b":2}'),
    SSEEvent(None, b"line1\nline2"),
    SSEEvent("ping", b""),
    SSEEvent(None, b"[DONE]"),
]


def parse(chunks: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events = [e for c in chunks for e in parser.feed(c)]
    return events + parser.close()


def test_whole_stream() -> None:
    assert parse([STREAM]) == EXPECTED


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_every_two_way_split(cut: int) -> None:
    assert parse([STREAM[:cut], STREAM[cut:]]) == EXPECTED


def test_byte_by_byte() -> None:
    assert parse([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_final_event_without_blank_line_is_flushed_at_eof() -> None:
    assert parse([b"data: tail"]) == [SSEEvent(None, b"tail")]


def test_blank_lines_without_data_dispatch_nothing() -> None:
    assert parse([b"\n\n\r\n: only a comment\n\nevent: x\n\n"]) == []
