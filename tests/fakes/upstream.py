"""FakeUpstream: a real aiohttp server on 127.0.0.1 speaking OpenAI Chat Completions and Anthropic Messages.

Tests drive it in-process (``FakeUpstream().start()`` runs it on a background thread with its own loop, so sync
and async tests use it alike) or as a separate process (``python -m tests.fakes.upstream --port N``) driven over
HTTP with ``POST /_control`` (see :class:`tests.fakes.control.RemoteFake`). Routes:

- ``POST /v1/chat/completions``   OpenAI format (JSON or SSE), ``GET /v1/models``
- ``POST /v1/messages``           Anthropic format (JSON or SSE; requires ``anthropic-version`` and ``max_tokens``)
- ``POST /v1/embeddings``         OpenAI format (float or base64 vectors, usage unless ``embeddings_usage`` is off)
- ``POST /_control``              ``{"reset"?: bool, "set"?: {behaviour}, "faults"?: [{"kind", ...}]}``
- ``GET /_control``               counters; ``GET /_control/requests``: the recorded requests

It doubles as the mock upstream of the throughput benchmark, so the no-fault path does no sleeping when all delays
are 0, serialises with orjson and writes a zero-delay stream in one write.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
from typing import Any

from aiohttp import web

from .behaviour import JSON, Behaviour, Fault
from .control import FaultScript
from .server import RecordedRequest, State, start_server

__all__ = ["FakeUpstream", "RecordedRequest", "main"]


class FakeUpstream(FaultScript):
    """In-process fake; see the module docstring. Thread-safe controls; ``start()``/``stop()`` or ``with``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, max_records: int = 10_000) -> None:
        self.host = host
        self._port = port
        self._state = State(max_records)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> FakeUpstream:
        if self._thread is not None:
            return self
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="fake-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"fake upstream failed to start: {self._error!r}")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._runner = loop.run_until_complete(start_server(self._state, self.host, self._port))
            self._port = self._runner.addresses[0][1]
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._runner.cleanup())
            pending = asyncio.all_tasks(loop)  # handlers still sleeping in a delay() fault
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: what a provider's ``base_url`` should be set to (both formats)."""
        return f"http://{self.host}:{self._port}/v1"

    # ---- control -----------------------------------------------------------------------------------------------
    def set(self, **changes: Any) -> None:
        """Change behaviour for all following requests, e.g. ``set(reply="hi", prompt_tokens=100, ttft_s=0.05)``."""
        with self._state.lock:
            self._state.behaviour = self._state.behaviour.updated(**changes)

    @property
    def behaviour(self) -> Behaviour:
        return self._state.behaviour

    def push_faults(self, faults: list[JSON]) -> None:
        parsed = [Fault.from_json(f) for f in faults]
        with self._state.lock:
            self._state.faults.extend(parsed)

    def reset(self) -> None:
        """Default behaviour, no pending faults, no recorded requests, counters at zero."""
        with self._state.lock:
            self._state.reset()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def last_request(self) -> RecordedRequest:
        with self._state.lock:
            return self._state.requests[-1]

    @property
    def calls(self) -> int:
        """Chat requests received (both formats), faults included."""
        with self._state.lock:
            return self._state.calls["/v1/chat/completions"] + self._state.calls["/v1/messages"]

    def calls_to(self, path: str) -> int:
        with self._state.lock:
            return self._state.calls[path]

    @property
    def pending_faults(self) -> int:
        with self._state.lock:
            return len(self._state.faults)


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.fakes.upstream --port N``: serve until killed; prints ``READY <port>`` when listening."""
    parser = argparse.ArgumentParser(description="tierwise fake OpenAI/Anthropic upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-record", action="store_true", help="do not keep requests (benchmarks)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args(argv)
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)
    state = State(max_records=10_000)
    if args.no_record:
        state.default = state.behaviour = state.behaviour.updated(record=False)

    async def serve() -> None:
        runner = await start_server(state, args.host, args.port)
        print(f"READY {runner.addresses[0][1]}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    if args.uvloop:
        import uvloop

        uvloop.run(serve())
    else:
        asyncio.run(serve())


if __name__ == "__main__":
    main()
