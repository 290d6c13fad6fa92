"""The fake upstream's aiohttp application: routes, request handling, fault injection, shared state.

Handlers run on the server's loop; :class:`State` is shared with whichever thread controls the fake, behind one lock
held only for O(1) work (no I/O under the lock).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from . import anthropic_wire, openai_wire
from .behaviour import Behaviour, Fault, make_answer

_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_GARBAGE = b"<html><body><h1>502 Bad Gateway</h1>\x00\xff not json"


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # decoded JSON (None when the body was not JSON)


class State:
    """Everything handlers share with the controlling thread, behind one lock."""

    def __init__(self, max_records: int) -> None:
        self.lock = threading.Lock()
        self.default = Behaviour()  # what reset() returns to (the CLI's --no-record changes it)
        self.behaviour = self.default
        self.faults: deque[Fault] = deque()
        self.requests: deque[RecordedRequest] = deque(maxlen=max_records)
        self.calls: Counter[str] = Counter()
        self.ids = itertools.count(1)

    def reset(self) -> None:
        """Back to defaults (caller holds the lock)."""
        self.behaviour = self.default
        self.faults.clear()
        self.requests.clear()
        self.calls.clear()

    def begin(self, request: web.Request, body: Any) -> tuple[Behaviour, Fault | None, int]:
        with self.lock:
            self.calls[request.path] += 1
            b = self.behaviour
            if b.record:
                headers = {k.lower(): v for k, v in request.headers.items()}
                self.requests.append(RecordedRequest(request.path, headers, body))
            fault = self.faults.popleft() if self.faults else None
            return b, fault, next(self.ids)


STATE = web.AppKey("state", State)


async def start_server(state: State, host: str, port: int) -> web.AppRunner:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE] = state
    app.router.add_post("/v1/chat/completions", _openai)
    app.router.add_post("/v1/messages", _anthropic)
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/_control", _control)
    app.router.add_get("/_control", _control_stats)
    app.router.add_get("/_control/requests", _control_requests)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048, reuse_address=True)
    await site.start()
    return runner


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _drop(request: web.Request) -> web.Response:
    """Close the socket without an answer (the returned response is never written)."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=499)


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


async def _chat(request: web.Request, fmt: Any, anthropic: bool) -> web.StreamResponse:
    state: State = request.app[STATE]
    body = await _read_json(request)
    b, fault, n = state.begin(request, body)
    kind = fault.kind if fault else None
    if kind == "close_connection":
        return _drop(request)
    await _sleep(b.latency_s + (fault.seconds if kind == "delay" else 0.0))
    if kind == "http_error":
        return _http_error(fault, fmt)
    if kind == "raw":
        raw = orjson.dumps(fault.body) if isinstance(fault.body, dict | list) else str(fault.body).encode()
        return web.Response(status=fault.status, body=raw, headers={"Content-Type": fault.content_type})
    error = _auth_error(request, b, anthropic) or _validate(body, anthropic)
    if error:
        return web.Response(status=error[0], body=fmt.error_body(*error), content_type="application/json")
    if kind == "garbage_body" and not body.get("stream"):
        return web.Response(body=_GARBAGE, content_type="application/json")
    answer = make_answer(b, body, n, empty_length=kind == "empty_length")
    model = body.get("model") or "fake-model"
    rid = f"{'msg_fake' if anthropic else 'chatcmpl-fake'}{n}"
    headers = {"request-id" if anthropic else "x-request-id": f"req_{n}"}
    if not body.get("stream"):
        samples = body.get("n") if isinstance(body.get("n"), int) else 1
        # n > 1: each further choice answers the body with "_sample" = i, so a reply function can vary them
        more = [make_answer(b, {**body, "_sample": i}, n) for i in range(1, samples)] if samples > 1 else None
        payload = anthropic_wire.message(answer, rid, model) if anthropic else openai_wire.completion(
            answer, rid, model, more)
        if kind == "disconnect_mid_stream":
            return await _cut_body(request, payload, headers)
        await _sleep(b.ttft_s + b.inter_chunk_s * max(0, len(answer.pieces) - 1))
        return web.Response(body=payload, content_type="application/json", headers=headers)
    if anthropic:
        head, rest = anthropic_wire.stream_events(answer, rid, model)
    else:
        include = bool((body.get("stream_options") or {}).get("include_usage")) and b.include_usage_in_stream
        head, rest = openai_wire.stream_events(answer, rid, model, include)
    return await _stream(request, b, fault, fmt, head, rest, headers)


async def _stream(request: web.Request, b: Behaviour, fault: Fault | None, fmt: Any, head: list[bytes],
                  rest: list[bytes], headers: dict[str, str]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={**_SSE_HEADERS, **headers})
    await resp.prepare(request)
    kind = fault.kind if fault else None
    if kind == "garbage_body":
        await resp.write(b"data: {this is not json\n\n")
        await resp.write_eof()
        return resp
    cut = fault.after_chunks if kind in ("disconnect_mid_stream", "stream_error") else None
    if cut is not None:
        rest = rest[:cut]
    if b.ttft_s <= 0 and b.inter_chunk_s <= 0:
        await resp.write(b"".join(head) + b"".join(rest))
    else:
        await resp.write(b"".join(head))
        await _sleep(b.ttft_s)
        for i, event in enumerate(rest):
            if i:
                await _sleep(b.inter_chunk_s)
            await resp.write(event)
    if kind == "disconnect_mid_stream":
        if request.transport is not None:
            request.transport.close()  # chunked body never terminated: the client sees a payload error
        return resp
    if kind == "stream_error":
        await resp.write(fmt.stream_error_event(fault.error_type, "Overloaded"))
    await resp.write_eof()
    return resp


async def _cut_body(request: web.Request, payload: bytes, headers: dict[str, str]) -> web.StreamResponse:
    """Announce the full Content-Length, send half, close: a non-streaming response cut off mid-body."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json", **headers})
    resp.content_length = len(payload)
    await resp.prepare(request)
    await resp.write(payload[: len(payload) // 2])
    if request.transport is not None:
        request.transport.close()
    return resp


def _http_error(fault: Fault, fmt: Any) -> web.Response:
    headers: dict[str, str] = {}
    if fault.retry_after is not None:
        ra = fault.retry_after
        headers["Retry-After"] = ra if isinstance(ra, str) else (str(int(ra)) if float(ra).is_integer() else str(ra))
    if fault.retry_after_ms is not None:
        headers["retry-after-ms"] = str(fault.retry_after_ms)
    if fault.body is None:
        body = fmt.error_body(fault.status, f"fake upstream error {fault.status}")
        ctype = "application/json"
    elif isinstance(fault.body, dict | list):
        body, ctype = orjson.dumps(fault.body), "application/json"
    else:
        body, ctype = str(fault.body).encode(), "text/plain"
    return web.Response(status=fault.status, body=body, content_type=ctype, headers=headers)


def _auth_error(request: web.Request, b: Behaviour, anthropic: bool) -> tuple[int, str] | None:
    if b.api_key is None:
        return None
    if anthropic:
        ok = request.headers.get("x-api-key") == b.api_key
    else:
        ok = request.headers.get("Authorization") == f"Bearer {b.api_key}"
    return None if ok else (401, "Incorrect API key provided")


def _validate(body: Any, anthropic: bool) -> tuple[int, str] | None:
    """The checks the real APIs make that adapters most easily get wrong."""
    if not isinstance(body, dict):
        return 400, "We could not parse the JSON body of your request."
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        return 400, "messages: field required"
    if not body.get("model"):
        return 400, "model: field required"
    if anthropic:
        if not isinstance(body.get("max_tokens"), int):
            return 400, "max_tokens: Field required"
        if any(m.get("role") not in ("user", "assistant") for m in body["messages"] if isinstance(m, dict)):
            return 400, "messages: roles must be 'user' or 'assistant' (use the top-level system parameter)"
    return None


async def _openai(request: web.Request) -> web.StreamResponse:
    return await _chat(request, openai_wire, anthropic=False)


async def _anthropic(request: web.Request) -> web.StreamResponse:
    if "anthropic-version" not in request.headers:
        body = anthropic_wire.error_body(400, "anthropic-version: header is required")
        return web.Response(status=400, body=body, content_type="application/json")
    return await _chat(request, anthropic_wire, anthropic=True)


async def _embeddings(request: web.Request) -> web.StreamResponse:
    """OpenAI ``/v1/embeddings``; faults (http_error, delay, close_connection, garbage_body, raw) apply as for chat."""
    state: State = request.app[STATE]
    body = await _read_json(request)
    b, fault, _ = state.begin(request, body)
    kind = fault.kind if fault else None
    if kind == "close_connection":
        return _drop(request)
    await _sleep(b.latency_s + (fault.seconds if kind == "delay" else 0.0))
    if kind == "http_error":
        return _http_error(fault, openai_wire)
    if kind == "raw":
        raw = orjson.dumps(fault.body) if isinstance(fault.body, dict | list) else str(fault.body).encode()
        return web.Response(status=fault.status, body=raw, headers={"Content-Type": fault.content_type})
    if kind == "garbage_body":
        return web.Response(body=_GARBAGE, content_type="application/json")
    error = _auth_error(request, b, False)
    if error is None and (not isinstance(body, dict) or not body.get("model") or "input" not in body):
        error = (400, "model and input: field required")
    if error:
        return web.Response(status=error[0], body=openai_wire.error_body(*error), content_type="application/json")
    inputs = body["input"]
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
        inputs = [inputs]
    dims = body.get("dimensions") if isinstance(body.get("dimensions"), int) else 8
    payload = openai_wire.embeddings(inputs, body["model"], dims, body.get("encoding_format") == "base64",
                                     b.embeddings_usage, b.prompt_tokens)
    return web.Response(body=payload, content_type="application/json")


async def _models(request: web.Request) -> web.Response:
    state: State = request.app[STATE]
    with state.lock:
        state.calls[request.path] += 1
        ids = state.behaviour.models
    return web.Response(body=openai_wire.models(ids), content_type="application/json")


async def _control(request: web.Request) -> web.Response:
    state: State = request.app[STATE]
    script = await _read_json(request)
    if not isinstance(script, dict):
        return web.json_response({"error": "control script must be a JSON object"}, status=400)
    try:
        faults = [Fault.from_json(f) for f in script.get("faults") or []]
        with state.lock:
            if script.get("reset"):
                state.reset()
            if script.get("set"):
                state.behaviour = state.behaviour.updated(**script["set"])
            state.faults.extend(faults)
    except (TypeError, ValueError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return await _control_stats(request)


async def _control_stats(request: web.Request) -> web.Response:
    state: State = request.app[STATE]
    with state.lock:
        stats = {"calls": dict(state.calls), "requests": len(state.requests), "pending_faults": len(state.faults),
                 "behaviour": state.behaviour.as_json()}
    return web.Response(body=orjson.dumps(stats), content_type="application/json")


async def _control_requests(request: web.Request) -> web.Response:
    state: State = request.app[STATE]
    with state.lock:
        recs = [{"path": r.path, "headers": r.headers, "body": r.body} for r in state.requests]
    return web.Response(body=orjson.dumps(recs), content_type="application/json")
