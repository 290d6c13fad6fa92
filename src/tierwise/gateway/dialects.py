"""One request pipeline for every client API that is a chat underneath (Anthropic Messages, OpenAI Responses).

A :class:`Dialect` translates the client's body into the internal chat request and the answers, stream chunks and
errors back; :func:`serve` does everything else exactly as ``/v1/chat/completions`` does (same authentication,
body limits, validation, routing, cascades, governance, ledger): the caller's key, the hostile-input rules of
:mod:`tierwise.requests`, one ledger record per request whatever happens, refusals booked with their status. Only
the shapes differ, so a Claude SDK and an OpenAI SDK see the same tiers, prices and budgets.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from tierwise.errors import APIError
from tierwise.gateway.app import _BatchedSSE, _has_content, _json, _route_headers
from tierwise.governance import Principal
from tierwise.requests import TAGS_HEADER, take_tags
from tierwise.routing.executor import Call
from tierwise.service import ChatResult, ChatStream
from tierwise.types import JSON, LedgerRecord, Usage

if TYPE_CHECKING:
    from tierwise.gateway.app import Gateway

log = logging.getLogger("tierwise.gateway")


class StreamEvents(Protocol):
    """Turns one stream's OpenAI chunks into the dialect's SSE bytes."""

    def start(self) -> bytes: ...

    def feed(self, chunk: JSON) -> bytes: ...

    def end(self, usage: Usage, error: APIError | None) -> bytes: ...


class Dialect(Protocol):
    #: ledger note ("api: <name>") on every routed request of this API
    name: str

    def to_internal(self, body: JSON) -> JSON:
        """The internal chat request; a 400 :class:`APIError` for a body this API would refuse."""
        ...

    def error(self, err: APIError, headers: dict[str, str] | None) -> web.Response:
        """``err`` in this API's error shape."""
        ...

    def answer(self, result: ChatResult, raw: JSON, usage: Usage) -> JSON:
        """The non-streaming answer (``usage``: what the served model used, from the booked record)."""
        ...

    def events(self, stream: ChatStream, raw: JSON) -> StreamEvents:
        """The event writer of one stream (opened: its model and first chunk are known)."""
        ...


def served_usage(record: LedgerRecord) -> Usage:
    """Tokens of the answer the client got: the served model's last successful attempt (a cascade's record also
    holds the rungs it escalated from, which the ledger books but the answer's usage does not include)."""
    for a in reversed(record.attempts):
        if a.model == record.model and a.usage is not None and a.outcome == "ok":
            return a.usage
    return record.usage


def _id_header(rid: str | None) -> dict[str, str] | None:
    return {"x-tierwise-request-id": rid} if rid else None


async def serve(gw: Gateway, request: web.Request, dialect: Dialect) -> web.StreamResponse:
    """Answer one request of ``dialect``'s API (the counterpart of ``Gateway.chat``, through the same admission)."""
    svc = gw.svc
    route = gw.route_of(request)

    async def start(principal: Principal, raw: JSON) -> tuple[Call, JSON]:
        body = dialect.to_internal(raw)
        route.tags = take_tags(body, request.headers.getall(TAGS_HEADER, None))
        return await svc.begin(body, route, principal), body

    admitted = await gw.admit(request, route, start, lambda err, rid: dialect.error(err, _id_header(rid)),
                              dialect.name)
    if isinstance(admitted, web.StreamResponse):
        return admitted
    (call, body), raw = admitted
    call.record.notes.append(f"api: {dialect.name}")
    if body.get("stream"):
        return await _stream(gw, request, dialect, call, raw)
    try:
        result = await svc.complete(call)
    except APIError as err:
        return dialect.error(err, _route_headers(call.record, budget=call.budget))
    return _json(200, dialect.answer(result, raw, served_usage(result.record)),
                 _route_headers(result.record, budget=call.budget))


async def _stream(gw: Gateway, request: web.Request, dialect: Dialect, call: Call, raw: JSON) -> web.StreamResponse:
    try:
        stream = await gw.svc.open_stream(call)
    except APIError as err:
        return dialect.error(err, _route_headers(call.record, budget=call.budget))
    resp = web.StreamResponse(
        status=200,
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                 **_route_headers(stream.record, final=False, budget=call.budget)},
    )
    events = dialect.events(stream, raw)
    gen = stream.chunks()
    out = _BatchedSSE(resp)
    try:
        await resp.prepare(request)
        await out.send(events.start())
        async for chunk in gen:
            data = events.feed(chunk)
            if data:
                await out.send(data, _has_content(chunk))
        # the generator has ended: the stream is booked, so the served usage is known
        await out.send(events.end(served_usage(stream.record), stream.error))
        await out.close()
        await resp.write_eof()
    except (ConnectionResetError, ConnectionError):
        out.abort()  # the client went away; closing the generator books the record as client_cancelled
    finally:
        await gen.aclose()
    return resp
