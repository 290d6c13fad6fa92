"""A lean OpenAI Chat Completions upstream for the overhead benchmark: raw asyncio + uvloop, no framework.

Why not ``tests/fakes/upstream.py``: that fake records requests, takes a lock and runs aiohttp's full request
machinery, which is right for tests but makes the *reference* slower than it needs to be. The reference has to be
as cheap as possible, because on a 2-core machine every microsecond the mock spends is taken from the gateway it
is measuring, and "direct to the mock" is what "added latency" is subtracted from.

It speaks the same wire format as OpenAI: ``POST /v1/chat/completions`` answers a ``chat.completion`` with usage
(``Content-Length``) or, for ``stream: true``, an SSE stream of ``chat.completion.chunk`` events — role chunk, one
chunk per token-sized piece, the finish chunk, the usage chunk (``choices: []``, only with
``stream_options.include_usage``) and ``data: [DONE]`` — over ``Transfer-Encoding: chunked``. With no pacing the
whole stream goes out in one write, like a fast upstream that already has the answer. ``GET /health`` answers 200.

    python bench/overhead/mock_upstream.py [--port 0]     # prints "PORT <n>" on stdout once listening
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sys
import time

import orjson

# 171 words ≈ 195 o200k tokens: the "small realistic" answer of the benchmark.
ANSWER_TEXT = (
    "Sure. Here is a short summary of the trade-offs you asked about. A router in front of several models saves "
    "money when most requests are easy, because the cheap model answers them well and only the hard ones go to "
    "the large model. The savings depend on how well the router tells the two apart: a wrong guess on an easy "
    "request costs a little money, while a wrong guess on a hard request costs quality, which is usually worse. "
    "That is why a cascade that checks the cheap answer before returning it can beat a classifier that decides "
    "up front, at the price of extra latency on the requests that escalate. Caching helps too, since repeated "
    "system prompts are billed at a discount by most providers. Finally, keep an honest ledger of every request, "
    "including failures and retries, so that the savings you report are the savings you actually got, and not an "
    "estimate that forgets the calls that failed halfway. In short: measure first, then route, then measure again."
)
ANSWER_WORDS = ANSWER_TEXT.split(" ")
PROMPT_TOKENS, COMPLETION_TOKENS = 189, 195  # what o200k_base counts for the benchmark request and answer

_HEAD_JSON = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
_HEAD_SSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n")
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n{\"error\":\"not found\"}"
_BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 23\r\n\r\n{\"error\":\"bad request\"}"
_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
_ID_SLOT = b"chatcmpl-mock-XXXXXXXXXXXX"
_ids = itertools.count(1)


def _usage() -> dict:
    return {
        "prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0},
    }


def completion_body(model: str) -> bytes:
    """A full ``chat.completion``; the id is patched per response (see :func:`_with_id`)."""
    return orjson.dumps({
        "id": _ID_SLOT.decode(), "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(ANSWER_WORDS), "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": _usage(), "service_tier": "default", "system_fingerprint": "fp_mock",
    })


def stream_body(model: str, include_usage: bool) -> bytes:
    """All SSE events of one streamed answer, concatenated (one HTTP chunk when unpaced)."""
    base: dict = {"id": _ID_SLOT.decode(), "object": "chat.completion.chunk", "created": int(time.time()),
                  "model": model, "system_fingerprint": "fp_mock"}
    if include_usage:
        base["usage"] = None

    def ev(obj: dict) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return ev({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    out = [chunk({"role": "assistant", "content": "", "refusal": None})]
    out += [chunk({"content": (w if i == 0 else " " + w)}) for i, w in enumerate(ANSWER_WORDS)]
    out.append(chunk({}, "stop"))
    if include_usage:
        out.append(ev({**base, "choices": [], "usage": _usage()}))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


class _Templates:
    """Response bodies per (model, stream, include_usage), built once: the mock's per-request work is a dict lookup,
    one ``orjson.loads`` of the request (a real upstream parses it too) and an id substitution."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, bool, bool], bytes] = {}

    def get(self, model: str, stream: bool, include_usage: bool) -> bytes:
        key = (model, stream, include_usage)
        body = self._cache.get(key)
        if body is None:
            body = stream_body(model, include_usage) if stream else completion_body(model)
            if len(self._cache) < 64:
                self._cache[key] = body
        return body


TEMPLATES = _Templates()


def _with_id(body: bytes) -> bytes:
    return body.replace(_ID_SLOT, b"chatcmpl-mock-%012d" % next(_ids))


def respond(method: bytes, path: bytes, body: bytes) -> bytes:
    """The full HTTP response bytes for one request."""
    if method == b"GET" and path == b"/health":
        return _OK
    if method != b"POST" or not path.endswith(b"/chat/completions"):
        return _NOT_FOUND
    try:
        req = orjson.loads(body)
        model = str(req.get("model") or "mock")
        stream = bool(req.get("stream"))
        opts = req.get("stream_options") or {}
        include_usage = bool(opts.get("include_usage")) if isinstance(opts, dict) else False
    except (orjson.JSONDecodeError, AttributeError):
        return _BAD
    payload = _with_id(TEMPLATES.get(model, stream, include_usage))
    if stream:
        return _HEAD_SSE + b"%x\r\n" % len(payload) + payload + b"\r\n0\r\n\r\n"
    return _HEAD_JSON % len(payload) + payload


class MockProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive server side: parses ``Content-Length`` requests (pipelining-safe) and answers each."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            total = end + 4 + length
            if len(self.buf) < total:
                return
            body = bytes(self.buf[end + 4:total])
            del self.buf[:total]
            method, path, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
            assert self.transport is not None
            self.transport.write(respond(method, path, body))


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(MockProtocol, "127.0.0.1", port, backlog=1024)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    import uvloop

    uvloop.run(main(args.port))
    sys.exit(0)
