"""Wiring: the service's record hook, the ``/metrics`` route, start-up checks.

:func:`install` is called once by :func:`tierwise.gateway.app.create_app`. It appends the metrics' and tracing's
``observe`` to ``svc.observers`` (called once per ledger record), with tracing on a middleware that hands the
caller's trace context to the spans (:mod:`tierwise.telemetry.trace_context`), and serves ``GET /metrics`` (path
configurable):

- where: ``telemetry.metrics.listener`` — ``auto`` puts it on the admin listener when the admin API has its own,
  else on the main one; ``main`` / ``admin`` force it.
- who: with ``telemetry.metrics.token_env``, only ``Authorization: Bearer <token>`` (compared in constant time;
  Prometheus' ``authorization: {credentials_file: …}``). Without it, the admin listener answers anyone who reaches
  it (it is the operator's private listener), and the main listener answers anyone on an open gateway but only
  loopback clients on a gateway that takes API keys (spend per model is not every caller's business).
- how: the scrape handler first awaits the state gauges (budget usage may be in Redis), then renders in a thread
  (the text exposition of a few hundred series is milliseconds of CPU the event loop should not wait for). With
  ``serve --workers N`` it renders every worker's values summed (:mod:`tierwise.telemetry.multiproc`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from tierwise.config.schema import TierwiseConfig
from tierwise.telemetry.multiproc import forget_dead_workers, multiprocess_dir

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from prometheus_client import CollectorRegistry

    from tierwise.service import Tierwise
    from tierwise.telemetry.gauges import StateGauges
    from tierwise.telemetry.metrics import RequestMetrics
    from tierwise.telemetry.tracing import Tracing

log = logging.getLogger("tierwise.telemetry")


def metrics_on_admin(cfg: TierwiseConfig) -> bool:
    """Whether /metrics is served by the admin listener (else by the main one)."""
    own_admin = cfg.admin is not None and cfg.admin.enabled and not cfg.admin.same_listener
    where = cfg.telemetry.metrics.listener
    return where == "admin" or (where == "auto" and own_admin)


def telemetry_problems(cfg: TierwiseConfig, env: Mapping[str, str]) -> list[tuple[str, str]]:
    """(config path, message) for what keeps telemetry from starting; run by check-config and serve."""
    from tierwise.telemetry.tracing import tracing_problem

    out = []
    m = cfg.telemetry.metrics
    if m.enabled:
        own_admin = cfg.admin is not None and cfg.admin.enabled and not cfg.admin.same_listener
        if m.listener == "admin" and not own_admin:
            out.append(("telemetry.metrics.listener", "'admin' needs the admin API on its own listener (an admin: "
                        "section without same_listener); use 'auto' or 'main'"))
        if m.token_env and len(env.get(m.token_env, "").strip()) < 16:
            out.append(("telemetry.metrics.token_env", f"environment variable {m.token_env} must hold the bearer "
                        "token /metrics requires (at least 16 characters)"))
    if (problem := tracing_problem(cfg.telemetry.tracing)) is not None:
        out.append(("telemetry.tracing", problem))
    return out


#: the classic text format (0.0.4) every Prometheus version reads; the body is the same for tierwise's names
_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _refusal(status: int, message: str, code: str) -> web.Response:
    body = {"error": {"message": message, "type": "authentication_error" if status == 401 else "permission_error",
                      "param": None, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class Telemetry:
    """The metrics and tracing of one gateway process."""

    def __init__(self, svc: Tierwise, *, span_exporter: SpanExporter | None = None) -> None:
        cfg = svc.cfg.telemetry
        self.svc = svc
        self.cfg = cfg
        self.metrics: RequestMetrics | None = None
        self.gauges: StateGauges | None = None
        self.tracing: Tracing | None = None
        self.registry: CollectorRegistry | None = None
        self.multiproc = multiprocess_dir() if cfg.metrics.enabled else None
        self.on_admin = metrics_on_admin(svc.cfg)
        token = os.environ.get(cfg.metrics.token_env, "").strip() if cfg.metrics.token_env else ""
        self._token = _digest(token) if token else None
        takes_keys = svc.cfg.server.api_keys_env is not None or svc.cfg.governance.keys != "off"
        self._loopback_only = self._token is None and not self.on_admin and takes_keys
        self._publisher: asyncio.Task[None] | None = None
        if cfg.metrics.enabled:
            from prometheus_client import CollectorRegistry, disable_created_metrics

            from tierwise.telemetry.gauges import StateGauges
            from tierwise.telemetry.metrics import RequestMetrics

            disable_created_metrics()  # no '_created' twin of every series: half the exposition, no use here
            self.registry = CollectorRegistry()
            self.metrics = RequestMetrics(cfg.metrics, svc.cfg.tiers, svc.cfg.models, self.registry)
            self.gauges = StateGauges(svc, self.registry, cfg.metrics.max_budget_scopes)
            if self.multiproc is None:
                self.gauges.register_scrape_collectors(self.registry)
            svc.observers.append(self.metrics.observe)
            if self.gauges.scopes.learns:
                svc.observers.append(self.gauges.scopes.observe)
        if cfg.tracing.enabled:
            from tierwise.telemetry.tracing import Tracing

            self.tracing = Tracing(cfg.tracing, svc.cfg, span_exporter)
            svc.observers.append(self.tracing.observe)

    # -- HTTP --------------------------------------------------------------------------------------------------

    def mount(self, app: web.Application) -> None:
        app.router.add_get(self.cfg.metrics.path, self.handle)

    def _refused(self, request: web.Request) -> web.Response | None:
        if self._token is not None:
            auth = request.headers.get("Authorization", "")
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(_digest(token), self._token):
                return _refusal(401, "missing or wrong bearer token for /metrics (telemetry.metrics.token_env)",
                                "invalid_metrics_token")
            return None
        if self._loopback_only:
            try:
                loopback = ipaddress.ip_address((request.remote or "").split("%")[0]).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                return _refusal(403, "/metrics answers loopback clients only on a gateway that takes API keys: set "
                                "telemetry.metrics.token_env (a bearer token for Prometheus) or serve it on the "
                                "admin listener", "metrics_loopback_only")
        return None

    async def handle(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        assert self.gauges is not None
        await self.gauges.refresh()
        body = await asyncio.to_thread(self.render)
        return web.Response(body=body, headers={"Content-Type": _CONTENT_TYPE})

    def render(self) -> bytes:
        """The text exposition: this process's registry, or every worker's values summed (``--workers``)."""
        from prometheus_client import CollectorRegistry, generate_latest

        assert self.registry is not None and self.gauges is not None
        if self.multiproc is None:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, self.multiproc)
        self.gauges.register_scrape_collectors(registry)
        return generate_latest(registry)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def on_startup(self, app: web.Application) -> None:
        if self.multiproc is not None and self.gauges is not None:
            await asyncio.to_thread(forget_dead_workers, self.multiproc)
            self._publisher = asyncio.get_running_loop().create_task(self._publish())

    async def _publish(self) -> None:
        """--workers: publish this worker's cooldowns to the shared files every refresh_s (livemax over workers)."""
        assert self.gauges is not None
        while True:
            self.gauges.publish_cooldowns()
            await asyncio.sleep(self.cfg.metrics.refresh_s)

    async def on_cleanup(self, app: web.Application) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)


TELEMETRY_KEY: web.AppKey[Telemetry] = web.AppKey("tierwise.telemetry", Telemetry)


def install(app: web.Application, svc: Tierwise) -> Telemetry | None:
    """Hook metrics and tracing into ``svc`` and serve /metrics on ``app`` (the main listener) unless it belongs
    on the admin listener (:func:`mount_admin`). None when both are off."""
    cfg = svc.cfg.telemetry
    if not cfg.metrics.enabled and not cfg.tracing.enabled:
        return None
    tel = Telemetry(svc)
    app[TELEMETRY_KEY] = tel
    if cfg.tracing.enabled:  # the caller's W3C trace context, for the request's spans
        from tierwise.telemetry.trace_context import make_middleware

        app.middlewares.append(make_middleware())
    if cfg.metrics.enabled and not tel.on_admin:
        tel.mount(app)
    app.on_startup.append(tel.on_startup)
    app.on_cleanup.append(tel.on_cleanup)
    return tel


def mount_admin(root: web.Application, tel: Telemetry | None) -> None:
    """Serve /metrics on the admin listener's root application when it belongs there."""
    if tel is not None and tel.registry is not None and tel.on_admin:
        tel.mount(root)
