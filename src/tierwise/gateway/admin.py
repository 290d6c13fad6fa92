"""The admin API: principals and their keys over HTTP (JSON), with its own admin key, on its own listener.

``serve`` starts it next to the public listener when ``admin:`` is configured (``admin: {host: 127.0.0.1, port:
8081, api_key_env: TIERWISE_ADMIN_KEY}``) and refuses to start without an admin key (at least 16 characters) in
that variable. It is never reachable on the public listener, unless ``admin.same_listener: true`` mounts it there
under ``/admin``. Every request needs ``Authorization: Bearer <admin key>`` (or ``x-api-key``), compared in constant
time; a wrong or missing one is 401 whatever the path.

Endpoints (JSON in and out; errors in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``):

====================================  ===========================================================================
``POST /admin/principals``            create (201); 409 when the name exists
``GET /admin/principals``             list
``GET|PATCH|DELETE /admin/principals/{name}``  show; change the fields given (null clears); delete with its keys
``POST /admin/keys``                  create a key for a principal (201): the answer holds ``key``, shown only here
``GET /admin/keys[?principal=NAME]``  list (never a key nor its hash)
``GET /admin/keys/{id}``              show
``POST /admin/keys/{id}/rotate``      ``{"grace_s": 3600}``: a new key (its ``key`` shown once); the old one
                                      keeps working for ``grace_s`` seconds, then is refused
``POST /admin/keys/{id}/revoke``      refused from now on (on other replicas within ``governance.refresh_s``)
====================================  ===========================================================================

Malformed JSON, wrong types and unknown fields are 400 naming the field; unknown principal or key 404; a
duplicate name 409; the store unreachable 503. Store calls run in threads (``asyncio.to_thread``), never on the
event loop. Changes made here take effect on this process's gateway at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from tierwise.governance.keys import KEY_ID_RE
from tierwise.governance.store import (
    NAME_RE,
    GovernanceError,
    GovernanceStore,
    GovernanceStoreError,
    InvalidInput,
    KeySpec,
    NotFound,
    PrincipalPatch,
    PrincipalSpec,
    RotateSpec,
    open_governance_store,
    parse,
)

if TYPE_CHECKING:
    from tierwise.config.schema import TierwiseConfig
    from tierwise.gateway.app import Gateway

log = logging.getLogger("tierwise.admin")
T = TypeVar("T")

MIN_ADMIN_KEY_CHARS = 16
MAX_ADMIN_BODY = 64 * 1024


def admin_key_problem(cfg: TierwiseConfig, env: Mapping[str, str] | None = None) -> str | None:
    """Why the admin API cannot start with this environment (its key variable unset, empty or too short)."""
    if cfg.admin is None or not cfg.admin.enabled:
        return None
    name = cfg.admin.api_key_env
    value = (os.environ if env is None else env).get(name, "")
    if not value.strip():
        return (f"the admin API is enabled but environment variable {name} (admin.api_key_env) is not set: export "
                f"an admin key of at least {MIN_ADMIN_KEY_CHARS} characters, e.g. {name}=$(openssl rand -hex 32), "
                "or remove the admin: section")
    if len(value.strip()) < MIN_ADMIN_KEY_CHARS:
        return f"the admin key in {name} is shorter than {MIN_ADMIN_KEY_CHARS} characters: use a long random one"
    return None


def admin_key_from_env(cfg: TierwiseConfig, env: Mapping[str, str] | None = None) -> str:
    problem = admin_key_problem(cfg, env)
    if problem is not None:
        raise ValueError(problem)
    assert cfg.admin is not None
    return (os.environ if env is None else env)[cfg.admin.api_key_env].strip()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _error(status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
           param: str | None = None) -> web.Response:
    return _json(status, {"error": {"message": message, "type": type, "param": param, "code": code}})


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own answers (unknown path, wrong method, body too large) in OpenAI's error shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status, "http_error")
        return _error(exc.status, f"{request.method} {request.path[:200]}: {exc.reason}", code=code)


class AdminAPI:
    """The handlers; ``gateway`` (when given) is told about changes so they apply to it at once."""

    def __init__(self, cfg: TierwiseConfig, admin_key: str, *, gateway: Gateway | None = None,
                 open_store: Callable[[], GovernanceStore] | None = None) -> None:
        if len(admin_key) < MIN_ADMIN_KEY_CHARS:
            raise ValueError(f"the admin key must be at least {MIN_ADMIN_KEY_CHARS} characters")
        self.cfg = cfg
        self._admin_digest = _digest(admin_key)
        self._gateway = gateway
        self._open_store = open_store or (lambda: open_governance_store(cfg))
        self.store: GovernanceStore | None = None
        self._tiers = list(cfg.tiers)
        self._models = list(cfg.models)

    # -- plumbing -------------------------------------------------------------------------------------------

    async def on_startup(self, app: web.Application) -> None:
        self.store = await asyncio.to_thread(self._open_store)

    async def on_cleanup(self, app: web.Application) -> None:
        if self.store is not None:
            store, self.store = self.store, None
            await asyncio.to_thread(store.close)

    def _authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "").strip()
        return hmac.compare_digest(_digest(token), self._admin_digest)  # constant time, whatever the lengths

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self._authorized(request):
            return _error(401, "invalid or missing admin key (send 'Authorization: Bearer <admin key>')",
                          type="authentication_error", code="invalid_admin_key")
        try:
            return await handler(request)
        except GovernanceError as exc:
            if isinstance(exc, GovernanceStoreError):
                log.error("admin %s %s: %s", request.method, request.rel_url.path[:200], exc.message)
            return _json(exc.status, exc.body())
        except web.HTTPException:
            raise
        except Exception as exc:  # never a stack trace to the client
            log.error("admin: unhandled %s on %s %s", type(exc).__name__, request.method, request.path[:200],
                      exc_info=exc)
            return _error(500, f"internal error ({type(exc).__name__})", type="server_error", code="internal_error")

    async def _run(self, fn: Callable[[GovernanceStore], T]) -> T:
        store = self.store
        if store is None:
            raise GovernanceStoreError("the governance store is not open")
        return await asyncio.to_thread(fn, store)

    @staticmethod
    async def _body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
        if request.content_length is not None and request.content_length > MAX_ADMIN_BODY:
            raise InvalidInput(f"request body larger than {MAX_ADMIN_BODY} bytes")
        raw = await request.content.read(MAX_ADMIN_BODY + 1)
        if len(raw) > MAX_ADMIN_BODY:
            raise InvalidInput(f"request body larger than {MAX_ADMIN_BODY} bytes")
        if not raw.strip():
            if optional:
                return {}
            raise InvalidInput("the request body must be a JSON object")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            err = InvalidInput("the request body is not valid JSON")
            err.code = "invalid_json"
            raise err from None
        if not isinstance(data, dict):
            raise InvalidInput("the request body must be a JSON object")
        return data

    @staticmethod
    def _principal_name(request: web.Request) -> str:
        name = request.match_info["name"]
        if not NAME_RE.match(name):
            raise NotFound("no such principal (names are letters, digits and . _ : @ + -)")
        return name

    @staticmethod
    def _key_id(request: web.Request) -> str:
        kid = request.match_info["key_id"]
        if not KEY_ID_RE.match(kid):
            raise NotFound("no such key (key ids look like key_0123456789ab)")
        return kid

    def _changed(self, dropped_keys: list[str] | None = None) -> None:
        auth = self._gateway.auth if self._gateway is not None else None
        if auth is None:
            return
        for kid in dropped_keys or ():
            auth.forget_key(kid)
        auth.poke()

    # -- principals -----------------------------------------------------------------------------------------

    async def create_principal(self, request: web.Request) -> web.Response:
        spec = parse(PrincipalSpec, await self._body(request), tiers=self._tiers, models=self._models)
        rec = await self._run(lambda s: s.create_principal(spec))
        log.info("admin: created principal %s", rec.name)
        return _json(201, {"object": "principal", **rec.as_dict()})

    async def list_principals(self, request: web.Request) -> web.Response:
        recs = await self._run(lambda s: s.list_principals())
        return _json(200, {"object": "list", "data": [{"object": "principal", **r.as_dict()} for r in recs]})

    async def get_principal(self, request: web.Request) -> web.Response:
        name = self._principal_name(request)
        rec = await self._run(lambda s: s.get_principal(name))
        return _json(200, {"object": "principal", **rec.as_dict()})

    async def update_principal(self, request: web.Request) -> web.Response:
        name = self._principal_name(request)
        patch = parse(PrincipalPatch, await self._body(request), tiers=self._tiers, models=self._models)
        rec = await self._run(lambda s: s.update_principal(name, patch))
        log.info("admin: updated principal %s (%s)", name, ", ".join(sorted(patch.model_fields_set)))
        self._changed()
        return _json(200, {"object": "principal", **rec.as_dict()})

    async def delete_principal(self, request: web.Request) -> web.Response:
        name = self._principal_name(request)

        def delete(s: GovernanceStore) -> list[str]:
            s.get_principal(name)  # 404 naming no parameter: the name is the path's
            ids = [k.id for k in s.list_keys(name)]
            s.delete_principal(name)
            return ids

        ids = await self._run(delete)
        log.info("admin: deleted principal %s and its %d key(s)", name, len(ids))
        self._changed(ids)
        return _json(200, {"object": "principal", "name": name, "deleted": True, "keys_deleted": ids})

    # -- keys -----------------------------------------------------------------------------------------------

    async def create_key(self, request: web.Request) -> web.Response:
        spec = parse(KeySpec, await self._body(request), tiers=self._tiers, models=self._models)
        rec, secret = await self._run(lambda s: s.create_key(spec))
        log.info("admin: created key %s (%s…) for principal %s", rec.id, rec.prefix, rec.principal)
        self._changed()
        return _json(201, {"object": "key", **rec.as_dict(), "key": secret})

    async def list_keys(self, request: web.Request) -> web.Response:
        unknown = sorted(set(request.query) - {"principal"})
        if unknown:
            raise InvalidInput(f"{unknown[0]}: unknown query parameter (only 'principal')", param=unknown[0])
        principal = request.query.get("principal")
        if principal is not None and not NAME_RE.match(principal):
            raise NotFound("no such principal", param="principal")
        recs = await self._run(lambda s: s.list_keys(principal))
        return _json(200, {"object": "list", "data": [{"object": "key", **r.as_dict()} for r in recs]})

    async def list_alerts(self, request: web.Request) -> web.Response:
        """Spend-anomaly alerts this gateway process raised (newest last; ``?since=<unix seconds>``). Every replica
        also appends its alerts to ``<ledger>.alerts.jsonl`` and to the webhook, for a fleet-wide view."""
        unknown = sorted(set(request.query) - {"since"})
        if unknown:
            raise InvalidInput(f"{unknown[0]}: unknown query parameter (only 'since')", param=unknown[0])
        try:
            since = float(request.query.get("since", "0"))
        except ValueError:
            raise InvalidInput("since: must be unix seconds", param="since") from None
        if not math.isfinite(since):
            raise InvalidInput("since: must be unix seconds", param="since")
        alerts = [] if self._gateway is None else list(self._gateway.svc.anomalies.alerts)
        data = [{"object": "spend_anomaly", **a.as_dict()} for a in alerts if a.ts >= since]
        return _json(200, {"object": "list", "data": data})

    async def get_key(self, request: web.Request) -> web.Response:
        kid = self._key_id(request)
        rec = await self._run(lambda s: s.get_key(kid))
        return _json(200, {"object": "key", **rec.as_dict()})

    async def rotate_key(self, request: web.Request) -> web.Response:
        kid = self._key_id(request)
        spec = parse(RotateSpec, await self._body(request, optional=True))

        def rotate(s: GovernanceStore) -> tuple[Any, str, Any]:
            new, secret = s.rotate_key(kid, spec.grace_s)
            return new, secret, s.get_key(kid)

        new, secret, old = await self._run(rotate)
        log.info("admin: rotated key %s to %s (%s…), old key valid for %gs", kid, new.id, new.prefix, spec.grace_s)
        self._changed()
        return _json(201, {"object": "key", **new.as_dict(), "key": secret, "replaces": kid,
                           "replaced_key_expires_at": old.expires_at})

    async def revoke_key(self, request: web.Request) -> web.Response:
        kid = self._key_id(request)
        rec = await self._run(lambda s: s.revoke_key(kid))
        log.info("admin: revoked key %s", kid)
        self._changed([kid])
        return _json(200, {"object": "key", **rec.as_dict()})


def create_admin_app(cfg: TierwiseConfig, admin_key: str, *, gateway: Gateway | None = None,
                     open_store: Callable[[], GovernanceStore] | None = None) -> web.Application:
    """The admin endpoints as an application to mount under ``/admin`` (routes are relative to it)."""
    api = AdminAPI(cfg, admin_key, gateway=gateway, open_store=open_store)
    app = web.Application(middlewares=[_json_errors, api.middleware], client_max_size=MAX_ADMIN_BODY)
    r = app.router
    r.add_post("/principals", api.create_principal)
    r.add_get("/principals", api.list_principals)
    r.add_get("/principals/{name}", api.get_principal)
    r.add_patch("/principals/{name}", api.update_principal)
    r.add_delete("/principals/{name}", api.delete_principal)
    r.add_post("/keys", api.create_key)
    r.add_get("/keys", api.list_keys)
    r.add_get("/keys/{key_id}", api.get_key)
    r.add_post("/keys/{key_id}/rotate", api.rotate_key)
    r.add_post("/keys/{key_id}/revoke", api.revoke_key)
    r.add_get("/alerts", api.list_alerts)
    app.on_startup.append(api.on_startup)
    app.on_cleanup.append(api.on_cleanup)
    return app


def create_admin_root(cfg: TierwiseConfig, admin_key: str, *, gateway: Gateway | None = None,
                      open_store: Callable[[], GovernanceStore] | None = None) -> web.Application:
    """The application of the admin listener: the admin API under ``/admin`` and the dashboard at
    ``/dashboard`` (:mod:`tierwise.dashboard.web`)."""
    root = web.Application(middlewares=[_json_errors], client_max_size=MAX_ADMIN_BODY)
    root.add_subapp("/admin", create_admin_app(cfg, admin_key, gateway=gateway, open_store=open_store))
    if gateway is not None and cfg.dashboard.enabled:
        from tierwise.dashboard.web import mount_admin

        mount_admin(root, gateway.svc, admin_key)  # /dashboard: the page, and its API behind the admin key
    if gateway is not None:  # /metrics, when it belongs on this listener (telemetry.metrics.listener)
        from tierwise.telemetry.endpoint import mount_admin as mount_metrics

        mount_metrics(root, gateway.telemetry)
    return root


async def start_admin(cfg: TierwiseConfig, admin_key: str, *, host: str | None = None, port: int | None = None,
                      gateway: Gateway | None = None) -> tuple[web.AppRunner, int]:
    """Start the admin listener; returns its runner (``await runner.cleanup()`` stops it) and the bound port.
    Raises OSError when the port cannot be bound (the runner is cleaned up first)."""
    assert cfg.admin is not None
    runner = web.AppRunner(create_admin_root(cfg, admin_key, gateway=gateway), access_log=None,
                           handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host or cfg.admin.host, cfg.admin.port if port is None else port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1] if runner.addresses else (cfg.admin.port if port is None else port)
    return runner, int(bound)

