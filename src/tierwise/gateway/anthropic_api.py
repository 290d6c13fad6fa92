"""``POST /v1/messages`` and ``POST /v1/tiers/<tier>/messages``: the Anthropic Messages API in front of any model.

Translation is :mod:`tierwise.apis.messages` (streams: :mod:`tierwise.apis.message_events`); the pipeline (keys,
limits, routing, governance, ledger) is :func:`tierwise.gateway.dialects.serve`. Errors on these paths are in
Anthropic's shape (``{"type": "error", "error": {"type", "message"}}``) so the ``anthropic`` SDK raises its usual
exceptions. A stream's ``message_start`` carries :func:`prompt_usage`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from tierwise.apis.message_events import MessageEvents
from tierwise.apis.messages import chat_to_message, error_body, messages_to_chat
from tierwise.errors import APIError
from tierwise.gateway.dialects import serve, served_usage
from tierwise.service import ChatResult, ChatStream
from tierwise.types import JSON, LedgerRecord, Usage

if TYPE_CHECKING:
    from tierwise.gateway.app import Gateway


def _msg_id(record: LedgerRecord) -> str:
    return "msg_" + record.id.rsplit("-", 1)[-1]


def prompt_usage(gw: Gateway, stream: ChatStream) -> Usage:
    """The prompt's tokens as known when a stream starts, for ``message_start`` (its output side is 0):

    - what the upstream reported before the first token (an Anthropic upstream's ``message_start``: exact, with
      its cache reads and writes);
    - a cascade's answer, gated before it streams: the served call is over, so its booked usage;
    - else (OpenAI-shaped upstreams report usage only at the end) the gateway's own count of the prompt, with the
      served model's tokenizer, the one admission estimates budgets with. Never fails the stream: 0 if it can't."""
    if stream.prompt_usage is not None:
        return stream.prompt_usage
    if stream.call.prebooked:
        u = served_usage(stream.record)
        return Usage(input_tokens=u.input_tokens, cache_read_tokens=u.cache_read_tokens,
                     cache_write_tokens=u.cache_write_tokens)
    try:
        return Usage(input_tokens=gw.svc.prices.estimator(stream.call.body, stream.record.tier)
                     .prompt_tokens(stream.model))
    except Exception:  # an estimate is a courtesy: no model price/encoding, an odd body
        return Usage()


class MessagesDialect:
    name = "anthropic-messages"

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def to_internal(self, body: JSON) -> JSON:
        return messages_to_chat(body)

    def error(self, err: APIError, headers: dict[str, str] | None) -> web.Response:
        h = dict(headers or {})
        if err.headers:
            h.update(err.headers)
        return web.Response(status=err.status, body=orjson.dumps(error_body(err)), content_type="application/json",
                            headers=h)

    def answer(self, result: ChatResult, raw: JSON, usage: Usage) -> JSON:
        return chat_to_message(result.body, usage, result.record.model or "", _msg_id(result.record),
                               raw.get("stop_sequences") or ())

    def events(self, stream: ChatStream, raw: JSON) -> MessageEvents:
        return MessageEvents(_msg_id(stream.record), stream.record.model or "", raw.get("stop_sequences") or (),
                             prompt_usage(self.gw, stream))


def register(app: web.Application, gw: Gateway) -> None:
    dialect = MessagesDialect(gw)

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
