"""One pipelined Redis connection for the request path's two script calls (admit, settle).

Why not redis-py's asyncio client for these: each of its calls checks a connection out of a pool (with a health
check), arms an ``asyncio.timeout`` per read and runs its command machinery — 41 µs of CPU per call on this
project's machine against 11 µs here (``python bench/state_resp.py`` → ``bench/results/state_resp.md``), and
admission makes one call per request.
Everything else (script loading, ``TIME``, ``MGET``, pins, start-up checks) still goes through redis-py.

Commands are pipelined on a single connection: each call queues its command and waits for its reply in order (Redis
answers in order, and both scripts are atomic), so concurrent requests never wait for a free connection; the
commands queued during one event-loop iteration go out in one write at its end (a socket write to a Redis that has to
be woken costs more CPU than the call's own work, so a busy gateway sends several admissions per syscall). Replies are parsed by hiredis (the C parser redis-py itself uses).
The connection is opened lazily, authenticated (``AUTH``) and switched to its database (``SELECT``) as redis-py
would, from the same connection settings. A call that gets no reply within ``timeout_s`` fails with
``redis.exceptions.TimeoutError`` and closes the connection (every call waiting on it fails with
``ConnectionError``: their replies can no longer be matched); the next call reconnects. Error replies are raised as
redis-py's exception types (``NoScriptError``, ``ReadOnlyError``, ``OutOfMemoryError``, ``ResponseError``), so the
backend's handling of an unavailable Redis is the same on both paths.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import hiredis
from redis import exceptions as rx

__all__ = ["RespConnection", "pack"]

_ERRORS: tuple[tuple[str, type[rx.RedisError]], ...] = (
    ("NOSCRIPT", rx.NoScriptError), ("READONLY", rx.ReadOnlyError), ("OOM", rx.OutOfMemoryError),
    ("NOAUTH", rx.AuthenticationError), ("WRONGPASS", rx.AuthenticationError), ("BUSY", rx.BusyLoadingError),
)


def pack(args: tuple[Any, ...]) -> bytes:
    """A command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


def _error(reply: rx.ResponseError) -> rx.RedisError:
    text = str(reply)
    for prefix, kind in _ERRORS:
        if text.startswith(prefix):
            return kind(text)
    return reply


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(encoding="utf-8", replyError=rx.ResponseError)
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.outbox: list[bytes] = []  # commands of this loop iteration, not yet written
        self.closed = False

    def flush(self) -> None:
        out, self.outbox = self.outbox, []
        if out and not self.closed and self.transport is not None:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        try:
            while True:
                reply = reader.gets()
                if reply is False:
                    return
                if not self.waiting:  # a reply nobody asked for: the stream cannot be trusted any more
                    self.fail(rx.ConnectionError("unexpected reply from Redis"))
                    return
                fut = self.waiting.popleft()
                if not fut.done():
                    if isinstance(reply, rx.ResponseError):
                        fut.set_exception(_error(reply))
                    else:
                        fut.set_result(reply)
        except hiredis.ProtocolError as exc:
            self.fail(rx.ConnectionError(f"Redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(rx.ConnectionError("connection to Redis lost"))

    def fail(self, exc: BaseException) -> None:
        self.closed = True
        waiting, self.waiting = self.waiting, deque()
        for fut in waiting:
            if not fut.done():
                fut.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


class RespConnection:
    """``await call("EVALSHA", sha, 1, key, *args)`` on one lazily (re)opened, pipelined connection.

    ``kwargs`` are redis-py's connection settings (``connection_pool.connection_kwargs``): ``host``/``port`` or
    ``path`` (a unix socket), ``db``, ``username``, ``password``. TLS connections are not handled here (see
    :func:`usable`)."""

    def __init__(self, kwargs: dict[str, Any], timeout_s: float) -> None:
        self._kw = kwargs
        self._timeout = timeout_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    @staticmethod
    def usable(connection_class: type, kwargs: dict[str, Any]) -> bool:
        """Whether this client can stand in for redis-py's connections of this class and settings: plain TCP or a
        unix socket, RESP2, no client-side caching or credential provider. Anything else keeps redis-py's path."""
        from redis.asyncio.connection import Connection, UnixDomainSocketConnection

        return (connection_class in (Connection, UnixDomainSocketConnection)
                and kwargs.get("credential_provider") is None and kwargs.get("protocol") in (None, 2, "2"))

    async def call(self, *args: Any) -> Any:
        proto = self._proto
        if proto is None or proto.closed:
            proto = await self._connect()
        return await self._send(proto, pack(args))

    async def aclose(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None:
            proto.fail(rx.ConnectionError("connection closed"))

    async def _send(self, proto: _Protocol, command: bytes) -> Any:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        proto.waiting.append(fut)
        if not proto.outbox:  # the first command of this loop iteration: write them all at its end, in one syscall
            loop.call_soon(proto.flush)
        proto.outbox.append(command)
        timer = loop.call_later(self._timeout, self._expire, proto, fut)
        try:
            return await fut
        finally:
            timer.cancel()

    def _expire(self, proto: _Protocol, fut: asyncio.Future[Any]) -> None:
        if not fut.done():
            fut.set_exception(rx.TimeoutError("Timeout reading from Redis"))
            proto.fail(rx.ConnectionError("connection to Redis closed after a timeout"))

    async def _connect(self) -> _Protocol:
        if self._connecting is not None:  # another call is opening it: share that
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            proto = await self._open(loop)
        except BaseException as exc:
            self._connecting.set_exception(exc if isinstance(exc, Exception) else rx.ConnectionError("cancelled"))
            self._connecting.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        else:
            self._connecting.set_result(proto)
            self._proto = proto
            return proto
        finally:
            self._connecting = None

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        kw = self._kw
        try:
            if kw.get("path"):
                connect = loop.create_unix_connection(_Protocol, kw["path"])
            else:
                connect = loop.create_connection(_Protocol, kw.get("host") or "localhost", int(kw.get("port") or 6379))
            _, proto = await asyncio.wait_for(connect, kw.get("socket_connect_timeout") or self._timeout)
        except TimeoutError:
            raise rx.TimeoutError("Timeout connecting to Redis") from None
        except OSError as exc:
            raise rx.ConnectionError(f"Error connecting to Redis: {type(exc).__name__}") from None
        try:
            if kw.get("password"):
                auth = ("AUTH", kw["username"], kw["password"]) if kw.get("username") else ("AUTH", kw["password"])
                await self._send(proto, pack(auth))
            if int(kw.get("db") or 0):
                await self._send(proto, pack(("SELECT", int(kw["db"]))))
        except BaseException:
            proto.fail(rx.ConnectionError("closed"))
            raise
        return proto
