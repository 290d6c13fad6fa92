"""The OpenAI-compatible HTTP API (aiohttp).

aiohttp rather than an ASGI stack: a bare aiohttp pass-through proxy is the practical floor for Python on this
hardware (~0.3 ms added, ~3,200 RPS on 2 cores), and the gateway's target is to add < 1 ms. Handlers are thin: they
parse, authenticate and translate between HTTP and :class:`tierwise.service.Tierwise`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
from aiohttp import __version__ as aiohttp_version
from aiohttp import web
from aiohttp.http_exceptions import (
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from tierwise.errors import APIError
from tierwise.governance import ANONYMOUS, Principal
from tierwise.governance.auth import Authenticator, AuthFailure, AuthUnavailable
from tierwise.governance.keys import hash_key
from tierwise.requests import MAX_NAME_CHARS, TAGS_HEADER, parse_json_body, take_tags
from tierwise.routing.engine import RouteRequest
from tierwise.routing.executor import Call, count_fallbacks
from tierwise.sanitize import clean_optional, clean_text
from tierwise.service import Tierwise
from tierwise.types import JSON, LedgerRecord

T = TypeVar("T")

log = logging.getLogger("tierwise.gateway")

SVC_KEY: web.AppKey[Tierwise] = web.AppKey("tierwise", Tierwise)
GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("tierwise.gateway")
_JSON = "application/json"

#: Longest credential read from Authorization / x-api-key; a longer one is refused outright (never cut: a cut token
#: could equal a real key).
MAX_KEY_CHARS = 1024


def _json(status: int, body: JSON, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type=_JSON, headers=headers)


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, type="authentication_error", code="invalid_api_key")


def _error(err: APIError, request_id: str | None = None) -> web.Response:
    headers = {"x-tierwise-request-id": request_id} if request_id else {}
    if err.headers:
        headers.update(err.headers)
    return _json(err.status, err.body(), headers or None)


def _route_headers(rec: LedgerRecord, final: bool = True, budget: str | None = None) -> dict[str, str]:
    h = {
        "x-tierwise-request-id": rec.id,
        "x-tierwise-tier": rec.tier or "",
        "x-tierwise-tier-source": rec.tier_source or "",
        "x-tierwise-model": rec.model or "",
        "x-tierwise-escalations": str(rec.escalations),
        "x-tierwise-fallbacks": str(count_fallbacks(rec.attempts, rec.model)),
    }
    if final:
        h["x-tierwise-cost-usd"] = f"{rec.cost.total_usd:.10f}"
    else:  # a stream's cost is only known at its end: the header carries the pre-call estimate, marked as such
        h["x-tierwise-cost-usd"] = f"{rec.estimated_cost_usd:.10f}"
        h["x-tierwise-cost-estimated"] = "true"
    if budget:
        h["x-tierwise-budget"] = budget  # "<scope> <level> <step>": a budget step degraded this request's plan
    return h


def load_static_keys(env_name: str | None, env: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """``id:key,id:key`` from the named variable of ``env`` (default: the process environment) → {key: id};
    None when the gateway is open."""
    if not env_name:
        return None
    raw = (os.environ if env is None else env).get(env_name, "")
    keys: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        kid, sep, key = pair.partition(":")
        if not sep or not kid or not key:
            raise ValueError(f"{env_name}: entries must look like 'id:key' (got an entry without ':')")
        keys[key] = kid
    if not keys:
        raise ValueError(f"{env_name} is configured as the API key source but is empty")
    return keys


def _has_content(chunk: JSON) -> bool:
    choices = chunk.get("choices")
    if not choices:
        return False
    delta = choices[0].get("delta") or {}
    return bool(delta.get("content") or delta.get("tool_calls"))


class _BatchedSSE:
    """Coalesce SSE events into few socket writes without delaying any of them.

    Events up to the first one carrying content (time to first token) go out at once. Later events are buffered and flushed by a task that runs
    as soon as the handler next waits on the upstream, so a burst of chunks parsed from one network read becomes one
    write, while a slow upstream still sees every chunk forwarded immediately. One send per event was 50-80% of the
    gateway's CPU on streams (bench/results/profile-stream.md).
    """

    __slots__ = ("_resp", "_buf", "_task", "_first")

    _MAX = 65536  # flush inline (with back-pressure) above this many buffered bytes

    def __init__(self, resp: web.StreamResponse) -> None:
        self._resp = resp
        self._buf = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._first = True

    async def send(self, data: bytes, urgent: bool = False) -> None:
        if self._first:
            self._first = not urgent
            await self._resp.write(data)
            return
        if self._task is not None and self._task.done():
            task, self._task = self._task, None
            task.result()  # surfaces a failed write (client gone) here, in the handler
        self._buf += data
        if len(self._buf) >= self._MAX:
            await self._drain()
        elif self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        data = bytes(self._buf)
        self._buf.clear()
        if data:
            await self._resp.write(data)

    async def _drain(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            await task
        await self._flush()

    async def close(self) -> None:
        await self._drain()

    def abort(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


class _BodyNotRead(APIError):
    """The body could not be read whole (too large, too slow, malformed framing or encoding): the connection closes
    after the answer. aiohttp first reads and drops what the client still sends for up to its lingering time (10 s),
    so that a client still uploading gets to read the answer; ``broken`` skips that (nothing useful can follow a
    broken body, and aiohttp's lingering read would re-raise its error and log it as unhandled)."""

    broken = False


def _header(request: web.Request, name: str, max_chars: int = MAX_NAME_CHARS) -> str | None:
    """A header value safe to route on, store and echo: aiohttp decodes a non-UTF-8 byte to a lone surrogate
    (``surrogateescape``), which no UTF-8 encoder (orjson, SQLite) accepts; those and control characters become
    U+FFFD, and the value is cut to ``max_chars``."""
    return clean_optional(request.headers.get(name), max_chars)


class Gateway:
    def __init__(self, svc: Tierwise) -> None:
        self.svc = svc
        self.keys = load_static_keys(svc.cfg.server.api_keys_env)
        # static keys looked up by their SHA-256, as virtual keys are: no secret compared byte by byte
        self._static = None if self.keys is None else {hash_key(k): kid for k, kid in self.keys.items()}
        self._static_principals: dict[str, Principal] = {}
        self.key_mode = svc.cfg.governance.keys
        # virtual keys (governance.keys: required/optional): loaded at start-up (on_startup), refreshed in a thread
        self.auth: Authenticator | None = None if self.key_mode == "off" else Authenticator.from_config(svc.cfg)
        self.max_body = svc.cfg.server.max_body_bytes
        self.body_timeout_s = svc.cfg.server.body_timeout_s
        self.started = time.time()
        self.shutting_down = False
        self.telemetry: Any = None  # tierwise.telemetry.endpoint.Telemetry when metrics or tracing are on

    async def _principal(self, request: web.Request) -> Principal:
        """Who is calling. A key from ``server.api_keys_env`` (static) is checked first, then a virtual key
        (``governance.keys``). No key: the anonymous principal with ``governance.keys: optional`` or on an open
        gateway (neither configured: whatever is sent is ignored), else 401. A key that matches nothing: 401."""
        if self._static is None and self.auth is None:
            return ANONYMOUS
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "").strip()
        if not token:
            if self.key_mode == "optional":
                return ANONYMOUS
            raise _unauthorized("missing API key (send 'Authorization: Bearer <key>')")
        if len(token) > MAX_KEY_CHARS:
            raise _unauthorized("invalid API key")
        if self._static is not None:
            kid = self._static.get(hash_key(token))
            if kid is not None:
                return self._static_principals.setdefault(kid, Principal(kid, key_id=kid))
        if self.auth is None:
            raise _unauthorized("invalid API key")
        try:
            return await self.auth.authenticate(token)
        except AuthFailure as exc:
            raise _unauthorized(str(exc)) from None
        except AuthUnavailable:
            raise APIError(503, "cannot verify the API key right now (the governance store is unreachable); retry",
                           type="server_error", code="auth_unavailable") from None

    def _usable_tiers(self, principal: Principal) -> list[str]:
        """Tiers the principal may use: allowed, and with at least one model (or the fallback) it may use."""
        cfg = self.svc.cfg
        out = []
        for name, tier in cfg.tiers.items():
            if principal.refuses_tier(name):
                continue
            pool = [*tier.models, tier.fallback or cfg.fallback_model]
            if any(not principal.refuses_model(m) for m in pool):
                out.append(name)
        return out

    async def _body(self, request: web.Request) -> JSON:
        length = request.content_length
        if length is not None and length > self.max_body:
            raise _BodyNotRead(413, f"request body of {length} bytes exceeds the limit of {self.max_body} bytes",
                               code="request_too_large")
        try:
            if request.content.is_eof():  # the whole body came with the headers (most requests): nothing to wait for
                raw = await request.read()
            else:
                async with asyncio.timeout(self.body_timeout_s):  # ~6 us: only when the body is still arriving
                    raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _BodyNotRead(413, f"request body exceeds the limit of {self.max_body} bytes",
                               code="request_too_large") from None
        except TimeoutError:
            raise _BodyNotRead(408, f"request body not received within {self.body_timeout_s:g} s "
                                    "(server.body_timeout_s)", code="request_timeout") from None
        except web.RequestPayloadError:  # broken chunked framing or content encoding, body cut off, …
            err = _BodyNotRead(400, "request body is malformed or was cut off", code="invalid_body")
            err.broken = True
            raise err from None
        return parse_json_body(raw)

    def route_of(self, request: web.Request) -> RouteRequest:
        """What the request's URL and headers say about its routing (tier endpoint, X-Task, X-Session-Id)."""
        tier = request.match_info.get("tier")
        return RouteRequest(
            requested_model=None,
            task_header=_header(request, "X-Task"),
            endpoint_tier=None if tier is None else clean_text(tier, MAX_NAME_CHARS),
            session_id=_header(request, "X-Session-Id"),
        )

    async def admit(self, request: web.Request, route: RouteRequest,
                    start: Callable[[Principal, JSON], Awaitable[T]],
                    respond: Callable[[APIError, str | None], web.StreamResponse],
                    api: str = "chat") -> tuple[T, JSON] | web.StreamResponse:
        """Authenticate, read the body and ``start`` the request (translate, tag, route, admit) for any client API:
        ``(what start returned, the raw body)``, or the answer to a request refused before routing, in ``respond``'s
        shape (``respond(error, request id)``). Every refusal, hang-up and bug here still gets one ledger record."""
        principal: Principal | None = None
        raw: JSON | None = None
        try:
            principal = await self._principal(request)
            raw = await self._body(request)
            started = await start(principal, raw)
        except APIError as err:
            # Refused before routing: still one ledger record, so abuse and client bugs show up in the books.
            resp = respond(err, self.svc.reject(err, principal, raw, route))
            if isinstance(err, _BodyNotRead):
                resp.force_close()
                if err.broken and request.protocol is not None:
                    await resp.prepare(request)
                    await resp.write_eof()
                    request.protocol.force_close()  # closes once the answer is flushed, with no lingering read
            return resp
        except asyncio.CancelledError:  # the client hung up before routing finished
            self.svc.reject(APIError(499, "client disconnected before the request was routed", code="client_cancelled"),
                            principal, raw, route, status="client_cancelled")
            raise
        except Exception as exc:  # a bug before routing: a 500 in the API's error shape, and still one ledger record
            log.error("internal error before routing (%s): %s", api, type(exc).__name__, exc_info=exc)
            bug = APIError(500, f"internal error ({type(exc).__name__})", type="server_error", code="internal_error")
            return respond(bug, self.svc.reject(bug, principal, raw, route, status="error"))
        return started, raw

    async def chat(self, request: web.Request) -> web.StreamResponse:
        route = self.route_of(request)

        async def start(principal: Principal, body: JSON) -> Call:
            route.tags = take_tags(body, request.headers.getall(TAGS_HEADER, None))  # metadata + X-Tierwise-Tags
            return await self.svc.begin(body, route, principal)

        admitted = await self.admit(request, route, start, _error)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        call, body = admitted
        if body.get("stream"):
            return await self._stream(request, call)
        try:
            result = await self.svc.complete(call)
        except APIError as err:
            return _json(err.status, err.body(), _route_headers(call.record, budget=call.budget))
        return _json(200, result.body, _route_headers(result.record, budget=call.budget))

    async def _stream(self, request: web.Request, call: Call) -> web.StreamResponse:
        try:
            stream = await self.svc.open_stream(call)
        except APIError as err:
            return _json(err.status, err.body(), _route_headers(call.record, budget=call.budget))
        resp = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                     **_route_headers(stream.record, final=False, budget=call.budget)},
        )
        gen = stream.chunks()
        out = _BatchedSSE(resp)
        try:
            await resp.prepare(request)
            async for chunk in gen:
                await out.send(b"data: " + orjson.dumps(chunk) + b"\n\n", _has_content(chunk))
            if stream.error is not None:
                await out.send(b"data: " + orjson.dumps(stream.error.body()) + b"\n\n")
            await out.send(b"data: [DONE]\n\n")
            await out.close()
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):
            out.abort()  # the client went away; closing the generator books the record as client_cancelled
        finally:
            await gen.aclose()
        return resp

    async def models(self, request: web.Request) -> web.Response:
        try:
            principal = await self._principal(request)
        except APIError as err:
            return _error(err)
        cfg = self.svc.cfg
        created = int(self.started)
        tiers = self._usable_tiers(principal)  # only what this caller may use
        data = [{"id": "auto", "object": "model", "created": created, "owned_by": "tierwise"}] if tiers else []
        data += [{"id": t, "object": "model", "created": created, "owned_by": "tierwise-tier"} for t in tiers]
        data += [{"id": m, "object": "model", "created": created, "owned_by": mc.provider}
                 for m, mc in cfg.models.items() if not principal.refuses_model(m)]
        return _json(200, {"object": "list", "data": data})

    async def healthz(self, request: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        stats = self.svc.ledger.stats()
        # An unhealthy ledger loses nothing (records queue, then spill to a file) but an operator must see it, and a
        # load balancer should prefer replicas whose ledger is writing.
        ready = not self.shutting_down and stats.healthy
        body = {
            "status": "ready" if ready else "not_ready",
            "ledger": dataclasses.asdict(stats),
            "models": self.svc.health.snapshot(time.time()),
        }
        return _json(200 if ready else 503, body)


@web.middleware
async def _json_errors(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Unknown paths, wrong methods and anything unexpected still answer in OpenAI's error shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status, "http_error")
        msg = clean_text(f"{request.method} {request.path}: {exc.reason}", 300)
        return _error(APIError(exc.status, msg, code=code))
    except Exception as exc:  # never a stack trace to the client
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.path, exc_info=exc)
        return _error(APIError(500, f"internal error ({type(exc).__name__})", type="server_error",
                               code="internal_error"))


# --- requests aiohttp's HTTP parser refuses ---------------------------------------------------------------------
# A request line or header over aiohttp's size limits, an invalid header, a malformed request line: aiohttp answers
# these from RequestHandler.handle_error, below the application (no middleware runs), as text/plain quoting part of
# the offending line, which can be a credential. aiohttp offers no public hook for that answer; handle_error is the
# one method that produces it, so a RequestHandler subclass overrides it. To have it used whoever runs the app
# (web.run_app, an AppRunner, the test harness), the app's server factory is wrapped: Application._make_handler,
# which AppRunner calls and which has kept its shape from aiohttp 3.10 to 3.14. Should a future aiohttp change that,
# the gateway logs a warning and keeps aiohttp's plain answers (tests/test_gateway_hostile.py then fails).

_PARSER_ERRORS: tuple[tuple[type[HttpProcessingError], int, str, str], ...] = (
    (LineTooLong, 431, "header_too_large", "the request line or a header field is longer than {limit} bytes"),
    (InvalidHeader, 400, "invalid_header", "a header is malformed"),
    (BadStatusLine, 400, "invalid_request_line", "the request line is malformed"),
    (InvalidURLError, 400, "invalid_request_line", "the request target is not a valid URL"),
)


def _protocol_error(exc: HttpProcessingError, limit: int) -> APIError:
    """What the client is told about a request the HTTP parser refused. Never the parser's own message: it quotes
    the offending bytes."""
    for kind, status, code, text in _PARSER_ERRORS:
        if isinstance(exc, kind):
            return APIError(status, f"malformed HTTP request: {text.format(limit=limit)}", code=code)
    return APIError(400, "malformed HTTP request (framing, headers or encoding)", code="bad_http_request")


def _json_error_handler(book: Callable[[APIError], str | None]) -> type[RequestHandler]:
    """A RequestHandler answering protocol-level errors in OpenAI's error shape and booking each refusal once."""

    class JsonErrorRequestHandler(RequestHandler):
        __slots__ = ()  # same layout as RequestHandler (required to adopt its instances)

        def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                         message: str | None = None) -> web.StreamResponse:
            if request.writer.output_size > 0:  # as aiohttp: part of a response is out, the connection is broken
                raise ConnectionError("response already started, cannot send an error response")
            rid = None
            if isinstance(exc, HttpProcessingError):
                err = _protocol_error(exc, self.max_field_size)
                log.info("refused a malformed HTTP request (%s, %d)", type(exc).__name__, err.status)
                try:
                    rid = book(err)
                except Exception:  # the answer must go out even if booking fails
                    log.exception("could not book a refused malformed request")
            else:  # an exception that escaped the middleware (should not happen): never its text to the client
                log.error("unhandled %s answering a request", type(exc).__name__ if exc else status, exc_info=exc)
                err = APIError(status if status >= 500 else 500, "internal error", type="server_error",
                               code="internal_error")
            resp = _error(err, rid)
            resp.force_close()
            return resp

    return JsonErrorRequestHandler


class _JsonErrorServer(web.Server):
    """A web.Server whose connection handlers are ``handler_class`` instances."""

    handler_class: type[RequestHandler] = RequestHandler

    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        with contextlib.suppress(TypeError):  # cannot happen: a subclass adding no slots has the same layout
            handler.__class__ = self.handler_class
        return handler


def _answer_protocol_errors_in_json(app: web.Application, book: Callable[[APIError], str | None]) -> None:
    make_server = getattr(app, "_make_handler", None)
    if make_server is None:  # pragma: no cover - an aiohttp without the factory this relies on
        log.warning("aiohttp %s: malformed HTTP requests get aiohttp's plain-text answers", aiohttp_version)
        return
    handler_class = _json_error_handler(book)

    def make_handler(**kwargs: Any) -> web.Server:
        server = make_server(**kwargs)
        try:
            server.__class__ = _JsonErrorServer
        except TypeError:  # pragma: no cover - an aiohttp whose Server cannot be specialised
            log.warning("aiohttp %s: malformed HTTP requests get aiohttp's plain-text answers", aiohttp_version)
            return server
        server.handler_class = handler_class  # type: ignore[attr-defined]
        return server

    app._make_handler = make_handler  # type: ignore[method-assign]


def create_app(svc: Tierwise) -> web.Application:
    gw = Gateway(svc)
    app = web.Application(middlewares=[_json_errors], client_max_size=svc.cfg.server.max_body_bytes)
    _answer_protocol_errors_in_json(app, lambda err: svc.reject(err, None, None, None))
    app[SVC_KEY] = svc
    app[GATEWAY_KEY] = gw
    from tierwise.telemetry.endpoint import install as install_telemetry  # /metrics, OpenTelemetry (issue 10)

    gw.telemetry = install_telemetry(app, svc)
    if gw.auth is not None:
        auth = gw.auth

        async def _start_auth(app: web.Application) -> None:
            await asyncio.to_thread(auth.start)  # opens the store and loads the keys, off the event loop

        async def _stop_auth(app: web.Application) -> None:
            await asyncio.to_thread(auth.close)

        app.on_startup.append(_start_auth)
        app.on_cleanup.append(_stop_auth)
    admin = svc.cfg.admin
    if admin is not None and admin.enabled and admin.same_listener:  # only when configured: never by default
        from tierwise.gateway.admin import admin_key_from_env, create_admin_app

        app.add_subapp("/admin", create_admin_app(svc.cfg, admin_key_from_env(svc.cfg), gateway=gw))
        if svc.cfg.dashboard.enabled:
            from tierwise.dashboard.web import mount_admin

            mount_admin(app, svc, admin_key_from_env(svc.cfg))  # /dashboard behind the admin key
    if svc.cfg.dashboard.enabled:
        from tierwise.dashboard.web import mount_public

        mount_public(app, svc, has_keys=gw.keys is not None or gw.auth is not None)
    app.router.add_post("/v1/chat/completions", gw.chat)
    # Any segment is a tier name to look up (an unknown one is a booked 404 naming it): aiohttp's default pattern
    # excludes '{' and '}', which turned '/v1/tiers/%7B/…' into an unrouted, unbooked 404.
    app.router.add_post("/v1/tiers/{tier:[^/]+}/chat/completions", gw.chat)
    # the other client APIs: the same pipeline, their own shapes
    from tierwise.gateway import anthropic_api, embeddings_api, responses_api

    for api in (anthropic_api, responses_api, embeddings_api):
        api.register(app, gw)
    app.router.add_get("/v1/models", gw.models)
    from tierwise.rollout.feedback import add_feedback_route  # POST /v1/feedback (issue 11)

    add_feedback_route(app, gw)
    app.router.add_get("/healthz", gw.healthz)
    app.router.add_get("/readyz", gw.readyz)

    async def _on_shutdown(app: web.Application) -> None:
        gw.shutting_down = True

    async def _on_cleanup(app: web.Application) -> None:
        await svc.aclose()

    app.on_shutdown.append(_on_shutdown)
    app.on_cleanup.append(_on_cleanup)
    return app
