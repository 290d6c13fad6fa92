"""The floor: a bare aiohttp pass-through proxy (no parsing, routing, pricing or ledger), run in the same benchmark.

Whatever this adds over going direct is the cost of one extra Python HTTP hop (server parse + client request +
response copy) on this machine; the gateway's own overhead is what it adds on top of this.

    python bench/overhead/bare_proxy.py --upstream http://127.0.0.1:N [--port 0]   # prints "PORT <n>"
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import aiohttp
import uvloop
from aiohttp import web

UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    session = request.app[SESSION]
    async with session.post(request.app[UPSTREAM] + request.path, data=body,
                            headers={"Content-Type": "application/json"}) as up:
        if up.content_type == "text/event-stream":
            resp = web.StreamResponse(status=up.status, headers={"Content-Type": up.headers["Content-Type"]})
            await resp.prepare(request)
            async for data in up.content.iter_any():
                await resp.write(data)
            await resp.write_eof()
            return resp
        return web.Response(status=up.status, body=await up.read(), content_type=up.content_type)


async def app_for(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30))
    app.router.add_post("/v1/chat/completions", forward)
    app.router.add_get("/health", lambda r: web.Response(text="ok"))

    async def close(app: web.Application) -> None:
        await app[SESSION].close()

    app.on_cleanup.append(close)
    return app


async def serve(upstream: str, port: int) -> None:
    runner = web.AppRunner(await app_for(upstream), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    print(f"PORT {site._server.sockets[0].getsockname()[1]}", flush=True)  # type: ignore[union-attr]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    uvloop.run(serve(args.upstream, args.port))
