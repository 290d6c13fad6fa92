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
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.request import pathname2url

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from tierwise.config.load import ConfigError, ConfigProblem
from tierwise.config.schema import LedgerConfig, TierwiseConfig
from tierwise.errors import APIError

if TYPE_CHECKING:
    from tierwise.providers.base import Provider
    from tierwise.routing.engine import TierClassifier
    from tierwise.service import Tierwise

log = logging.getLogger("tierwise")


class StartupError(Exception):
    """``serve`` cannot start; the message says what, where and what to do (the CLI prints it and exits 2)."""


# -- start-up checks (shared with check-config) -------------------------------------------------------------------


@dataclass(slots=True)
class Startup:
    """What :func:`check_startup` found and built; ``serve`` reuses the built pieces instead of building them twice."""

    problems: list[ConfigProblem] = field(default_factory=list)
    providers: dict[str, Provider] | None = None  # every provider, when all of them could be built
    classifier: TierClassifier | None = None


def check_startup(cfg: TierwiseConfig, env: dict[str, str] | None = None) -> Startup:
    """Every check ``serve`` depends on at start-up, without starting anything: no port, no ledger file written,
    no model weights loaded. Returns the problems (config paths and messages) and the pieces it built."""
    env = dict(os.environ) if env is None else env
    out = Startup()
    out.providers = _check_providers(cfg, env, out.problems)
    _check_api_keys(cfg, env, out.problems)
    try:
        from tierwise.pricing import PriceBook

        PriceBook(cfg)
    except Exception as exc:
        out.problems.append(ConfigProblem("models", f"cannot build the price book: {_why(exc)}"))
    if cfg.classifier.kind == "semantic":
        try:
            from tierwise.service import build_semantic_classifier

            out.classifier = build_semantic_classifier(cfg)
        except Exception as exc:
            out.problems.append(ConfigProblem(
                "classifier.embedder", f"cannot build the semantic classifier with '{cfg.classifier.embedder}': "
                f"{_why(exc)} (install the embedder's extra, or use classifier.kind: none)"))
    _check_routers_and_gates(cfg, out.problems)
    problem = ledger_problem(cfg.ledger)
    if problem is not None:
        out.problems.append(ConfigProblem("ledger.path", problem))
    return out


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"cannot use {exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def _check_providers(cfg: TierwiseConfig, env: dict[str, str], problems: list[ConfigProblem]) -> dict[str, Provider] | None:
    from tierwise.providers.registry import build_provider

    built: dict[str, Provider] = {}
    for name, pcfg in cfg.providers.items():
        if pcfg.format in ("openai", "anthropic") and not pcfg.api_key and pcfg.api_key_env \
                and not env.get(pcfg.api_key_env):
            problems.append(ConfigProblem(
                f"providers.{name}.api_key_env",
                f"environment variable {pcfg.api_key_env} is not set (or empty): export it before starting "
                "tierwise, or give the key another way"))
            continue
        served = {cfg.upstream_name(k): (m.gguf or cfg.upstream_name(k)) for k, m in cfg.models.items()
                  if m.provider == name}
        try:
            built[name] = build_provider(name, pcfg, served)
        except Exception as exc:
            problems.append(ConfigProblem(f"providers.{name}", _why(exc)))
            continue
        if pcfg.format == "llamacpp":
            for key, m in cfg.models.items():
                if m.provider == name and m.gguf:
                    problem = _gguf_problem(m.gguf)
                    if problem:
                        problems.append(ConfigProblem(f"models.{key}.gguf", problem))
    return built if len(built) == len(cfg.providers) else None


def _gguf_problem(spec: str) -> str | None:
    """Whether the weights a llamacpp model names are there, without assembling or loading them (serve does)."""
    from tierwise.local.models import REGISTRY, LocalModelError, _part_paths, resolve_gguf

    try:
        if spec in REGISTRY:
            _part_paths(REGISTRY[spec])  # installed? (assembly and hashing happen when serve loads the model)
        else:
            resolve_gguf(spec)  # a path: exists and is a GGUF file
    except (LocalModelError, OSError) as exc:
        return _why(exc)
    return None


def _check_api_keys(cfg: TierwiseConfig, env: dict[str, str], problems: list[ConfigProblem]) -> None:
    name = cfg.server.api_keys_env
    if not name:
        return
    from tierwise.gateway.app import _load_keys

    saved = os.environ.get(name)
    try:  # _load_keys reads os.environ: check the environment we were given
        if name in env:
            os.environ[name] = env[name]
        else:
            os.environ.pop(name, None)
        _load_keys(name)
    except ValueError as exc:
        problems.append(ConfigProblem("server.api_keys_env", f"{exc} (set it to 'id:key,id:key')"))
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def _check_routers_and_gates(cfg: TierwiseConfig, problems: list[ConfigProblem]) -> None:
    """Learned router artifacts as the service loads them (embedder included), and every cascade gate built as the
    executor builds it (a gate that cannot be built would fail each request of its tier)."""
    from tierwise.routing.gates import build_gate
    from tierwise.service import load_routers

    for tname, tier in cfg.tiers.items():
        try:
            load_routers(cfg.model_copy(update={"tiers": {tname: tier}}))  # the service's own choice of artifact
        except Exception as exc:
            problems.append(ConfigProblem(f"tiers.{tname}", f"learned router: {_why(exc)}"))
        if tier.cascade is None:
            continue
        for i, rung in enumerate(tier.cascade.rungs):
            if rung.gate is None:
                continue
            try:
                build_gate(rung.gate)
            except Exception as exc:
                problems.append(ConfigProblem(f"tiers.{tname}.cascade.rungs[{i}].gate",
                                              f"{rung.gate.kind} gate: {_why(exc)}"))


_LEDGER_FIX = "point ledger.path at a file in a writable directory (or use ledger.backend: memory for a throwaway)"


def ledger_problem(cfg: LedgerConfig) -> str | None:
    """Why the ledger at ``cfg.path`` cannot be opened for writing, or None; changes nothing on disk.

    The directory must take new files (the database, its WAL, the fallback file) — checked by creating and removing
    a temporary file, which holds for root too (where permission bits do not stop writes); an existing file must
    open for writing and be a tierwise ledger of a schema this version reads.
    """
    if cfg.backend != "sqlite":
        return None
    path = Path(cfg.path).expanduser()
    if path.is_dir():
        return f"ledger {path} is a directory, not a file; {_LEDGER_FIX}"
    probe = path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the directories in between are created at start-up
    if not probe.is_dir():
        return f"cannot create ledger {path}: {probe} is not a directory; {_LEDGER_FIX}"
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".tierwise-check-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        return (f"cannot create files in {probe} ({exc.strerror}): ledger {path} needs it for the database, its WAL "
                f"and its fallback file; make the directory writable or {_LEDGER_FIX}")
    if not path.exists():
        return None
    try:
        with open(path, "r+b"):
            pass
    except OSError as exc:
        return f"cannot open ledger {path} for writing ({exc.strerror}); make it writable or {_LEDGER_FIX}"
    return _ledger_schema_problem(path)


def _ledger_schema_problem(path: Path) -> str | None:
    """Refusals of :class:`~tierwise.ledger.store.SQLiteLedgerStore`, read from the file header without opening it
    with SQLite (even a read-only connection leaves WAL files behind next to a WAL database)."""
    from tierwise.ledger.store import APPLICATION_ID, SCHEMA_VERSION

    with open(path, "rb") as f:
        head = f.read(100)
    if not head:
        return None  # an empty file becomes a new ledger
    if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
        return f"{path} is not a tierwise ledger (not an SQLite database); {_LEDGER_FIX}"
    version = int.from_bytes(head[60:64], "big", signed=True)  # PRAGMA user_version
    app_id = int.from_bytes(head[68:72], "big", signed=True)  # PRAGMA application_id
    if app_id not in (0, APPLICATION_ID):
        return f"{path} is an SQLite file of another application, not a tierwise ledger; {_LEDGER_FIX}"
    if version > SCHEMA_VERSION:
        return (f"ledger {path} has schema version {version}, but this tierwise only knows up to version "
                f"{SCHEMA_VERSION}: upgrade tierwise, or point ledger.path at a new file")
    if version == 0:  # not stamped by tierwise: refused if it already has a 'requests' table of its own
        try:
            conn = sqlite3.connect(f"file:{pathname2url(str(path.resolve()))}?mode=ro&immutable=1", uri=True)
            try:
                table = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'requests'").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            return f"{path} is not a tierwise ledger ({exc}); {_LEDGER_FIX}"
        if table is not None:
            return f"{path} has a 'requests' table that tierwise did not create; {_LEDGER_FIX}"
    return None


def _build_failure(cfg: TierwiseConfig, exc: BaseException) -> str:
    """One line for a failure while building the service (the checks passed, so this is rare: a race, a disk)."""
    from tierwise.ledger import LedgerSchemaError

    if isinstance(exc, sqlite3.Error | LedgerSchemaError) or (
            isinstance(exc, OSError) and exc.filename and "ledger" in str(exc.filename)):
        return f"cannot open the ledger {cfg.ledger.path} ({_why(exc)}); {_LEDGER_FIX}"
    return f"{type(exc).__name__}: {_why(exc)}"


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
          shutdown_timeout_s: float = 10.0, *, startup: Startup | None = None, source: str = "<config>") -> None:
    """Serve until SIGTERM/SIGINT; in-flight requests get ``shutdown_timeout_s`` to finish, then the ledger flushes.

    Raises :class:`StartupError` (nothing listening, nothing left running) when the gateway cannot start.
    ``startup`` is :func:`check_startup`'s result when the caller already ran it.
    """
    if startup is None:
        startup = check_startup(cfg)
    if startup.problems:
        raise StartupError(str(ConfigError(source, startup.problems)))
    h = host or cfg.server.host
    p = cfg.server.port if port is None else port
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(cfg, h, p, shutdown_timeout_s, startup))


async def _serve(cfg: TierwiseConfig, host: str, port: int, shutdown_timeout_s: float, startup: Startup) -> None:
    from tierwise.gateway.app import create_app
    from tierwise.service import Tierwise

    try:
        svc = Tierwise(cfg, providers=startup.providers, classifier=startup.classifier)
    except Exception as exc:
        raise StartupError(_build_failure(cfg, exc)) from None
    try:
        warmups = [p.warmup() for p in svc.providers.values() if hasattr(p, "warmup")]
        if warmups:
            log.info("loading local models …")
            await asyncio.gather(*warmups)
        app = create_app(svc)
    except Exception as exc:
        await svc.aclose()
        raise StartupError(_build_failure(cfg, exc)) from None
    drain = _Drain(svc)
    app.middlewares.insert(0, drain.middleware())  # outermost: it sees every request first
    runner = web.AppRunner(app, handle_signals=False, access_log=None,  # the ledger is the access log
                           handler_cancellation=True,  # a client that disconnects cancels its handler: booked at once
                           shutdown_timeout=1.0)  # after the drain: what is still running is cancelled, fast
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()  # closes the service: the ledger flushes
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; free the port or set "
                           "server.port / --port (and server.host / --host)") from None
    try:
        bound = runner.addresses[0][1] if runner.addresses else port
        print(f"tierwise: serving on http://{host}:{bound}/v1 (ledger: {cfg.ledger.backend} {cfg.ledger.path})",
              file=sys.stderr, flush=True)
        stop, force = asyncio.Event(), asyncio.Event()

        def on_signal() -> None:
            (force if stop.is_set() else stop).set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        await stop.wait()
        await drain.run(site, shutdown_timeout_s, force)
    finally:
        await runner.cleanup()  # idle connections close, on_shutdown/on_cleanup run: the ledger flushes
        with contextlib.suppress(Exception):
            for sig in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().remove_signal_handler(sig)
