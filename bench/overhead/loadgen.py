"""Closed-loop HTTP/1.1 load generator: N clients, each on its own keep-alive connection, one request at a time.

Raw asyncio protocol on uvloop instead of aiohttp's client, because the load generator shares the 2 cores with the
process under test: every microsecond it spends parsing is one the gateway does not get, so it does the least a
correct HTTP/1.1 client can (``Content-Length`` and chunked bodies, status check, keep-alive, reconnect on error).

Each client sends, waits for the full response, records the latency, and sends again, until ``--duration`` has
passed or ``--max-requests`` were sent. Requests *started* in the first ``--warmup`` seconds are sent but not
measured. For streams it also records TTFT: the time until the first SSE event carrying a non-empty
``delta.content`` has arrived. Prints one JSON object on stdout (see :func:`run`).

    python bench/overhead/loadgen.py --url http://127.0.0.1:N/v1/chat/completions -c 16 --duration 5 [--stream]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson

_CONTENT = re.compile(rb'"content":"[^"]')
#: Written over with each request's number (9 digits): the user message differs on every request, as real traffic's
#: does, so a gateway cannot serve the bench from a cache of whole prompts; the system prompt is shared by all.
TICKET = b"000000000"


def request_body(stream: bool) -> bytes:
    """A ~200-token chat request (system + user), the same for every target but for the ticket number in the user
    message (:data:`TICKET`, replaced per request by the load generator)."""
    system = ("You are a concise assistant for a team that runs an LLM gateway. Answer in plain prose, no lists, "
              "at most three short paragraphs, and say when you are unsure instead of guessing.")
    user = (f"Ticket {TICKET.decode()}. We route chat requests between a small cheap model and a large expensive "
            "one. Most of our traffic is "
            "short classification and extraction, but about a fifth is open-ended writing or code review. Our "
            "monthly bill is dominated by the large model even though it handles the minority of requests. What "
            "are the trade-offs of putting a router in front of both, how should we decide which requests go to "
            "which model, and what should we log so that we can tell later whether the router actually saved "
            "money without hurting the answers our users see? Please also mention caching of system prompts. We serve about two million requests a month, "
            "mostly from a support chatbot and an internal code assistant, and latency matters for both.")
    body: dict = {"model": "auto", "messages": [{"role": "system", "content": system},
                                               {"role": "user", "content": user}],
                  "max_tokens": 256, "temperature": 0.2}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


class ResponseError(Exception):
    pass


class ClientConn(asyncio.Protocol):
    """One keep-alive connection; :meth:`request` writes a request and resolves with (status, ttft_ns, body)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.fut: asyncio.Future[tuple[int, int, bytes]] | None = None
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.head_done = False
        self.chunked = False
        self.length = 0
        self.body = bytearray()
        self.ttft_ns = 0
        self.scan_from = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(ResponseError(f"connection lost: {exc}"))

    def request(self, payload: bytes) -> asyncio.Future[tuple[int, int, bytes]]:
        assert self.transport is not None
        self._reset()
        self.fut = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return self.fut

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            done = self._parse()
        except (ValueError, IndexError) as exc:
            done = False
            if self.fut is not None and not self.fut.done():
                self.fut.set_exception(ResponseError(f"unparseable response: {exc}"))
            assert self.transport is not None
            self.transport.close()
        if done and self.fut is not None and not self.fut.done():
            self.fut.set_result((self.status, self.ttft_ns, bytes(self.body)))

    def _parse(self) -> bool:
        buf = self.buf
        if not self.head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            lines = bytes(buf[:end]).split(b"\r\n")
            self.status = int(lines[0].split(b" ", 2)[1])
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    self.length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    self.chunked = True
            del buf[:end + 4]
            self.head_done = True
        if not self.chunked:
            if len(buf) < self.length:
                return False
            self.body += buf[:self.length]
            del buf[:self.length]
            return True
        while True:  # chunked: move complete chunks into body, watching for the first content event
            eol = buf.find(b"\r\n")
            if eol < 0:
                return False
            size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
            if size == 0:
                if len(buf) < eol + 4:
                    return False
                del buf[:eol + 4]  # "0\r\n\r\n" (no trailers)
                return True
            if len(buf) < eol + 2 + size + 2:
                return False
            self.body += buf[eol + 2:eol + 2 + size]
            del buf[:eol + 2 + size + 2]
            if not self.ttft_ns and _CONTENT.search(self.body, self.scan_from):
                self.ttft_ns = time.perf_counter_ns()
            self.scan_from = max(0, len(self.body) - 16)


@dataclass
class Tally:
    latencies_ns: list[int] = field(default_factory=list)
    ttfts_ns: list[int] = field(default_factory=list)
    sent: int = 0
    ok: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def error(self, msg: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(msg)


def _check(status: int, body: bytes, stream: bool) -> str | None:
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    if stream:
        if not body.rstrip().endswith(b"data: [DONE]") or b'"error"' in body[-400:]:
            return f"stream did not end with [DONE]: {body[-200:]!r}"
    elif b'"choices"' not in body:
        return f"no choices in body: {body[:200]!r}"
    return None


async def client(host: str, port: int, payload: bytes, stream: bool, t_measure: int, t_end: int,
                 budget: list[int], tally: Tally, timeout_s: float, seq: list[int]) -> None:
    loop = asyncio.get_running_loop()
    conn: ClientConn | None = None
    request = bytearray(payload)
    slot = payload.rfind(TICKET)  # in the body, after the headers
    while time.perf_counter_ns() < t_end and budget[0] > 0:
        if conn is None or conn.closed:
            try:
                _, conn = await loop.create_connection(ClientConn, host, port)
            except OSError as exc:
                tally.error(f"connect: {exc}")
                await asyncio.sleep(0.05)
                continue
        budget[0] -= 1
        tally.sent += 1
        seq[0] += 1
        if slot >= 0:
            request[slot:slot + 9] = b"%09d" % (seq[0] % 1_000_000_000)
        t0 = time.perf_counter_ns()
        try:
            status, ttft, body = await asyncio.wait_for(conn.request(bytes(request)), timeout_s)
        except (ResponseError, TimeoutError) as exc:
            tally.error(f"{type(exc).__name__}: {exc}")
            if conn.transport is not None:
                conn.transport.close()
            conn = None
            continue
        t1 = time.perf_counter_ns()
        problem = _check(status, body, stream)
        if problem is not None:
            tally.error(problem)
            continue
        tally.ok += 1
        if t0 >= t_measure:
            tally.latencies_ns.append(t1 - t0)
            if stream:
                tally.ttfts_ns.append((ttft or t1) - t0)
    if conn is not None and conn.transport is not None:
        conn.transport.close()


async def run(url: str | list[str], concurrency: int, duration_s: float, warmup_s: float, stream: bool,
              max_requests: int, timeout_s: float, bearer: str = "bench") -> dict:
    """Drive the target; returns counts, the measured window, raw latencies (µs) and TTFTs (µs, streams only).
    Several URLs (replicas of one service): client i talks to URL i mod n, like a round-robin load balancer."""
    urls = [url] if isinstance(url, str) else url
    body = request_body(stream)
    targets = []
    for one in urls:
        u = urlsplit(one)
        host, port = u.hostname or "127.0.0.1", u.port or 80
        payload = (f"POST {u.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                   f"Accept: {'text/event-stream' if stream else 'application/json'}\r\n"
                   f"Authorization: Bearer {bearer}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        targets.append((host, port, payload))
    tally = Tally()
    seq = [0]
    start = time.perf_counter_ns()
    t_measure = start + int(warmup_s * 1e9)
    t_end = t_measure + int(duration_s * 1e9)
    cpu0 = time.process_time()
    await asyncio.gather(*(client(*targets[i % len(targets)], stream, t_measure, t_end, [max_requests], tally,
                                  timeout_s, seq) for i in range(concurrency)))
    finished = time.perf_counter_ns()
    return {
        "url": url if isinstance(url, str) else ",".join(urls), "concurrency": concurrency, "stream": stream, "duration_s": duration_s, "warmup_s": warmup_s,
        "sent": tally.sent, "ok": tally.ok, "errors": tally.errors, "error_samples": tally.error_samples,
        "measured": len(tally.latencies_ns), "window_s": duration_s,
        "wall_s": (finished - start) / 1e9, "loadgen_cpu_s": time.process_time() - cpu0,
        "request_bytes": len(body),
        "latencies_us": [round(x / 1000, 1) for x in tally.latencies_ns],
        "ttfts_us": [round(x / 1000, 1) for x in tally.ttfts_ns],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, action="append",
                    help="target; repeat for replicas (client i uses URL i mod n)")
    ap.add_argument("-c", "--concurrency", type=int, default=1)
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds (after warmup)")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--max-requests", type=int, default=200_000, help="per client; bounds the run by count too")
    ap.add_argument("--timeout", type=float, default=10.0, help="per request")
    ap.add_argument("--bearer", default="bench", help="the API key sent as Authorization: Bearer")
    args = ap.parse_args()
    for url in args.url:
        host = urlsplit(url).hostname or ""
        if not host.startswith("127.") and host not in ("localhost", "::1"):
            raise SystemExit("loadgen only targets loopback addresses")
    import uvloop

    result = uvloop.run(run(args.url[0] if len(args.url) == 1 else args.url, args.concurrency, args.duration, args.warmup, args.stream,
                            args.max_requests, args.timeout, args.bearer))
    data = memoryview(orjson.dumps(result))
    # Loop: with PYTHONUNBUFFERED=1 sys.stdout.buffer is a raw FileIO whose write() to a full pipe can be partial.
    while data:
        data = data[os.write(sys.stdout.fileno(), data):]


if __name__ == "__main__":
    main()
