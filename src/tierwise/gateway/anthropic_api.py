"""``POST /v1/messages`` and ``POST /v1/tiers/<tier>/messages``: the Anthropic Messages API in front of any model.

Translation is :mod:`tierwise.apis.messages`; the pipeline (keys, limits, routing, governance, ledger) is
:func:`tierwise.gateway.dialects.serve`. Errors on these paths are in Anthropic's shape
(``{"type": "error", "error": {"type", "message"}}``) so the ``anthropic`` SDK raises its usual exceptions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from tierwise.apis.messages import MessageEvents, chat_to_message, error_body, messages_to_chat
from tierwise.errors import APIError
from tierwise.gateway.dialects import serve
from tierwise.service import ChatResult
from tierwise.types import JSON, LedgerRecord, Usage

if TYPE_CHECKING:
    from tierwise.gateway.app import Gateway


def _msg_id(record: LedgerRecord) -> str:
    return "msg_" + record.id.rsplit("-", 1)[-1]


class MessagesDialect:
    name = "anthropic-messages"

    def to_internal(self, body: JSON) -> JSON:
        return messages_to_chat(body)

    def error(self, err: APIError, headers: dict[str, str] | None) -> web.Response:
        h = dict(headers or {})
        if err.headers:
            h.update(err.headers)
        return web.Response(status=err.status, body=orjson.dumps(error_body(err)), content_type="application/json",
                            headers=h)

    def answer(self, result: ChatResult, raw: JSON, usage: Usage) -> JSON:
        return chat_to_message(result.body, usage, result.record.model or "", _msg_id(result.record))

    def events(self, record: LedgerRecord, raw: JSON) -> MessageEvents:
        return MessageEvents(_msg_id(record), record.model or "")


def register(app: web.Application, gw: Gateway) -> None:
    dialect = MessagesDialect()

    async def messages(request: web.Request) -> web.StreamResponse:
        return await serve(gw, request, dialect)

    async def not_here(request: web.Request) -> web.Response:
        """Other methods and Messages sub-paths (count_tokens, batches) answer in Anthropic's shape too."""
        if request.path.endswith("/messages"):
            err = APIError(405, f"{request.method} {request.path}: use POST", headers={"Allow": "POST"})
        else:
            err = APIError(404, f"{request.method} {request.path}: not served by tierwise (only POST /v1/messages "
                                "is)")
        return dialect.error(err, None)

    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/tiers/{tier:[^/]+}/messages", messages)
    # the anthropic SDK appends /v1/messages to its base_url: base_url=".../v1/tiers/<tier>" lands here
    app.router.add_post("/v1/tiers/{tier:[^/]+}/v1/messages", messages)
    app.router.add_route("*", "/v1/messages", not_here)
    app.router.add_route("*", "/v1/messages/{rest:.*}", not_here)
