"""The dashboard in a real browser: Debian's chromium (``/usr/bin/chromium``) driven by Playwright, against a real
gateway (fake upstream, real SQLite ledger). One browser for the module.

- behind the admin key (admin listener): the page asks for the key, a wrong one is refused with a message, the
  right one opens it; the numbers on the page equal the ledger's ``spend``; a new request shows up in the table
  within a few seconds without a reload; tier and principal filters narrow the numbers; a hostile tag is shown as
  text (no script runs); an absurd window in the URL gives a message, never a blank page;
- on an open gateway the page opens on loopback without a key and shows an empty ledger plainly.

Never ``playwright install``: the browser is the distribution's (``.ci/run`` installs it when missing).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.governance_env import ADMIN_KEY
from tests.harness import GatewayServer, config_for
from tierwise.gateway.admin import start_admin
from tierwise.gateway.app import GATEWAY_KEY
from tierwise.ledger.spend import SpendQuery

MSG = [{"role": "user", "content": "hello"}]
FAST = "dashboard: {cache_ms: 0, summary_refresh_ms: 1000, live_refresh_ms: 500}\n"
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    dialogs: list[str] = []
    pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    pg.dialogs = dialogs
    try:
        yield pg
    finally:
        ctx.close()


class Keyed:
    """A gateway with two static API keys (principals team-a and team-b) and the admin listener."""

    def __init__(self, upstream: FakeUpstream, tmp: Path) -> None:
        extra = (f'governance: {{keys: "off", backend: sqlite, path: "{tmp / "gov.db"}"}}\n'
                 "admin: {host: 127.0.0.1, port: 0, api_key_env: TW_DASH_ADMIN}\n" + FAST)
        cfg = config_for(upstream.base_url, tmp, extra=extra)
        cfg.server.api_keys_env = "TW_DASH_BROWSER_KEYS"
        self.gw = GatewayServer(cfg).start()
        assert self.gw.runner is not None
        self.admin_runner, port = self.gw._run(start_admin(cfg, ADMIN_KEY, port=0,
                                                           gateway=self.gw.runner.app[GATEWAY_KEY]))
        self.admin = f"http://127.0.0.1:{port}"
        self.since = time.time() - 5

    def send(self, key: str, model: str, tags: str | None = None) -> str:
        headers = {"Authorization": f"Bearer {key}", **({"X-Tierwise-Tags": tags} if tags else {})}
        r = httpx.post(self.gw.base_url + "/chat/completions", headers=headers,
                       json={"model": model, "messages": MSG}, timeout=20)
        assert r.status_code == 200, r.text
        return r.headers["x-tierwise-request-id"]

    def spend(self, by: str) -> dict[Any, tuple[int, float]]:
        assert self.gw.svc is not None
        self.gw.flush_ledger()
        rep = self.gw.svc.ledger.store.spend(SpendQuery(by=(by,), since=self.since))
        return {g.group[0]: (g.requests, g.cost_usd) for g in rep.groups}

    def close(self) -> None:
        self.gw._run(self.admin_runner.cleanup())
        self.gw.stop()


@pytest.fixture
def keyed(upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Keyed]:
    monkeypatch.setenv("TW_DASH_BROWSER_KEYS", "team-a:sk-aaa-111,team-b:sk-bbb-222")
    k = Keyed(upstream, tmp_path)
    try:
        yield k
    finally:
        k.close()


def value(page: Any, selector: str) -> float:
    return float(page.get_attribute(selector, "data-value"))


def wait_value(page: Any, selector: str, want: float, timeout_s: float = 6.0) -> None:
    """Until the element's data-value equals ``want`` (the page refreshes on its own: no reload)."""
    deadline = time.monotonic() + timeout_s
    got: str | None = None
    while time.monotonic() < deadline:
        got = page.get_attribute(selector, "data-value")
        if got not in (None, "") and math.isclose(float(got), want, rel_tol=1e-9, abs_tol=1e-12):
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"{selector}: data-value {got!r}, expected {want!r}")


def test_behind_the_admin_key_the_page_shows_the_ledger_live_and_filters_it(keyed: Keyed, page: Any,
                                                                           tmp_path: Path) -> None:
    for _ in range(3):
        keyed.send("sk-aaa-111", "chat")
    for _ in range(2):
        keyed.send("sk-bbb-222", "label", tags=f"team={XSS}")

    page.goto(keyed.admin + "/dashboard?window=15m")
    page.wait_for_selector("#login:not([hidden])")
    assert page.is_hidden("#main")
    page.fill("#admin-key", "not-the-admin-key-at-all")
    page.click("#login-button")
    page.wait_for_selector("#message:not([hidden])")
    assert "refused" in page.text_content("#message") and page.is_visible("#login")

    page.fill("#admin-key", ADMIN_KEY)
    page.click("#login-button")
    page.wait_for_selector("#main:not([hidden])")
    by_principal, by_tier = keyed.spend("principal"), keyed.spend("tier")
    total_n = sum(n for n, _ in by_principal.values())
    total_cost = sum(c for _, c in by_principal.values())
    assert total_n == 5
    wait_value(page, "#kpi-requests", total_n)
    wait_value(page, "#kpi-cost", total_cost)
    for name, (n, cost) in by_principal.items():
        row = f'#alloc-principal .row[data-name="{name}"]'
        assert math.isclose(value(page, row), cost, rel_tol=1e-9)
        assert f"{n} req" in page.text_content(row)
    tier_rows = {page.get_attribute(f"#tiers-table tbody tr:nth-child({i + 1})", "data-tier")
                 for i in range(len(by_tier))}
    assert tier_rows == set(by_tier)
    # the hostile tag is text in a cell, not markup: no image element, no dialog
    page.wait_for_selector("#recent tbody tr[data-id]")
    assert XSS in page.text_content("#recent tbody")
    assert page.query_selector("#recent img") is None and page.dialogs == []
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert (tmp_path / "dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # live: a new request appears in the table without a reload, within the refresh interval + the ledger flush
    t0 = time.monotonic()
    rid = keyed.send("sk-aaa-111", "label")
    page.wait_for_selector(f'#recent tbody tr[data-id="{rid}"]', timeout=3000)
    assert time.monotonic() - t0 < 3
    wait_value(page, "#kpi-requests", 6)  # and the aggregates follow on their own refresh

    # filters: the tier select and the principal box narrow every number to what the ledger says
    page.select_option("#tier", "label")
    by_tier = keyed.spend("tier")
    wait_value(page, "#kpi-requests", by_tier["label"][0])
    wait_value(page, "#kpi-cost", by_tier["label"][1])
    assert "tier=label" in page.url
    page.fill("#principal", "team-a")
    page.click("#apply")
    assert keyed.gw.svc is not None
    rows = [r for r in keyed.gw.rows() if r["principal"] == "team-a" and r["tier"] == "label"]
    wait_value(page, "#kpi-requests", len(rows))
    assert {page.get_attribute(f"#recent tbody tr:nth-child({i + 1})", "data-id") for i in range(len(rows))} == \
        {r["id"] for r in rows}
    page.select_option("#tier", "")
    page.fill("#principal", "nobody-at-all")
    page.click("#apply")
    wait_value(page, "#kpi-requests", 0)
    assert page.is_visible("#empty") and "nobody-at-all" in page.text_content("#empty")

    # bad input in the URL: a message naming the problem, the page still there
    page.goto(keyed.admin + "/dashboard?window=99999d")
    page.wait_for_selector("#message.error:not([hidden])")
    assert "window" in page.text_content("#message") and "400 days" in page.text_content("#message")


def test_an_open_gateway_opens_on_loopback_without_a_key_and_shows_an_empty_ledger(
        upstream: FakeUpstream, tmp_path: Path, page: Any) -> None:
    gw = GatewayServer(config_for(upstream.base_url, tmp_path, extra=FAST)).start()
    try:
        page.goto(gw.url + "/dashboard")
        page.wait_for_selector("#main:not([hidden])")
        wait_value(page, "#kpi-requests", 0)
        assert page.is_visible("#empty") and page.is_hidden("#login")
        assert "no requests yet" in page.text_content("#recent tbody")
    finally:
        gw.stop()
