"""Run the gateway: uvloop, one process, graceful shutdown that flushes the ledger on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import sys

from aiohttp import web

from tierwise.config.schema import TierwiseConfig
from tierwise.gateway.app import create_app
from tierwise.service import Tierwise

log = logging.getLogger("tierwise")


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform but Windows
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _build_app(cfg: TierwiseConfig) -> web.Application:
    svc = Tierwise(cfg)
    warmups = [p.warmup() for p in svc.providers.values() if hasattr(p, "warmup")]
    if warmups:
        log.info("loading local models …")
        await asyncio.gather(*warmups)
    return create_app(svc)


def serve(cfg: TierwiseConfig, host: str | None = None, port: int | None = None,
          shutdown_timeout_s: float = 10.0) -> None:
    """Serve until SIGTERM/SIGINT; in-flight requests get ``shutdown_timeout_s`` to finish, then the ledger flushes."""
    _install_uvloop()
    h = host or cfg.server.host
    p = cfg.server.port if port is None else port
    print(f"tierwise: serving on http://{h}:{p}/v1 (ledger: {cfg.ledger.backend} {cfg.ledger.path})",
          file=sys.stderr, flush=True)
    web.run_app(
        _build_app(cfg),
        host=h,
        port=p,
        access_log=None,  # the ledger is the access log; a per-request log line would cost more than routing
        handle_signals=True,
        shutdown_timeout=shutdown_timeout_s,
        handler_cancellation=True,  # a client that disconnects cancels its handler: its record is booked at once
        print=None,
    )
