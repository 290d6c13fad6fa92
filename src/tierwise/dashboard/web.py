"""``/dashboard``: the page, its static files and its JSON API, mounted on an aiohttp application.

Who may open it (:func:`mount_public` decides for the public listener):

- ``admin:`` configured: the dashboard lives on the admin listener (``http://<admin.host>:<admin.port>/dashboard``,
  or the public one with ``admin.same_listener``), and its API answers only requests carrying the admin key
  (``Authorization: Bearer`` or ``x-api-key``). The page itself holds no data: it asks for the key, keeps it in the
  tab's ``sessionStorage`` and sends it with every API call. On the public listener ``/dashboard`` then answers 404
  naming where the dashboard is.
- No admin API and no API keys at all (an open gateway, e.g. on a laptop): the public listener serves it to
  loopback clients only (the TCP peer is 127.0.0.0/8 or ::1 and the request carries no ``Forwarded`` /
  ``X-Forwarded-For`` header, which a reverse proxy would add); anyone else gets 403.
- API keys configured (``server.api_keys_env`` or ``governance.keys``) but no admin API: 403 saying to configure
  ``admin:`` (an API key is a caller's credential, not an operator's).

API (GET, JSON; errors in OpenAI's shape with ``param`` naming the bad filter):

====================================  ==========================================================================
``/dashboard/api/config``             tiers, refresh intervals, flagship model (for the page's controls)
``/dashboard/api/summary``            ``?window=1h&tier=&principal=``: every panel (see :mod:`.summary`; the
                                      budgets, live from the governance state: :mod:`.budgets`)
``/dashboard/api/recent``             ``?window=&tier=&principal=&limit=25``: the newest requests, newest first
====================================  ==========================================================================

The SQL runs on the dashboard's own threads (:class:`tierwise.dashboard.reader.LedgerReader`); identical summary
queries within ``dashboard.cache_ms`` share one answer and one query in flight, so ten open tabs cost one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from tierwise.dashboard import sql
from tierwise.dashboard.budgets import BudgetPanel
from tierwise.dashboard.query import (
    RECENT_PARAMS,
    SUMMARY_PARAMS,
    DashboardInputError,
    DashboardQuery,
    parse_limit,
    parse_query,
)
from tierwise.dashboard.reader import LedgerReader, LedgerUnavailable
from tierwise.dashboard.summary import build_summary, flagship_of

if TYPE_CHECKING:
    from tierwise.service import Tierwise

log = logging.getLogger("tierwise.dashboard")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Gate = Callable[[web.Request], "web.Response | None"]

STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
BUDGET_CACHE_S = 15.0
SLOW_REUSE = 4.0


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body, default=str), content_type="application/json",
                        headers=_SECURITY_HEADERS)


def error(status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
          param: str | None = None) -> web.Response:
    return _json(status, {"error": {"message": message, "type": type, "param": param, "code": code}})


# -- gates -------------------------------------------------------------------------------------------------------

def admin_key_gate(admin_key: str) -> Gate:
    """Allow requests carrying the admin key (constant-time comparison of SHA-256 digests)."""
    want = hashlib.sha256(admin_key.encode()).digest()

    def gate(request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "").strip()
        got = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        if token and hmac.compare_digest(got, want):
            return None
        return error(401, "the dashboard needs the admin key: enter it on the page, or send "
                          "'Authorization: Bearer <admin key>'", type="authentication_error",
                     code="invalid_admin_key")
    return gate


def is_loopback_request(request: web.Request) -> bool:
    """The TCP peer is a loopback address and no proxy says it forwarded someone else's request."""
    if any(h in request.headers for h in ("Forwarded", "X-Forwarded-For", "X-Real-IP")):
        return False
    try:
        return request.remote is not None and ipaddress.ip_address(request.remote.split("%")[0]).is_loopback
    except ValueError:
        return False


def loopback_gate(request: web.Request) -> web.Response | None:
    if is_loopback_request(request):
        return None
    return error(403, "the dashboard of an open gateway is served to loopback clients only (open it on this host, "
                      "or configure admin: to serve it on the admin listener with an admin key)",
                 type="permission_error", code="dashboard_loopback_only")


# -- the application ---------------------------------------------------------------------------------------------

class Dashboard:
    """Handlers over one service's ledger; ``gate`` guards the API (and, for loopback, the page too)."""

    def __init__(self, svc: Tierwise, gate: Gate, *, gate_page: bool, mode: str) -> None:
        self.svc = svc
        self.cfg = svc.cfg
        self.dcfg = svc.cfg.dashboard
        self.gate = gate
        self.gate_page = gate_page
        self.mode = mode
        self.reader = LedgerReader(svc.cfg.ledger, svc.ledger.store, self.dcfg.query_threads)
        self._tiers = frozenset(svc.cfg.tiers)
        self._cache: dict[Any, tuple[float, asyncio.Future[Any]]] = {}
        self.budgets = BudgetPanel(svc, self._query, max(BUDGET_CACHE_S, self.dcfg.cache_ms / 1000),
                                   self.dcfg.cache_ms / 1000)

    async def close(self, app: web.Application | None = None) -> None:
        await asyncio.to_thread(self.reader.close)

    async def _query(self, key: Any, ttl_s: float, fn: Callable[[sql.Session], Any]) -> Any:
        """``fn`` in a read transaction on the dashboard's threads; callers with the same ``key`` within ``ttl_s``
        (or while it runs) share its answer."""
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and (not hit[1].done() or now < hit[0]):
            return await asyncio.shield(hit[1])
        fut = asyncio.wrap_future(self.reader.submit(fn))
        self._cache[key] = (now + ttl_s, fut)
        # a slow answer is kept for SLOW_REUSE x its own duration: a window over millions of rows then costs the
        # dashboard's threads at most ~1/(1 + SLOW_REUSE) of one core, however many tabs poll it
        def keep(f: asyncio.Future[Any]) -> None:
            if self._cache.get(key, (0.0, None))[1] is f:
                done = time.monotonic()
                self._cache[key] = (max(now + ttl_s, done + SLOW_REUSE * (done - now)), f)

        fut.add_done_callback(keep)
        if len(self._cache) > 256:  # forget expired answers
            for k in [k for k, (exp, f) in self._cache.items() if f.done() and exp < now]:
                del self._cache[k]
        try:
            return await asyncio.shield(fut)
        except BaseException:
            if self._cache.get(key, (0, None))[1] is fut:
                del self._cache[key]  # a failure is not cached
            raise

    def guard(self, handler: Handler, *, page: bool = False) -> Handler:
        """Gate, then run ``handler`` turning bad input and an unreadable ledger into clear 4xx/503 answers."""
        async def run(request: web.Request) -> web.StreamResponse:
            if not page or self.gate_page:
                denied = self.gate(request)
                if denied is not None:
                    return denied
            try:
                return await handler(request)
            except DashboardInputError as exc:
                return error(400, exc.message, param=exc.param, code=exc.code)
            except LedgerUnavailable as exc:
                log.warning("dashboard: %s", exc)
                return error(503, f"the ledger cannot be read right now: {exc}", type="server_error",
                             code="ledger_unavailable")
            except web.HTTPException:
                raise
            except Exception as exc:  # never a stack trace to the client
                log.error("dashboard: unhandled %s on %s", type(exc).__name__, request.path[:200], exc_info=exc)
                return error(500, f"internal error ({type(exc).__name__})", type="server_error",
                             code="internal_error")
        return run

    def _parse(self, request: web.Request, allowed: frozenset[str]) -> DashboardQuery:
        counts = {k: len(request.query.getall(k)) for k in request.query}
        return parse_query(request.query, tiers=self._tiers, max_days=self.dcfg.max_window_days, allowed=allowed,
                           counts=counts)

    # -- handlers ----------------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.StreamResponse:
        return self._static("index.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC_FILES or name == "index.html":
            return error(404, "no such dashboard file", code="not_found")
        return self._static(name)

    @staticmethod
    def _static(name: str) -> web.Response:
        body = resources.files("tierwise.dashboard").joinpath("static", name).read_bytes()
        return web.Response(body=body, content_type=STATIC_FILES[name], charset="utf-8", headers=_SECURITY_HEADERS)

    async def config(self, request: web.Request) -> web.Response:
        if request.query:
            raise DashboardInputError(f"{next(iter(request.query))[:40]}: this endpoint takes no parameters",
                                      next(iter(request.query))[:40], code="unknown_filter")
        prices = self.svc.prices.prices
        return _json(200, {
            "object": "dashboard.config", "mode": self.mode, "tiers": sorted(self.cfg.tiers),
            "models": sorted(self.cfg.models), "flagship": flagship_of(self.cfg, prices),
            "live_refresh_ms": self.dcfg.live_refresh_ms, "summary_refresh_ms": self.dcfg.summary_refresh_ms,
            "max_window_days": self.dcfg.max_window_days, "ledger_backend": self.reader.backend,
            "windows": ["15m", "1h", "6h", "24h", "7d", "30d"],
        })

    async def summary(self, request: web.Request) -> web.Response:
        q = self._parse(request, SUMMARY_PARAMS)
        cfg, prices = self.cfg, self.svc.prices.prices
        body = await self._query(("summary", q.key), self.dcfg.cache_ms / 1000,
                                 lambda s: build_summary(s, q, cfg, prices))
        budgets, budget_state = await self.budgets.status()
        alerts = [a.as_dict() for a in list(self.svc.anomalies.alerts)
                  if a.ts >= q.since and (q.principal is None or a.principal == q.principal)]
        return _json(200, {**body, "budgets": budgets, "budget_state": budget_state, "anomalies": alerts[-50:],
                           "generated_at": time.time()})

    async def recent(self, request: web.Request) -> web.Response:
        q = self._parse(request, RECENT_PARAMS)
        limit = parse_limit(request.query)
        rows = await self._query(("recent", q.key, limit), min(0.25, self.dcfg.cache_ms / 1000),
                                 lambda s: sql.recent(s, q, limit))
        return _json(200, {"object": "list", "filters": q.filters(), "generated_at": time.time(),
                           "data": [_recent_row(r) for r in rows]})


def _decode(value: Any) -> Any:
    if isinstance(value, str | bytes):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
    return value


def _recent_row(values: tuple[Any, ...]) -> dict[str, Any]:
    row = dict(zip(sql.RECENT_COLUMNS, values, strict=True))
    row["notes"] = [str(n)[:300] for n in (_decode(row["notes"]) or [])][:10]
    tags = _decode(row["tags"]) or {}
    row["tags"] = {str(k)[:100]: str(v)[:200] for k, v in list(tags.items())[:20]} if isinstance(tags, dict) else {}
    if row["error"] is not None:
        row["error"] = str(row["error"])[:300]
    return row


def mount(app: web.Application, svc: Tierwise, gate: Gate, *, gate_page: bool, mode: str) -> Dashboard:
    """Add the dashboard's routes to ``app`` (at ``/dashboard``)."""
    d = Dashboard(svc, gate, gate_page=gate_page, mode=mode)
    r = app.router
    r.add_get("/dashboard", d.guard(d.page, page=True))
    r.add_get("/dashboard/", d.guard(d.page, page=True))
    r.add_get("/dashboard/static/{name}", d.guard(d.static, page=True))
    r.add_get("/dashboard/api/config", d.guard(d.config))
    r.add_get("/dashboard/api/summary", d.guard(d.summary))
    r.add_get("/dashboard/api/recent", d.guard(d.recent))
    app.on_cleanup.append(d.close)
    return d


def mount_admin(app: web.Application, svc: Tierwise, admin_key: str) -> Dashboard | None:
    """On the admin listener (or the public one with ``admin.same_listener``): the API behind the admin key."""
    if not svc.cfg.dashboard.enabled:
        return None
    return mount(app, svc, admin_key_gate(admin_key), gate_page=False, mode="admin_key")


def mount_public(app: web.Application, svc: Tierwise, *, has_keys: bool) -> Dashboard | None:
    """The public listener's ``/dashboard``: see the module docstring for who gets what."""
    cfg = svc.cfg
    if not cfg.dashboard.enabled:
        return None
    admin = cfg.admin if cfg.admin is not None and cfg.admin.enabled else None
    if admin is not None and admin.same_listener:
        return None  # mounted with the admin API (create_app), behind the admin key
    if admin is not None:
        where = f"http://{admin.host}:{admin.port}/dashboard"

        async def elsewhere(request: web.Request) -> web.StreamResponse:
            return error(404, f"the dashboard is served on the admin listener ({where}), with the admin key",
                         code="dashboard_on_admin_listener")
        for path in ("/dashboard", "/dashboard/{tail:.*}"):
            app.router.add_get(path, elsewhere)
        return None
    if has_keys:
        async def refused(request: web.Request) -> web.StreamResponse:
            return error(403, "this gateway has API keys but no admin API: configure admin: (with an admin key) to "
                              "open the dashboard on the admin listener", type="permission_error",
                         code="dashboard_needs_admin")
        for path in ("/dashboard", "/dashboard/{tail:.*}"):
            app.router.add_get(path, refused)
        return None
    return mount(app, svc, loopback_gate, gate_page=True, mode="loopback")
