"""The fault vocabulary of the fake upstream, usable in-process or against a fake in another process.

:class:`FaultScript` turns readable calls (``fake.http_error(429, retry_after=2)``) into fault dicts;
:class:`FakeUpstream` queues them directly, :class:`RemoteFake` posts them to ``/_control`` of a fake started with
``python -m tests.fakes.upstream`` (benchmarks, multi-process gateway tests). Each fault is consumed by exactly one
chat request, in FIFO order.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

JSON = dict[str, Any]


class FaultScript:
    """Mixin: subclasses implement :meth:`push_faults`."""

    def push_faults(self, faults: list[JSON]) -> None:
        raise NotImplementedError

    def http_error(self, status: int, body: Any = None, retry_after: float | str | None = None, *,
                   retry_after_ms: float | None = None) -> None:
        """Answer the next request with ``status`` (body: dict/str, or the format's standard error object)."""
        self.push_faults([{"kind": "http_error", "status": status, "body": body, "retry_after": retry_after,
                           "retry_after_ms": retry_after_ms}])

    def delay(self, seconds: float) -> None:
        """Wait ``seconds`` before the response headers of the next request (to trigger client timeouts)."""
        self.push_faults([{"kind": "delay", "seconds": seconds}])

    def disconnect_mid_stream(self, after_chunks: int = 1) -> None:
        """Send the head and ``after_chunks`` body events, then close the socket (non-streaming: half the body)."""
        self.push_faults([{"kind": "disconnect_mid_stream", "after_chunks": after_chunks}])

    def garbage_body(self) -> None:
        """200 with a body that is not the protocol (HTML/binary, or a non-JSON SSE event)."""
        self.push_faults([{"kind": "garbage_body"}])

    def close_connection(self) -> None:
        """Drop the socket without sending any response."""
        self.push_faults([{"kind": "close_connection"}])

    def empty_length(self) -> None:
        """finish_reason ``length`` with empty content (a reasoning model that spent its budget thinking)."""
        self.push_faults([{"kind": "empty_length"}])

    def stream_error(self, after_chunks: int = 1, error_type: str = "overloaded_error") -> None:
        """Streams: ``after_chunks`` body events, then an in-stream error event (Anthropic ``event: error``)."""
        self.push_faults([{"kind": "stream_error", "after_chunks": after_chunks, "error_type": error_type}])


    def raw_response(self, body: Any, status: int = 200, content_type: str = "application/json") -> None:
        """Answer the next request with exactly this body (dict -> JSON; str sent verbatim, e.g. hand-made SSE).

        For testing how adapters cope with other servers' framing and drift, byte for byte.
        """
        self.push_faults([{"kind": "raw", "body": body, "status": status, "content_type": content_type}])


class RemoteFake(FaultScript):
    """Drive a fake upstream running in another process. ``base`` is ``http://127.0.0.1:PORT``."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/").removesuffix("/v1")

    def _post(self, script: JSON) -> JSON:
        req = urllib.request.Request(
            self.base + "/_control", data=json.dumps(script).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # loopback only
            return json.loads(resp.read())

    def push_faults(self, faults: list[JSON]) -> None:
        self._post({"faults": faults})

    def set(self, **changes: Any) -> JSON:
        return self._post({"set": changes})

    def reset(self) -> JSON:
        return self._post({"reset": True})

    def stats(self) -> JSON:
        with urllib.request.urlopen(self.base + "/_control", timeout=10) as resp:
            return json.loads(resp.read())

    def requests(self) -> list[JSON]:
        with urllib.request.urlopen(self.base + "/_control/requests", timeout=10) as resp:
            return json.loads(resp.read())

    @property
    def base_url(self) -> str:
        return self.base + "/v1"
