"""The budget panel in a real browser (Debian's chromium driven by Playwright, a real gateway, fake upstream): for
every budget the page shows what the governance state holds — settled spend today and this month, reservations of
requests in flight, the level and the step admission takes — equal to the state backend's ``read_usage`` and,
for settled spend, to the ledger; a request in flight shows as reserved and then as spent, without a reload; the
step moves to ``refused`` when the cap is reached. Never ``playwright install``: the browser is the distribution's.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for
from tierwise.ledger.spend import SpendQuery
from tierwise.state.backend import Usage

MSG = [{"role": "user", "content": "hello"}]
PER_REQUEST = (1000 * 2.5 + 100 * 10) / 1e6  # large: 1000 prompt + 100 completion tokens
CAPS = ("budgets: {caps: {global: {daily_usd: 0.0083, monthly_usd: 1000}, 'model:large': {monthly_usd: 0.5}}}\n"
        "dashboard: {cache_ms: 0, summary_refresh_ms: 1000, live_refresh_ms: 500}\n")


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        yield ctx.new_page()
    finally:
        ctx.close()


@pytest.fixture
def gw(upstream: FakeUpstream, tmp_path: Path) -> Iterator[GatewayServer]:
    g = GatewayServer(config_for(upstream.base_url, tmp_path, extra=CAPS)).start()
    try:
        yield g
    finally:
        g.stop()


def slow_stream(gw: GatewayServer) -> None:
    """One streamed request read to its end (the upstream paces it: the request stays in flight meanwhile)."""
    with httpx.stream("POST", gw.base_url + "/chat/completions", timeout=20,
                      json={"model": "large", "messages": MSG, "stream": True}) as r:
        assert r.status_code == 200
        for _ in r.iter_bytes():
            pass


def send(gw: GatewayServer) -> None:
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": "large", "messages": MSG}, timeout=20)
    assert r.status_code == 200, r.text


def state(gw: GatewayServer, scope: str) -> Usage:
    assert gw.svc is not None
    return gw._run(gw.svc.governor.state.read_usage([scope], past_days=True))[scope]  # type: ignore[no-any-return]


def ledger(gw: GatewayServer, model: str | None = None) -> float:
    assert gw.svc is not None
    gw.flush_ledger()
    rep = gw.svc.ledger.store.spend(SpendQuery(by=("model",), since=time.time() - 86400))
    return sum(g.cost_usd for g in rep.groups if model is None or g.group[0] == model)


def figure(page: Any, scope: str, period: str, cls: str) -> float | None:
    raw = page.get_attribute(f'#budgets .budget[data-scope="{scope}"] .period.{period} .{cls.replace(" ", ".")}',
                             "data-value")
    return None if raw in (None, "") else float(raw)


def wait_figure(page: Any, scope: str, period: str, cls: str, want: float, timeout_s: float = 8.0) -> None:
    """Until the page shows ``want`` there (it refreshes on its own: no reload)."""
    deadline = time.monotonic() + timeout_s
    got: float | None = None
    while time.monotonic() < deadline:
        got = figure(page, scope, period, cls)
        if got is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12):
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"{scope} {period} {cls}: {got!r}, expected {want!r}")


def test_the_budget_panel_shows_the_live_governance_state(gw: GatewayServer, upstream: FakeUpstream, page: Any,
                                                          tmp_path: Path) -> None:
    upstream.set(prompt_tokens=1000, completion_tokens=100)
    for _ in range(2):
        send(gw)
    # the panel's ledger figures are cached for web.BUDGET_CACHE_S: the rows must be stored before its first read,
    # not whenever the writer's interval happens to fall (a loaded machine read an empty ledger here)
    spent = ledger(gw)
    page.goto(gw.url + "/dashboard?window=15m")
    page.wait_for_selector('#budgets .budget[data-scope="global"]')
    assert page.get_attribute("#budget-source", "data-source") == "state"
    assert "memory state" in page.text_content("#budget-source")

    g = state(gw, "global")
    assert spent == pytest.approx(2 * PER_REQUEST)
    wait_figure(page, "global", "today", "spent", g.daily_spent)
    wait_figure(page, "global", "month", "spent", g.monthly_spent)
    assert figure(page, "global", "today", "reserved") == 0
    assert figure(page, "global", "today", "cap") == 0.0083 and figure(page, "global", "month", "cap") == 1000
    assert math.isclose(figure(page, "global", "today", "ledger note") or 0, spent, rel_tol=1e-9)
    m = state(gw, "model:large")
    wait_figure(page, "model:large", "month", "spent", m.monthly_spent)
    assert math.isclose(m.monthly_spent, ledger(gw, "large"), rel_tol=1e-9)
    budget = '#budgets .budget[data-scope="global"]'
    assert page.get_attribute(budget, "data-step") == "cheaper"  # 84 % of the daily cap: admission's first step
    assert math.isclose(float(page.get_attribute(budget, "data-level")), g.daily_spent / 0.0083, rel_tol=1e-9)
    assert "cheaper" in page.text_content(f"{budget} .step") and "daily $0.0083" in page.text_content(f"{budget} .why")
    assert page.text_content(f"{budget} .projection").startswith("projection: too few days")
    page.screenshot(path=str(tmp_path / "budgets.png"), full_page=True)

    # live: a slow request's reservation appears while it runs, then its real cost, without a reload
    upstream.set(reply=" ".join(["word"] * 12), inter_chunk_s=0.3)  # a stream of ~3.6 s
    done = threading.Event()
    threading.Thread(target=lambda: (slow_stream(gw), done.set()), daemon=True).start()
    deadline = time.monotonic() + 8
    while (figure(page, "global", "today", "reserved") or 0) == 0 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    shown = figure(page, "global", "today", "reserved") or 0
    assert shown > 0 and not done.is_set()
    assert math.isclose(shown, state(gw, "global").daily_reserved, rel_tol=1e-9)
    assert "reserved" in page.text_content(f"{budget} .period.today")
    assert done.wait(10)
    total = ledger(gw)
    wait_figure(page, "global", "today", "spent", total)
    wait_figure(page, "global", "today", "reserved", 0)
    assert math.isclose(state(gw, "global").daily_spent, total, rel_tol=1e-9)
    deadline = time.monotonic() + 8
    while page.get_attribute(budget, "data-step") != "refused" and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert page.get_attribute(budget, "data-step") == "refused"  # 3 x $0.0035 > $0.0083
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": "large", "messages": MSG}, timeout=20)
    assert r.status_code == 429
