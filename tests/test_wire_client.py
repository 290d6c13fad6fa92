"""The upstream HTTP/1.1 client (``tierwise.providers.wire``) against real sockets on loopback.

A raw asyncio server answers with exactly the bytes each test scripts, so framing, keep-alive, stale connections,
cut-offs, malformed heads, timeouts, back-pressure and TLS are exercised as they happen on the wire.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tierwise.providers.wire import (
    Origin,
    WireCannotConnect,
    WireCutOff,
    WireDisconnected,
    WireMalformed,
    WireTimeout,
)

Reply = Callable[[bytes, int], list[bytes | float | None]]  # (request, index on this connection) -> steps


class Scripted:
    """A loopback server: for each request it plays ``reply``'s steps (bytes to write, float seconds to sleep, None
    to close the connection). Counts connections and keeps every request it read."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                for step in self.reply(request, n):
                    if step is None:
                        writer.close()
                        return
                    if isinstance(step, float):
                        await asyncio.sleep(step)
                    else:
                        writer.write(step)
                        await writer.drain()
                n += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body), extra, body)


def chunked(*parts: bytes) -> bytes:
    out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    for part in parts:
        out += b"%x;ext=1\r\n%s\r\n" % (len(part), part)
    return out + b"0\r\nX-Trailer: t\r\n\r\n"


async def serve(reply: Reply, **origin_kw: object) -> tuple[Scripted, asyncio.Server, Origin]:
    scripted = Scripted(reply)
    server = await asyncio.start_server(scripted.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    kw: dict = {"max_connections": 8, "connect_timeout_s": 2.0} | origin_kw
    origin = Origin(f"http://127.0.0.1:{port}/v1", {"Authorization": "Bearer k"}, **kw)
    return scripted, server, origin


async def call(origin: Origin, *, streaming: bool = False, timeout_s: float = 2.0) -> tuple[int, dict, bytes]:
    conn, resp = await origin.post("/chat", b'{"a":1}', timeout_s=timeout_s, streaming=streaming)
    try:
        if streaming:
            body = b"".join([chunk async for chunk in resp.iter_chunks()])
        else:
            body = await resp.read()
        return resp.status, resp.headers, body
    finally:
        origin.release(conn)


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_request_bytes_and_content_length_keep_alive() -> None:
    async def main() -> None:
        scripted, server, origin = await serve(lambda req, n: [ok(b'{"n":%d}' % n)])
        async with server:
            for n in range(3):
                status, headers, body = await call(origin)
                assert (status, body, headers["content-type"]) == (200, b'{"n":%d}' % n, "application/json")
            assert scripted.connections == 1  # one keep-alive connection for all three
            first = scripted.requests[0]
            assert first.startswith(b"POST /v1/chat HTTP/1.1\r\n")
            assert b"\r\nHost: 127.0.0.1:" in first and b"\r\nAuthorization: Bearer k\r\n" in first
            assert b"\r\nAccept-Encoding: identity\r\n" in first and first.endswith(b'Content-Length: 7\r\n\r\n{"a":1}')
            await origin.aclose()
    run(main())


def test_chunked_with_extensions_trailers_and_split_reads() -> None:
    wire = chunked(b"data: 1\n\n", b"data: 2\n\n")

    async def main() -> None:
        # the response arrives a few bytes at a time: every parser state must survive a split
        scripted, server, origin = await serve(lambda req, n: [wire[i:i + 3] for i in range(0, len(wire), 3)])
        async with server:
            assert await call(origin, streaming=True) == (200, {"content-type": "text/event-stream",
                                                                 "transfer-encoding": "chunked"},
                                                          b"data: 1\n\ndata: 2\n\n")
            assert (await call(origin))[2] == b"data: 1\n\ndata: 2\n\n"
            assert scripted.connections == 1
            await origin.aclose()
    run(main())


def test_read_until_close_is_not_reused_and_connection_close_honoured() -> None:
    async def main() -> None:
        scripted, server, origin = await serve(
            lambda req, n: [b"HTTP/1.1 200 OK\r\n\r\nuntil-close", None] if n == 0 else [])
        async with server:
            assert (await call(origin))[2] == b"until-close"
            assert (await call(origin))[2] == b"until-close"
            assert scripted.connections == 2
            await origin.aclose()
        scripted, server, origin = await serve(lambda req, n: [ok(b"{}", b"Connection: close\r\n")])
        async with server:
            await call(origin)
            await call(origin)
            assert scripted.connections == 2
            await origin.aclose()
    run(main())


def test_gzip_deflate_and_interim_responses() -> None:
    body = b'{"x":"' + b"y" * 5000 + b'"}'
    raw_deflate = zlib.compressobj(wbits=-15)
    variants = [gzip.compress(body), zlib.compress(body), raw_deflate.compress(body) + raw_deflate.flush()]
    encodings = [b"gzip", b"deflate", b"deflate"]

    async def main() -> None:
        def reply(req: bytes, n: int) -> list[bytes | float | None]:
            return [b"HTTP/1.1 100 Continue\r\n\r\n",
                    ok(variants[n], b"Content-Encoding: " + encodings[n] + b"\r\n")]
        _, server, origin = await serve(reply)
        async with server:
            for _ in variants:
                assert (await call(origin))[2] == body
            await origin.aclose()
    run(main())


def test_status_and_headers_of_an_error_reach_the_caller() -> None:
    async def main() -> None:
        _, server, origin = await serve(lambda req, n: [
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nretry-after: 4\r\nContent-Length: 2\r\n\r\n{}"])
        async with server:
            status, headers, body = await call(origin)
            assert (status, headers["retry-after"], body) == (429, "3, 4", b"{}")
            await origin.aclose()
    run(main())


@pytest.mark.parametrize("wire, error", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", WireCutOff),
    (chunked(b"abc")[:-12], WireCutOff),
    (b"SPDY/9 200 OK\r\n\r\n", WireMalformed),
    (b"HTTP/1.1 2x0 OK\r\n\r\n", WireMalformed),
    (b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", WireMalformed),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", WireMalformed),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", WireMalformed),
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 1\r\n\r\nx", WireMalformed),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", WireMalformed),
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000, WireMalformed),
    (b"", WireDisconnected),
])
def test_broken_responses_raise_what_happened(wire: bytes, error: type[Exception]) -> None:
    async def main() -> None:
        _, server, origin = await serve(lambda req, n: [wire, None])
        async with server:
            with pytest.raises(error):
                await call(origin)
            with pytest.raises(error):
                await call(origin, streaming=True)
            await origin.aclose()
    run(main())


def test_a_connection_closed_before_the_answer_is_not_retried_silently() -> None:
    async def main() -> None:
        # the server answers the first request, then closes the connection on the second without a reply: the
        # server may have started on it, so the caller (the executor, which books each attempt) decides on a retry
        scripted, server, origin = await serve(lambda req, n: [ok(b"{}")] if n == 0 else [None])
        async with server:
            await call(origin)
            with pytest.raises(WireDisconnected):
                await call(origin)
            assert len(scripted.requests) == 2
            assert (await call(origin))[2] == b"{}"  # a new connection
            await origin.aclose()
    run(main())


def test_timeouts_non_streaming_deadline_and_streaming_per_read() -> None:
    async def main() -> None:
        slow_body = [b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n", 0.3, b"ab", 0.3, b"cd"]
        _, server, origin = await serve(lambda req, n: slow_body)
        async with server:
            with pytest.raises(WireTimeout) as err:  # each wait is short, the whole exchange is not
                await call(origin, timeout_s=0.5)
            assert err.value.phase == "read"
            assert (await call(origin, streaming=True, timeout_s=0.5))[2] == b"abcd"  # 0.3 s per read is fine
            await origin.aclose()
        _, server, origin = await serve(lambda req, n: [0.5, ok(b"{}")])
        async with server:
            with pytest.raises(WireTimeout):
                await call(origin, streaming=True, timeout_s=0.2)
            await origin.aclose()
    run(main())


def test_cannot_connect_names_the_os_error() -> None:
    async def main() -> None:
        origin = Origin("http://127.0.0.1:9/v1", {}, max_connections=2, connect_timeout_s=1.0)
        with pytest.raises(WireCannotConnect) as err:
            await call(origin)
        assert isinstance(err.value.os_error, ConnectionRefusedError)
    run(main())


def test_pool_limit_queues_callers_and_cancellation_closes_the_connection() -> None:
    async def main() -> None:
        scripted, server, origin = await serve(lambda req, n: [0.1, ok(b"{}")], max_connections=2)
        async with server:
            results = await asyncio.gather(*[call(origin) for _ in range(6)])
            assert [r[0] for r in results] == [200] * 6
            assert scripted.connections == 2
            task = asyncio.ensure_future(call(origin))
            await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert origin._open == 1  # the cancelled exchange's connection was closed, not pooled
            assert [r[0] for r in await asyncio.gather(call(origin), call(origin))] == [200, 200]
            assert scripted.connections == 3
            await origin.aclose()
    run(main())


def test_back_pressure_pauses_a_stream_the_reader_does_not_drain() -> None:
    part = b"x" * 65536
    n_parts = 64  # 4 MiB

    async def main() -> None:
        _, server, origin = await serve(lambda req, n: [chunked(*([part] * n_parts))])
        async with server:
            conn, resp = await origin.post("/chat", b"{}", timeout_s=5.0, streaming=True)
            await asyncio.sleep(0.3)  # nobody reads: the client must stop reading from the socket
            assert resp._size < 3 * (1 << 20) and conn._paused
            total = sum([len(chunk) async for chunk in resp.iter_chunks()])
            assert total == len(part) * n_parts
            origin.release(conn)
            await origin.aclose()
    run(main())


def test_header_injection_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="not allowed"):
        Origin("http://127.0.0.1:1/v1", {"X-Evil": "a\r\nHost: b"}, max_connections=1, connect_timeout_s=1)
    with pytest.raises(ValueError, match="http"):
        Origin("ftp://example.com", {}, max_connections=1, connect_timeout_s=1)


def test_tls_with_hostname_check(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def main() -> None:
        scripted = Scripted(lambda req, n: [ok(b'{"tls":true}')])
        server = await asyncio.start_server(scripted.handle, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        trusted = ssl.create_default_context(cafile=str(cert))
        async with server:
            origin = Origin(f"https://localhost:{port}/v1", {}, max_connections=2, connect_timeout_s=2.0,
                            ssl_context=trusted)
            assert (await call(origin))[2] == b'{"tls":true}'
            await origin.aclose()
            untrusted = Origin(f"https://localhost:{port}/v1", {}, max_connections=2, connect_timeout_s=2.0)
            with pytest.raises(WireCannotConnect):  # the system store does not trust a self-signed certificate
                await call(untrusted)
    run(main())


def test_corrupt_compressed_body_is_malformed() -> None:
    async def main() -> None:
        for coding in (b"gzip", b"deflate"):
            reply = [ok(b"\x00garbage!", b"Content-Encoding: " + coding + b"\r\n")]
            _, server, origin = await serve(lambda req, n, reply=reply: reply)
            async with server:
                with pytest.raises(WireMalformed):
                    await call(origin)
                await origin.aclose()
    run(main())


def test_waiting_for_a_free_connection_is_bounded_for_streams_too() -> None:
    async def main() -> None:
        _, server, origin = await serve(lambda req, n: [0.6, ok(b"{}")], max_connections=1)
        async with server:
            first = asyncio.ensure_future(call(origin, streaming=True, timeout_s=2.0))
            await asyncio.sleep(0.05)
            with pytest.raises(WireTimeout) as err:
                await call(origin, streaming=True, timeout_s=0.2)
            assert err.value.phase == "connect"
            assert (await first)[0] == 200
            assert (await call(origin))[0] == 200  # the slot is free again
            await origin.aclose()
    run(main())
