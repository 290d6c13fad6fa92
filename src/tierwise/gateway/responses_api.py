"""``POST /v1/responses`` and ``POST /v1/tiers/<tier>/responses``: OpenAI's Responses API, stateless.

Translation is :mod:`tierwise.apis.responses`; the pipeline (keys, limits, routing, governance, ledger) is
:func:`tierwise.gateway.dialects.serve`. Errors are in OpenAI's shape, as on every other OpenAI path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from tierwise.apis.response_events import ResponseEvents
from tierwise.apis.responses import chat_to_response, responses_to_chat
from tierwise.errors import APIError
from tierwise.gateway.app import _error
from tierwise.gateway.dialects import serve
from tierwise.service import ChatResult, ChatStream
from tierwise.types import JSON, LedgerRecord, Usage

if TYPE_CHECKING:
    from tierwise.gateway.app import Gateway


def _resp_id(record: LedgerRecord) -> str:
    return "resp_" + record.id.rsplit("-", 1)[-1]


class ResponsesDialect:
    name = "openai-responses"

    def to_internal(self, body: JSON) -> JSON:
        return responses_to_chat(body)

    def error(self, err: APIError, headers: dict[str, str] | None) -> web.Response:
        resp = _error(err)
        if headers:
            resp.headers.update(headers)
        return resp

    def answer(self, result: ChatResult, raw: JSON, usage: Usage) -> JSON:
        return chat_to_response(result.body, usage, result.record.model or "", _resp_id(result.record), raw)

    def events(self, stream: ChatStream, raw: JSON) -> ResponseEvents:
        return ResponseEvents(_resp_id(stream.record), stream.record.model or "", raw)


def register(app: web.Application, gw: Gateway) -> None:
    dialect = ResponsesDialect()

    async def responses(request: web.Request) -> web.StreamResponse:
        return await serve(gw, request, dialect)

    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/tiers/{tier:[^/]+}/responses", responses)
