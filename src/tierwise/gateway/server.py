"""Run the gateway: uvloop, one process, start-up checks before anything listens, a graceful drain on SIGTERM/SIGINT.

Start-up is in two steps so that nothing fails after "serving on" is printed:

1. :func:`check_startup` builds everything a configuration needs without starting anything (providers, price book,
   classifier, learned routers, cascade gates, API keys) and checks that the ledger path is usable. ``tierwise
   check-config`` runs exactly these checks, so a config it passes is one ``serve`` accepts.
2. :func:`serve` builds the service (opening the ledger), loads local models, binds the port, and only then says
   it is serving. Any failure on the way is one clear :class:`StartupError`, never a traceback.

Shutdown (first SIGTERM/SIGINT): the listening socket closes, requests in flight get ``shutdown_timeout_s`` to
finish, and every request that arrives meanwhile on an open keep-alive connection is answered ``503`` in OpenAI's
error shape with ``Connection: close`` (and booked in the ledger) instead of finding its connection reset. Then
idle connections close and the ledger flushes. A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from tierwise.config.load import ConfigError
from tierwise.config.schema import TierwiseConfig
from tierwise.errors import APIError
from tierwise.gateway import gc_tuning
from tierwise.gateway.startup import Startup, StartupError, build_failure, check_startup

if TYPE_CHECKING:
    from tierwise.service import Tierwise

log = logging.getLogger("tierwise")


# -- the drain ----------------------------------------------------------------------------------------------------


class _Drain:
    """Counts requests in flight; once draining, answers every new request 503 + ``Connection: close``."""

    def __init__(self, svc: Tierwise) -> None:
        self.svc = svc
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()

    def middleware(self) -> Middleware:
        @web.middleware
        async def drain(request: web.Request, handler: Handler) -> web.StreamResponse:
            if self.draining:
                return self._refuse(request)
            self.in_flight += 1
            try:
                resp = await handler(request)
                if self.draining and not resp.prepared:
                    resp.force_close()  # the client must not send another request on this connection
                return resp
            finally:
                self.in_flight -= 1
                if self.in_flight == 0:
                    self._idle.set()

        return drain

    def _refuse(self, request: web.Request) -> web.Response:
        err = APIError(503, "tierwise is shutting down and takes no new requests: retry (on another replica); "
                            "this connection closes", type="server_error", code="shutting_down")
        headers = {"Retry-After": "1"}
        if request.method == "POST" and request.path.endswith("/chat/completions"):
            from tierwise.routing.engine import RouteRequest

            h = request.headers
            route = RouteRequest(task_header=h.get("X-Task"), endpoint_tier=request.match_info.get("tier"),
                                 session_id=h.get("X-Session-Id"))
            try:  # one ledger record for every chat request, this one included
                headers["x-tierwise-request-id"] = self.svc.reject(err, None, None, route)
            except Exception:
                log.exception("could not book a request refused during shutdown")
        resp = web.Response(status=503, body=orjson.dumps(err.body()), content_type="application/json",
                            headers=headers)
        resp.force_close()
        return resp

    async def run(self, site: web.BaseSite, timeout_s: float, force: asyncio.Event) -> None:
        """Stop listening, then wait until no request is in flight, ``timeout_s`` passes, or ``force`` is set."""
        self.draining = True
        await site.stop()
        deadline = time.monotonic() + timeout_s
        if self.in_flight:
            log.info("shutting down: waiting for %d request(s) in flight (at most %.0fs)", self.in_flight, timeout_s)
        forced = asyncio.ensure_future(force.wait())
        try:
            while self.in_flight > 0 and not force.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("shutting down: %d request(s) still in flight after %.0fs are cancelled",
                                self.in_flight, timeout_s)
                    return
                self._idle.clear()
                if self.in_flight == 0:
                    break
                idle = asyncio.ensure_future(self._idle.wait())
                await asyncio.wait({idle, forced}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                idle.cancel()
        finally:
            forced.cancel()


# -- serve --------------------------------------------------------------------------------------------------------


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform but Windows
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def serve(cfg: TierwiseConfig, host: str | None = None, port: int | None = None,
          shutdown_timeout_s: float = 10.0, *, startup: Startup | None = None, source: str = "<config>",
          worker: tuple[int, int] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; in-flight requests get ``shutdown_timeout_s`` to finish, then the ledger flushes.

    Raises :class:`StartupError` (nothing listening, nothing left running) when the gateway cannot start.
    ``startup`` is :func:`check_startup`'s result when the caller already ran it. ``worker`` = (index, count) when
    this process is one of :func:`serve_workers`'s: the port is shared (SO_REUSEPORT), only worker 0 runs the admin
    listener, and the worker stops (draining) when its parent is gone.
    """
    if startup is None:
        startup = check_startup(cfg)
    if startup.problems:
        raise StartupError(str(ConfigError(source, startup.problems)))
    h = host or cfg.server.host
    p = cfg.server.port if port is None else port
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(cfg, h, p, shutdown_timeout_s, startup, worker))


def _setup_failure(exc: BaseException) -> str:
    from tierwise.governance.store import GovernanceError

    if isinstance(exc, GovernanceError):
        return exc.message  # names the store and what failed, never a key or a password
    return f"{type(exc).__name__}: {exc}"


async def _start_admin(cfg: TierwiseConfig, app: web.Application, runner: web.AppRunner) -> web.AppRunner | None:
    """The admin API on its own listener (``admin:`` configured, not ``same_listener``); on failure the public
    runner is cleaned up and a :class:`StartupError` raised."""
    if cfg.admin is None or not cfg.admin.enabled or cfg.admin.same_listener:
        return None
    from tierwise.gateway.admin import admin_key_from_env, start_admin
    from tierwise.gateway.app import GATEWAY_KEY

    a = cfg.admin
    try:
        admin_runner, bound = await start_admin(cfg, admin_key_from_env(cfg), gateway=app[GATEWAY_KEY])
    except Exception as exc:
        await runner.cleanup()
        if isinstance(exc, OSError):
            raise StartupError(f"cannot listen on {a.host}:{a.port} for the admin API: {exc.strerror or exc}; free "
                               "the port or set admin.port / admin.host") from None
        raise StartupError(f"cannot start the admin API: {_setup_failure(exc)}") from None
    print(f"tierwise: admin API on http://{a.host}:{bound}/admin", file=sys.stderr, flush=True)
    return admin_runner


async def _serve(cfg: TierwiseConfig, host: str, port: int, shutdown_timeout_s: float, startup: Startup,
                 worker: tuple[int, int] | None = None) -> None:
    from tierwise.gateway.app import create_app
    from tierwise.service import Tierwise

    try:
        svc = Tierwise(cfg, providers=startup.providers, classifier=startup.classifier)
    except Exception as exc:
        raise StartupError(build_failure(cfg, exc)) from None
    try:
        warmups = [p.warmup() for p in svc.providers.values() if hasattr(p, "warmup")]
        if warmups:
            log.info("loading local models …")
            await asyncio.gather(*warmups)
        app = create_app(svc)
    except Exception as exc:
        await svc.aclose()
        raise StartupError(build_failure(cfg, exc)) from None
    drain = _Drain(svc)
    app.middlewares.insert(0, drain.middleware())  # outermost: it sees every request first
    runner = web.AppRunner(app, handle_signals=False, access_log=None,  # the ledger is the access log
                           handler_cancellation=True,  # a client that disconnects cancels its handler: booked at once
                           shutdown_timeout=1.0)  # after the drain: what is still running is cancelled, fast
    try:
        await runner.setup()  # on_startup: virtual keys loaded from the governance store
    except Exception as exc:
        with contextlib.suppress(Exception):
            await runner.cleanup()
        raise StartupError(_setup_failure(exc)) from None
    # the admin API on its own listener (before the public one opens); of several workers, worker 0 runs it
    admin_runner = await _start_admin(cfg, app, runner) if worker is None or worker[0] == 0 else None
    gc_tuning.apply(cfg.server.gc)  # start-up is done: what exists now lives as long as the process
    site = web.TCPSite(runner, host, port, reuse_port=True if worker is not None else None)
    try:
        await site.start()
    except OSError as exc:
        if admin_runner is not None:
            await admin_runner.cleanup()
        await runner.cleanup()  # closes the service: the ledger flushes
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; free the port or set "
                           "server.port / --port (and server.host / --host)") from None
    try:
        bound = runner.addresses[0][1] if runner.addresses else port
        who = f"worker {worker[0] + 1}/{worker[1]} (pid {os.getpid()}) " if worker is not None else ""
        print(f"tierwise: {who}serving on http://{host}:{bound}/v1 (ledger: {cfg.ledger.backend} {cfg.ledger.path})",
              file=sys.stderr, flush=True)
        stop, force = asyncio.Event(), asyncio.Event()

        def on_signal() -> None:
            (force if stop.is_set() else stop).set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        orphaned = asyncio.ensure_future(_parent_gone(stop)) if worker is not None else None
        await stop.wait()
        if orphaned is not None:
            orphaned.cancel()
        await drain.run(site, shutdown_timeout_s, force)
    finally:
        if admin_runner is not None:
            with contextlib.suppress(Exception):
                await admin_runner.cleanup()  # the admin listener closes with the public one
        await runner.cleanup()  # idle connections close, on_shutdown/on_cleanup run: the ledger flushes
        with contextlib.suppress(Exception):
            for sig in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().remove_signal_handler(sig)


# -- several worker processes on one port -------------------------------------------------------------------------


async def _parent_gone(stop: asyncio.Event) -> None:
    """A worker whose supervisor died (SIGKILL) drains and stops instead of serving on unsupervised."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    log.warning("worker %d: the supervising process %d is gone: shutting down", os.getpid(), parent)
    stop.set()


def workers_problem(cfg: TierwiseConfig, workers: int) -> str | None:
    """Why ``workers`` processes must not serve this config, or None: with ``state.backend: memory`` each worker
    would count budgets and rate limits on its own, so each could spend a whole budget."""
    if workers <= 1 or cfg.state.backend != "memory":
        return None
    governed = []
    if any(c.daily_usd is not None or c.monthly_usd is not None for c in cfg.budgets.caps.values()):
        governed.append("budgets.caps")
    if cfg.governance.keys != "off":
        governed.append(f"virtual keys (governance.keys: {cfg.governance.keys}), whose budgets and rate limits")
    if not governed:
        return None
    return (f"--workers {workers} with state.backend: memory: {' and '.join(governed)} would be counted by each "
            "worker on its own, so together they could spend each budget several times over; set state.backend: "
            "redis (state.url: redis://…) to share them, or run one worker")


def serve_workers(argv: list[str], workers: int, host: str, port: int) -> int:
    """Run ``workers`` copies of ``tierwise serve`` (``argv``: the command line of one, without ``--worker``) on
    ``host:port`` (SO_REUSEPORT: the kernel spreads connections over them), each with its own event loop, service,
    state and ledger journal. SIGTERM/SIGINT are forwarded (a second one forces, as for one process); the parent
    waits until every worker has drained and exited. A worker that dies is started again (at most once a second);
    one that cannot start (exit 2) stops them all. Returns the exit status."""
    if port == 0:  # one port for all: pick it here
        import socket

        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
    procs: dict[int, subprocess.Popen[bytes]] = {}
    started: dict[int, float] = {}
    signals: list[int] = []

    def spawn(i: int) -> None:
        # own session: a terminal's Ctrl-C reaches the parent alone, which forwards it once
        procs[i] = subprocess.Popen([*argv, "--host", host, "--port", str(port), "--worker", f"{i}/{workers}"],
                                    start_new_session=True)
        started[i] = time.monotonic()

    def forward(signum: int, frame: object) -> None:
        signals.append(signum)
        for p in procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    code = 0
    try:
        for i in range(workers):
            spawn(i)
        print(f"tierwise: {workers} workers on http://{host}:{port}/v1 (pids "
              f"{', '.join(str(p.pid) for p in procs.values())})", file=sys.stderr, flush=True)
        restart_at: dict[int, float] = {}
        while True:
            for i, p in list(procs.items()):
                rc = p.poll()
                if rc is None or signals:
                    continue
                if rc == 2 and time.monotonic() - started[i] < 60:  # could not start: the config or the port
                    log.error("worker %d/%d could not start (exit 2): stopping the others", i + 1, workers)
                    code = 2
                    forward(signal.SIGTERM, None)
                elif i not in restart_at:
                    log.error("worker %d/%d (pid %d) exited with status %s: starting it again", i + 1, workers,
                              p.pid, rc)
                    restart_at[i] = max(time.monotonic(), started[i] + 1.0)
            for i, at in list(restart_at.items()):
                if not signals and time.monotonic() >= at:
                    del restart_at[i]
                    spawn(i)
            if signals and all(p.poll() is not None for p in procs.values()):
                break
            time.sleep(0.05)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for p in procs.values():  # only if the loop itself failed: never leave workers behind
            if p.poll() is None:
                p.terminate()
                p.wait(30)
    if code == 0:
        code = max((p.returncode for p in procs.values() if p.returncode and p.returncode > 0), default=0)
    return code
