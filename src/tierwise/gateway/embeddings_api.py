"""``POST /v1/embeddings``: embeddings from the configured model, with the gateway's keys, budgets and ledger.

Not a chat, so not the dialect pipeline, but the same rules in the same order: the caller's key (401), body limits
and JSON depth (400/408/413), the request (400 naming the field), the model (404), the key's model allow-list
(403), budgets and rate limits (429, reserved at the estimated input cost), the crash journal, then the upstream
call with the executor's retries, backoff and deadline. Exactly one ledger record per request, whatever happens:
refusals as ``rejected``, the answer with its input tokens priced at the model's input rate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web

from tierwise.apis.embeddings import EmbeddingEstimate, EmbeddingRequest, parse_embeddings
from tierwise.errors import APIError
from tierwise.gateway.app import _error, _header, _json, _route_headers
from tierwise.governance import Principal
from tierwise.governance.access import check_tier
from tierwise.providers.errors import bad_response
from tierwise.providers.openai import Embeddings, OpenAIProvider
from tierwise.requests import TAGS_HEADER, take_tags
from tierwise.routing.engine import Decision, RouteRequest
from tierwise.routing.executor import Call, RequestFailed
from tierwise.service import _next_request_id
from tierwise.types import JSON, Attempt, LedgerRecord, UpstreamError

if TYPE_CHECKING:
    from tierwise.gateway.app import Gateway
    from tierwise.service import Tierwise

log = logging.getLogger("tierwise.gateway")
API_NOTE = "api: openai-embeddings"


def _record(principal: Principal, req: EmbeddingRequest, raw: JSON, route: RouteRequest) -> LedgerRecord:
    requested = raw.get("model")
    return LedgerRecord(
        id=_next_request_id(), ts=time.time(), principal=principal.name, key_id=principal.key_id,
        customer=principal.customer, department=principal.department, project=principal.project, tags=route.tags,
        requested_model=requested if isinstance(requested, str) else None, session_id=route.session_id,
        tier_source="direct", notes=[API_NOTE],
    )


async def _begin(svc: Tierwise, principal: Principal, raw: JSON, route: RouteRequest) -> tuple[Call, EmbeddingRequest]:
    """Check, authorise, admit and journal the request; raises :class:`APIError` for every refusal."""
    req = parse_embeddings(raw, svc.cfg.embeddings)
    check_tier(principal, None, req.model, svc.cfg)
    record = _record(principal, req, raw, route)
    estimate = EmbeddingEstimate(svc.prices, req)
    governed = await svc.governor.admit(record, principal, None, (req.model,), estimate)
    record.estimated_cost_usd = estimate(req.model)
    decision = Decision(tier=None, tier_source="direct", candidates=[req.model], policy="embeddings", direct=True)
    call = Call(decision, raw, record, svc.executor.clock() + svc.cfg.server.request_deadline_s, route.session_id)
    call.reserved = governed.admitted
    try:
        svc._journal_begin(record)
    except BaseException:
        if governed.admitted:
            svc.governor.settle_nothing(record.id)
        raise
    return call, req


async def _call(svc: Tierwise, call: Call, req: EmbeddingRequest) -> JSON:
    """The upstream call with retries; books the attempt, usage and cost on the call's record."""
    model = req.model
    provider = svc.providers[svc.cfg.models[model].provider]
    if not isinstance(provider, OpenAIProvider):  # the config check refuses this; keep the invariant local too
        raise APIError(500, f"model '{model}' is not on an OpenAI-format provider", type="server_error",
                       code="internal_error")
    body = {**call.body, "model": svc.cfg.upstream_name(model)}

    async def attempt(timeout: float) -> Embeddings:
        result = await provider.embed(body, timeout_s=timeout)
        if len(result.body["data"]) != req.count:
            raise bad_response(provider.name, f"{len(result.body['data'])} embeddings for {req.count} inputs")
        return result

    try:
        result, started, retry = await svc.executor._with_retries(call, model, attempt)
    except UpstreamError as err:  # retries spent: no other model may answer (another model's vectors differ)
        raise RequestFailed(err, call.record.attempts) from None
    rec = call.record
    usage = result.usage
    if usage is None:
        usage = EmbeddingEstimate(svc.prices, req).usage(model)
        rec.notes.append("usage estimated by tierwise: the upstream reported none")
    cost = svc.prices.cost(model, usage)
    latency = (svc.executor.clock() - started) * 1000
    rec.attempts.append(Attempt(model, "ok", 200, None, latency, retry, usage, cost.total_usd))
    rec.usage, rec.cost, rec.model = usage, cost, model
    svc.health.record_success(model, None, time.time())
    out = result.body
    out["model"] = model
    if result.usage is None:
        out["usage"] = {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens}
    return out


async def embeddings(gw: Gateway, request: web.Request) -> web.StreamResponse:
    svc = gw.svc
    route = RouteRequest(requested_model=None, session_id=_header(request, "X-Session-Id"))

    async def start(principal: Principal, raw: JSON) -> tuple[Call, EmbeddingRequest]:
        route.tags = take_tags(raw, request.headers.getall(TAGS_HEADER, None))
        return await _begin(svc, principal, raw, route)

    admitted = await gw.admit(request, route, start, _error, "embeddings")
    if isinstance(admitted, web.StreamResponse):
        return admitted
    (call, req), _ = admitted
    try:
        body = await _call(svc, call, req)
    except asyncio.CancelledError:
        svc._book_cancelled(call)
        svc._finish(call, call.started, "client_cancelled", 499, "client disconnected before the answer")
        raise
    except Exception as exc:
        failed = svc._fail(call, call.started, exc)
        return _json(failed.status, failed.body(), _route_headers(call.record))
    svc._finish(call, call.started, "ok", 200, None)
    return _json(200, body, _route_headers(call.record))


def register(app: web.Application, gw: Gateway) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await embeddings(gw, request)

    app.router.add_post("/v1/embeddings", handler)
