"""A lean HTTP/1.1 client for upstream calls: keep-alive pool, one write per request, a small response parser.

Why not aiohttp's ``ClientSession`` (which the gateway used until 2026-12-03): its per-request machinery (request and
response objects, header multidicts, cookie jar, tracing hooks, payload registry, timer contexts) cost ~100-150 µs of
CPU per call on this project's machine, against ~20 µs for this client doing the same exchange (measured with
``python bench/overhead/client_cpu.py``) — the largest single item of the gateway's CPU per request. An upstream call
is a narrow case: one ``POST`` of a JSON body to one configured origin, a JSON or SSE answer back. That is what this
implements, completely:

* **framing**: ``Content-Length``, ``Transfer-Encoding: chunked`` (extensions and trailers skipped) and
  read-until-close; 1xx interim responses skipped; ``HEAD``-less, so 204/304 carry no body;
* **encodings**: we ask for ``identity``; a ``gzip``/``deflate`` body is still decoded, any other is a clear error;
* **connections**: per-origin keep-alive pool (at most ``max_connections`` open, callers wait beyond that), idle
  connections dropped after 30 s, a connection is reused only when its response was read to the end, HTTP/1.1 and no
  ``Connection: close``; TLS for ``https`` with the system trust store and hostname checks. A connection the server
  closes before answering is a :class:`WireDisconnected`, never retried here, even when it may be the keep-alive race
  (the server closing an idle connection as we reuse it): the server may have received the request and started on
  it, so whether to call again is the executor's decision, and each attempt is booked;
* **timeouts**: connect timeout; non-streaming, one deadline for the whole exchange; streaming, a limit on each wait
  for data;
* **errors**: :class:`WireError` subclasses that say what happened (cannot connect, disconnected, cut off, malformed,
  timeout), mapped to the provider's error kinds in :func:`tierwise.providers.errors.transport_error`;
* **back-pressure**: a stream's unread data above 1 MiB pauses reading from the socket.

No proxies, redirects, cookies or HTTP/2: no LLM API needs them, and the aiohttp client did not use them either.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Origin", "WireCannotConnect", "WireCutOff", "WireDisconnected", "WireError", "WireMalformed",
           "WireResponse", "WireTimeout"]

#: Pooled connections idle longer than this are dropped, not reused. A server that closes idle ones sooner (uvicorn
#: after 5 s) sends its FIN long before we reuse the connection, which marks it closed and skips it.
_IDLE_S = 30.0
_MAX_HEAD = 64 * 1024  # status line + headers
_HIGH_WATER = 1 << 20  # unread stream bytes above which the socket is paused
_NO_BODY = (204, 304)


class WireError(Exception):
    """A transport-level failure of one upstream exchange."""


class WireCannotConnect(WireError):
    def __init__(self, os_error: OSError) -> None:
        super().__init__(type(os_error).__name__)
        self.os_error = os_error


class WireDisconnected(WireError):
    """The server closed the connection before the response began."""


class WireCutOff(WireError):
    """The connection ended inside the response body."""


class WireMalformed(WireError):
    """The bytes are not an HTTP/1.x response we can read."""


class WireTimeout(TimeoutError):
    """``phase`` is ``"connect"`` or ``"read"``."""

    def __init__(self, phase: str) -> None:
        super().__init__(f"{phase} timeout")
        self.phase = phase


class WireResponse:
    """Status, headers (lower-cased names; repeated ones joined with ``", "``) and the body, read whole or in chunks."""

    __slots__ = ("status", "headers", "_chunks", "_size", "_done", "_error", "_waiter", "_conn", "_deadline",
                 "_read_timeout", "_limit")

    def __init__(self, conn: _Conn, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._conn = conn
        self._deadline: float | None = None  # loop time by which the whole body must be in (non-streaming)
        self._read_timeout: float | None = None  # the longest wait for the next bytes (streaming)
        self._limit: int | None = None  # unread bytes that pause the socket (streaming; a whole-body read never does)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "application/octet-stream").split(";", 1)[0].strip().lower()

    async def read(self) -> bytes:
        """The whole (decoded) body."""
        while not self._done:
            await self._wait()
        if self._error is not None:
            raise self._error
        body = b"".join(self._chunks)
        self._chunks.clear()
        return body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (decoded); raises the transport error, if any, after the data before it."""
        while True:
            if self._chunks:
                data = b"".join(self._chunks)
                self._chunks.clear()
                self._size = 0
                self._conn.resume()
                yield data
            elif self._done:
                if self._error is not None:
                    raise self._error
                return
            else:
                await self._wait()

    async def _wait(self) -> None:
        if self._error is not None and not self._chunks:
            raise self._error
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        if self._deadline is not None:
            timer: asyncio.TimerHandle | None = loop.call_at(self._deadline, _expire, waiter)
        else:
            timer = loop.call_later(self._read_timeout, _expire, waiter) if self._read_timeout is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    # called by the protocol
    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._limit is not None and self._size > self._limit:
            self._conn.pause()
        self._wake()

    def _finish(self, error: BaseException | None = None) -> None:
        if not self._done:
            self._done = True
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(WireTimeout("read"))


class _Conn(asyncio.Protocol):
    """One keep-alive connection and the incremental parser of the response now on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._buf = bytearray()
        self._head: asyncio.Future[WireResponse] | None = None
        self._resp: WireResponse | None = None
        self._mode = ""  # "length" | "chunked" | "eof" | "" (no exchange / between exchanges)
        self._left = 0  # bytes left: of the body ("length") or of the current chunk ("chunked")
        self._chunk_state = "size"  # "size" | "data" | "crlf" | "trailer"
        self._keep = False
        self._inflate: Any = None
        self._raw_deflate = False
        self._paused = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._head is None and self._resp is None:  # bytes nobody asked for: the connection is unusable
            self.close()
            return
        self._buf += data
        try:
            self._parse()
        except WireError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        self._on_close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_close()

    # exchange
    def send(self, payload: bytes, loop: asyncio.AbstractEventLoop) -> asyncio.Future[WireResponse]:
        self._head = loop.create_future()
        self._resp = None
        self._mode = ""
        self._inflate = None
        self.transport.write(payload)  # type: ignore[union-attr]
        return self._head

    @property
    def reusable(self) -> bool:
        resp = self._resp
        return (not self.closed and self._keep and resp is not None and resp._done and resp._error is None
                and self._head is None and not self._buf)

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def _on_close(self) -> None:
        self.closed = True
        if self._head is not None:
            self._fail(WireDisconnected("server disconnected"))
        elif self._resp is not None and not self._resp._done:
            if self._mode == "eof":
                self._end_body()
            else:
                self._resp._finish(WireCutOff("response cut off"))

    def _fail(self, exc: BaseException) -> None:
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(exc)
        if self._resp is not None:
            self._resp._finish(exc)
        self.close()

    # parsing
    def _parse(self) -> None:
        if self._head is not None and not self._parse_head():
            return
        if self._resp is not None and not self._resp._done and self._buf:
            self._parse_body()

    def _parse_head(self) -> bool:
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > _MAX_HEAD:
                    raise WireMalformed("response headers too large")
                return False
            lines = bytes(self._buf[:end]).split(b"\r\n")
            del self._buf[:end + 4]
            version, _, rest = lines[0].partition(b" ")
            code = rest[:3]
            if version not in (b"HTTP/1.1", b"HTTP/1.0") or not code.isdigit() or rest[3:4] not in (b"", b" "):
                raise WireMalformed("malformed status line")
            status = int(code)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                if not sep or not name or name != name.strip() or b" " in name:
                    raise WireMalformed("malformed header line")
                key = name.decode("latin-1").lower()
                text = value.strip().decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
            if 100 <= status < 200:  # interim (100 Continue, 103 Early Hints): the real response follows
                continue
            break
        conn_hdr = headers.get("connection", "").lower()
        self._keep = version == b"HTTP/1.1" and "close" not in conn_hdr
        coding = headers.get("transfer-encoding", "").lower()
        if status in _NO_BODY:
            self._mode, self._left = "length", 0
        elif coding:
            if coding.rsplit(",", 1)[-1].strip() != "chunked":
                raise WireMalformed("unsupported transfer-encoding")
            self._mode, self._chunk_state = "chunked", "size"
        elif "content-length" in headers:
            try:
                self._left = int(headers["content-length"])
            except ValueError:
                raise WireMalformed("malformed content-length") from None
            if self._left < 0:
                raise WireMalformed("malformed content-length")
            self._mode = "length"
        else:
            self._mode, self._keep = "eof", False
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._inflate = zlib.decompressobj(wbits=47)  # gzip or zlib header, detected
            self._raw_deflate = encoding == "deflate"
        elif encoding not in ("identity", ""):
            raise WireMalformed("unsupported content-encoding")
        resp = self._resp = WireResponse(self, status, headers)
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_result(resp)
        if self._mode == "length" and self._left == 0:
            self._end_body()
        return True

    def _parse_body(self) -> None:
        buf = self._buf
        if self._mode == "eof":
            self._emit(bytes(buf))
            buf.clear()
        elif self._mode == "length":
            take = min(self._left, len(buf))
            self._emit(bytes(buf[:take]))
            del buf[:take]
            self._left -= take
            if self._left == 0:
                self._end_body()
        else:
            self._parse_chunked(buf)

    def _parse_chunked(self, buf: bytearray) -> None:
        while buf and self._resp is not None and not self._resp._done:
            state = self._chunk_state
            if state == "data":
                take = min(self._left, len(buf))
                self._emit(bytes(buf[:take]))
                del buf[:take]
                self._left -= take
                if self._left == 0:
                    self._chunk_state = "crlf"
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise WireMalformed("malformed chunked body")
                return
            line = bytes(buf[:end])
            del buf[:end + 2]
            if state == "crlf":
                if line:
                    raise WireMalformed("malformed chunked body")
                self._chunk_state = "size"
            elif state == "size":
                size = line.split(b";", 1)[0].strip()
                try:
                    self._left = int(size, 16)
                except ValueError:
                    raise WireMalformed("malformed chunk size") from None
                if self._left < 0:
                    raise WireMalformed("malformed chunk size")
                self._chunk_state = "data" if self._left else "trailer"
            elif not line:  # "trailer": the empty line that ends the trailers
                self._end_body()

    def _emit(self, data: bytes) -> None:
        if not data or self._resp is None:
            return
        if self._inflate is not None:
            try:
                data = self._inflate.decompress(data)
            except zlib.error:
                if not self._raw_deflate:
                    raise WireMalformed("corrupt compressed body") from None
                self._inflate = zlib.decompressobj(wbits=-15)  # "deflate" sent raw, as some servers do
                self._raw_deflate = False
                try:
                    data = self._inflate.decompress(data)
                except zlib.error:
                    raise WireMalformed("corrupt compressed body") from None
            if not data:
                return
        self._resp._feed(data)

    def _end_body(self) -> None:
        if self._inflate is not None:
            tail = self._inflate.flush()
            if tail and self._resp is not None:
                self._resp._feed(tail)
        self._mode = ""
        if self._resp is not None:
            self._resp._finish()
        if self._buf:  # bytes after the response: nothing may follow it on this connection
            self._keep = False


class Origin:
    """The keep-alive pool to one ``scheme://host:port``; requests go to ``base path + path``."""

    def __init__(self, base_url: str, headers: dict[str, str], *, max_connections: int,
                 connect_timeout_s: float, ssl_context: ssl.SSLContext | None = None) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url must be an http(s) URL with a host: {base_url!r}")
        self._host = url.hostname
        self._tls = url.scheme == "https"
        self._port = url.port or (443 if self._tls else 80)
        default_port = self._port == (443 if self._tls else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._prefix = url.path.rstrip("/")
        fixed = {"Host": host if default_port else f"{host}:{self._port}", "Accept-Encoding": "identity", **headers}
        for name, value in fixed.items():
            if any(c in f"{name}{value}" for c in "\r\n\0") or ":" in name:
                raise ValueError(f"header {name!r} has a character not allowed in HTTP headers")
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self._max = max_connections
        self._connect_timeout = connect_timeout_s
        self._idle: list[_Conn] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._ssl = ssl_context  # None: the system trust store, made on first use
        self._closed = False

    def request_bytes(self, path: str, body: bytes, extra: bytes = b"") -> bytes:
        """The whole request: request line, headers, body — one write."""
        return b"".join((b"POST ", (self._prefix + path).encode("ascii"), b" HTTP/1.1\r\n", self._fixed, extra,
                         b"Content-Length: ", str(len(body)).encode(), b"\r\n\r\n", body))

    async def post(self, path: str, body: bytes, *, timeout_s: float, streaming: bool,
                   extra_headers: bytes = b"") -> tuple[_Conn, WireResponse]:
        """Send one request and wait for the response head. The caller reads the body, then calls :meth:`release`."""
        loop = asyncio.get_running_loop()
        payload = self.request_bytes(path, body, extra_headers)
        deadline = None if streaming else loop.time() + timeout_s
        # a stream's timeout bounds each wait, the wait for a free connection included
        conn = await self._acquire(loop, deadline if deadline is not None else loop.time() + timeout_s)
        head = conn.send(payload, loop)
        timer = loop.call_at(deadline, _expire, head) if deadline is not None else loop.call_later(
            timeout_s, _expire, head)
        try:
            resp = await head
        except BaseException:  # disconnect, timeout, malformed head, cancellation: the connection's state is unknown
            self._discard(conn)
            raise
        finally:
            timer.cancel()
        if deadline is not None:
            resp._deadline = deadline
        else:
            resp._read_timeout, resp._limit = timeout_s, _HIGH_WATER
        return conn, resp

    def release(self, conn: _Conn) -> None:
        """Back to the pool when its response was read to the end; closed otherwise (its state is unknown)."""
        if conn.reusable and not self._closed:
            conn.idle_since = time.monotonic()
            conn._resp = None
            self._idle.append(conn)
            self._wake_one()
        else:
            self._discard(conn)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
            self._open -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(WireCannotConnect(ConnectionAbortedError("client closed")))

    def _discard(self, conn: _Conn) -> None:
        conn.close()
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _acquire(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Conn:
        while True:
            now = time.monotonic()
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed and now - conn.idle_since < _IDLE_S:
                    return conn
                conn.close()
                self._open -= 1
            if self._closed:
                raise WireCannotConnect(ConnectionAbortedError("client closed"))
            if self._open < self._max:
                self._open += 1
                try:
                    return await self._connect(loop, deadline)
                except BaseException:
                    self._open -= 1
                    self._wake_one()
                    raise
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(deadline - loop.time(), 0.0))
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken as we gave up: pass the free slot on
                if isinstance(exc, TimeoutError):
                    raise WireTimeout("connect") from None
                raise

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Conn:
        if self._tls and self._ssl is None:
            self._ssl = ssl.create_default_context()
        limit = min(self._connect_timeout, deadline - loop.time())
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Conn, self._host, self._port, ssl=self._ssl if self._tls else None,
                                       server_hostname=self._host if self._tls else None),
                max(limit, 0.0))
        except TimeoutError:
            raise WireTimeout("connect") from None
        except OSError as exc:  # refused, unreachable, DNS failure, TLS handshake or certificate failure
            raise WireCannotConnect(exc) from exc
        return conn
