"""A screenshot of the dashboard over a realistic day of traffic: ``bench/results/dashboard.png``.

    python bench/dashboard_screenshot.py [--rows 20000] [--out bench/results/dashboard.png]

Seeds an SQLite ledger with ``--rows`` synthetic requests over the last 24 hours (bench/dashboard_data.py, fixed
seed), starts a gateway on it (an open gateway on loopback, so the dashboard needs no key; budget caps configured so
the budget panel has something to show; today's seeded requests admitted and settled on its budget state, as serving
them would have), opens ``/dashboard?window=24h`` in Debian's headless chromium
(``/usr/bin/chromium``, driven by Playwright; nothing is downloaded) and saves a full-page screenshot.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import dashboard_data  # noqa: E402
from aiohttp import web  # noqa: E402

from tierwise.config import load_config_text  # noqa: E402
from tierwise.gateway.app import create_app  # noqa: E402
from tierwise.governance.budgets import caps_for  # noqa: E402
from tierwise.governance.principal import Principal  # noqa: E402
from tierwise.ledger import SQLiteLedgerStore  # noqa: E402
from tierwise.service import Tierwise  # noqa: E402
from tierwise.state.backend import Settlement  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
BUDGETS = ("budgets: {caps: {global: {daily_usd: 60, monthly_usd: 1500}, 'customer:*': {monthly_usd: 150}, "
           "'model:gpt-4o': {daily_usd: 25}}}\n")


def seed(path: Path, n: int) -> list[dict]:
    store = SQLiteLedgerStore(path)
    try:
        rows = list(dashboard_data.rows(n, end=time.time() - 5, days=1.0))
        for i in range(0, len(rows), 5000):
            store.write_batch(rows[i:i + 5000])
    finally:
        store.close()
    return rows


async def charge(svc: Tierwise, rows: list[dict]) -> None:
    """Admit and settle every seeded request of today on the gateway's budget state, as serving them would have, so
    the budget panel's live figures (read from the state) match the ledger's."""
    state, today = svc.governor.state, time.strftime("%Y-%m-%d", time.gmtime())
    for r in rows:
        if time.strftime("%Y-%m-%d", time.gmtime(r["ts"])) != today or r.get("status") == "rejected":
            continue
        who = Principal(r.get("principal") or "anonymous", customer=r.get("customer"),
                        department=r.get("department"), project=r.get("project"))
        models = [r["model"]] if r.get("model") else []
        caps = caps_for(who, svc.cfg.budgets, models)
        await state.admit(r["id"], caps, [], 0.0, 0, {}, 60.0)
        cost = float(r.get("cost_usd") or 0.0)
        state.settle(Settlement(r["id"], cost, 0, {r["model"]: cost} if r.get("model") else {}))


def serve(cfg_text: str) -> tuple[asyncio.AbstractEventLoop, web.AppRunner, int, threading.Thread, Tierwise]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    svc = Tierwise(load_config_text(cfg_text, env={}))

    async def up() -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(create_app(svc), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    runner, port = asyncio.run_coroutine_threadsafe(up(), loop).result(60)
    return loop, runner, port, thread, svc


def shoot(url: str, out: Path, width: int = 1440) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": 1000}, device_scale_factor=1)
            page.goto(url)
            page.wait_for_selector('#kpi-requests[data-value]:not([data-value="0"])', timeout=30_000)
            page.wait_for_selector("#recent tbody tr[data-id]", timeout=30_000)
            page.wait_for_timeout(300)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "dashboard.png")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Path(tmp) / "ledger.db"
        rows = seed(ledger, args.rows)
        loop, runner, port, thread, svc = serve(dashboard_data.config_text(str(ledger), extra=BUDGETS))
        try:
            asyncio.run_coroutine_threadsafe(charge(svc, rows), loop).result(120)
            shoot(f"http://127.0.0.1:{port}/dashboard?window=24h", args.out)
        finally:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
