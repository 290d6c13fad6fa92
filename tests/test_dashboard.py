"""The dashboard's JSON API over real HTTP (a real gateway, a fake upstream, a real SQLite ledger) and its SQL on
SQLite and PostgreSQL: numbers equal the ledger's own ``spend``, filters, who may open it (loopback on an open
gateway, the admin key on the admin listener, refused when keys exist without an admin API), and bad input (unknown
filters, absurd windows, an empty ledger, a ledger written while read) answered with a 4xx naming the parameter,
never a 500. The page in a real browser: tests/test_dashboard_browser.py."""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.governance_env import ADMIN_KEY, BASE_DSN, _pg_unreachable
from tests.harness import GatewayServer, config_for
from tests.schemas import validate
from tests.spend_data import MIDNIGHT, ledger_rows
from tierwise.config.schema import LedgerConfig
from tierwise.dashboard.query import DashboardQuery, parse_query
from tierwise.dashboard.reader import LedgerReader
from tierwise.dashboard.summary import build_summary, percentiles
from tierwise.gateway.admin import start_admin
from tierwise.gateway.app import GATEWAY_KEY
from tierwise.ledger import SQLiteLedgerStore
from tierwise.ledger.spend import SpendQuery
from tierwise.rollout.aggregate import traffic

MSG = [{"role": "user", "content": "hello"}]
FAST = "dashboard: {cache_ms: 0}\n"


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    validate(body, "ErrorResponse")
    return dict(body["error"])


@pytest.fixture
def open_gw(upstream: FakeUpstream, tmp_path: Path) -> Iterator[GatewayServer]:
    gw = GatewayServer(config_for(upstream.base_url, tmp_path, extra=FAST)).start()
    try:
        yield gw
    finally:
        gw.stop()


def send(gw: GatewayServer, n: int, *, model: str = "chat", key: str = "unused", tags: str | None = None) -> None:
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)
    try:
        for _ in range(n):
            c.chat.completions.create(model=model, messages=MSG,
                                      extra_headers={"X-Tierwise-Tags": tags} if tags else None)
    finally:
        c.close()


def spend(gw: GatewayServer, by: str, since: float) -> dict[Any, tuple[int, float]]:
    assert gw.svc is not None
    gw.flush_ledger()
    rep = gw.svc.ledger.store.spend(SpendQuery(by=(by,), since=since))
    return {g.group[0]: (g.requests, g.cost_usd) for g in rep.groups}


def test_an_empty_ledger_is_a_page_of_zeros_not_an_error(open_gw: GatewayServer) -> None:
    r = httpx.get(open_gw.url + "/dashboard/api/summary")
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["empty"] is True and d["totals"]["requests"] == 0 and d["totals"]["cost_usd"] == 0
    assert d["latency"]["latency_ms"]["p50"] is None and d["routing"]["tiers"] == []
    assert len(d["timeline"]["starts"]) == 60 and d["timeline"]["step_s"] == 60  # 1 h in 1-minute buckets
    assert httpx.get(open_gw.url + "/dashboard/api/recent").json()["data"] == []
    page = httpx.get(open_gw.url + "/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        assert httpx.get(f"{open_gw.url}/dashboard/static/{name}").status_code == 200
    error_of(httpx.get(open_gw.url + "/dashboard/static/../../etc/passwd"), 404)


def test_numbers_equal_the_ledgers_spend_and_filters_narrow_them(open_gw: GatewayServer) -> None:
    since = time.time() - 5
    send(open_gw, 3, model="chat")
    send(open_gw, 2, model="label", tags="team=<img src=x onerror=alert(1)>")
    by_tier, by_model = spend(open_gw, "tier", since), spend(open_gw, "model", since)
    d = httpx.get(open_gw.url + "/dashboard/api/summary?window=15m").json()
    assert d["empty"] is False
    assert d["totals"]["requests"] == 5 == sum(n for n, _ in by_tier.values())
    assert math.isclose(d["totals"]["cost_usd"], sum(c for _, c in by_tier.values()), rel_tol=1e-9)
    assert {t["tier"]: (t["requests"], pytest.approx(t["cost_usd"])) for t in d["routing"]["tiers"]} == by_tier
    assert {m["model"]: (m["requests"], pytest.approx(m["cost_usd"])) for m in d["routing"]["models"]} == by_model
    assert sum(d["timeline"]["requests"]) == 5
    assert math.isclose(sum(sum(v) for v in d["timeline"]["by_model"].values()), d["totals"]["cost_usd"])
    assert d["allocation"]["principal"]["top"] == [
        {"name": "anonymous", "requests": 5, "cost_usd": pytest.approx(d["totals"]["cost_usd"])}]
    assert d["latency"]["latency_ms"]["count"] == 5 and d["latency"]["latency_ms"]["p50"] > 0
    # the flagship is the priciest model (large: $2.5 in / $10 out); chat is served by it, label by small
    sv = d["savings"]
    assert sv["flagship"] == "large" and sv["savings_usd"] > 0 and "flagship" in sv["method"]
    assert math.isclose(sv["counterfactual_usd"] - sv["actual_usd"], sv["savings_usd"])

    only = httpx.get(open_gw.url + "/dashboard/api/summary?window=15m&tier=label").json()
    assert only["totals"]["requests"] == 2 and [t["tier"] for t in only["routing"]["tiers"]] == ["label"]
    assert math.isclose(only["totals"]["cost_usd"], by_tier["label"][1], rel_tol=1e-9)
    nobody = httpx.get(open_gw.url + "/dashboard/api/summary", params={"principal": "nobody"}).json()
    assert nobody["empty"] is True

    recent = httpx.get(open_gw.url + "/dashboard/api/recent?limit=3").json()["data"]
    rows = open_gw.rows()
    assert [r["id"] for r in recent] == [r["id"] for r in sorted(rows, key=lambda r: -r["ts"])][:3]
    assert recent[0]["tags"] == {"team": "<img src=x onerror=alert(1)>"}  # data, escaped by the page
    assert recent[0]["tier_source"] == "model" and "notes" in recent[0]


@pytest.mark.parametrize(("query", "param", "words"), [
    ("window=abc", "window", "not a duration"),
    ("window=-1h", "window", "not a duration"),
    ("window=0m", "window", "shorter than one minute"),
    ("window=30s", "window", "shorter than one minute"),
    ("window=999999d", "window", "longer than 400 days"),
    ("window=1h&window=2h", "window", "given 2 times"),
    ("tier=nope", "tier", "unknown tier 'nope'"),
    ("tier=%00", "tier", "unknown tier"),
    ("principal=" + "x" * 300, "principal", "longer than 200"),
    ("principal=a%01b", "principal", "control"),
    ("since=0", "since", "unknown filter"),
    ("limit=5", "limit", "unknown filter"),  # the summary takes no limit
])
def test_bad_filters_are_a_400_naming_the_parameter(open_gw: GatewayServer, query: str, param: str,
                                                    words: str) -> None:
    err = error_of(httpx.get(f"{open_gw.url}/dashboard/api/summary?{query}"), 400)
    assert err["param"] == param and words in err["message"], err


@pytest.mark.parametrize("limit", ["0", "201", "x", "-1", "1e3"])
def test_a_bad_limit_on_recent_is_a_400(open_gw: GatewayServer, limit: str) -> None:
    err = error_of(httpx.get(f"{open_gw.url}/dashboard/api/recent", params={"limit": limit}), 400)
    assert err["param"] == "limit"


def test_an_open_gateway_serves_loopback_clients_only(open_gw: GatewayServer) -> None:
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
        for path in ("/dashboard", "/dashboard/api/summary", "/dashboard/static/app.js"):
            err = error_of(httpx.get(open_gw.url + path, headers={header: "203.0.113.9"}), 403)
            assert err["code"] == "dashboard_loopback_only"


def test_a_ledger_being_written_while_the_dashboard_reads_it(open_gw: GatewayServer) -> None:
    stop = threading.Event()
    statuses: list[int] = []

    def poll() -> None:
        with httpx.Client() as c:
            while not stop.is_set():
                statuses.append(c.get(open_gw.url + "/dashboard/api/summary?window=1h").status_code)
                statuses.append(c.get(open_gw.url + "/dashboard/api/recent").status_code)

    t = threading.Thread(target=poll)
    t.start()
    try:
        send(open_gw, 40, model="label")
    finally:
        stop.set()
        t.join(10)
    assert statuses and set(statuses) == {200}
    open_gw.flush_ledger()
    # every row is stored now; the page may still hold the poller's last answer for a few times that query's own
    # duration (web.SLOW_REUSE), so the fresh count is due within the dashboard's live promise of 2 s, not at once
    deadline, seen = time.monotonic() + 5, -1
    while time.monotonic() < deadline and seen != 40:
        seen = httpx.get(open_gw.url + "/dashboard/api/summary").json()["totals"]["requests"]
        assert seen <= 40
        time.sleep(0.05)
    assert seen == 40


def test_keys_without_an_admin_api_refuse_the_dashboard(upstream: FakeUpstream, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TW_DASH_KEYS", "team-a:sk-aaa-111")
    cfg = config_for(upstream.base_url, tmp_path)
    cfg.server.api_keys_env = "TW_DASH_KEYS"
    gw = GatewayServer(cfg).start()
    try:
        for path in ("/dashboard", "/dashboard/api/summary"):
            err = error_of(httpx.get(gw.url + path), 403)
            assert err["code"] == "dashboard_needs_admin" and "admin:" in err["message"]
            err = error_of(httpx.get(gw.url + path, headers={"Authorization": "Bearer sk-aaa-111"}), 403)
    finally:
        gw.stop()


def _admin_cfg(upstream: FakeUpstream, tmp_path: Path, same_listener: bool = False) -> Any:
    extra = (f'governance: {{keys: "off", backend: sqlite, path: "{tmp_path / "gov.db"}"}}\n'
             f"admin: {{host: 127.0.0.1, port: 0, api_key_env: TW_DASH_ADMIN, same_listener: {str(same_listener).lower()}}}\n"
             + FAST)
    return config_for(upstream.base_url, tmp_path, extra=extra)


def test_with_an_admin_api_the_dashboard_is_on_the_admin_listener_behind_the_admin_key(
        upstream: FakeUpstream, tmp_path: Path) -> None:
    gw = GatewayServer(_admin_cfg(upstream, tmp_path)).start()
    try:
        err = error_of(httpx.get(gw.url + "/dashboard/api/summary"), 404)
        assert err["code"] == "dashboard_on_admin_listener" and "admin listener" in err["message"]
        assert gw.runner is not None
        runner, port = gw._run(start_admin(gw.cfg, ADMIN_KEY, port=0, gateway=gw.runner.app[GATEWAY_KEY]))
        admin = f"http://127.0.0.1:{port}"
        try:
            send(gw, 2, model="label")
            gw.flush_ledger()
            assert httpx.get(admin + "/dashboard").status_code == 200  # the page: no data, it asks for the key
            for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"x-api-key": ADMIN_KEY[:-1]}):
                err = error_of(httpx.get(admin + "/dashboard/api/summary", headers=headers), 401)
                assert err["code"] == "invalid_admin_key"
            ok = httpx.get(admin + "/dashboard/api/summary", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            assert ok.status_code == 200 and ok.json()["totals"]["requests"] == 2
            assert httpx.get(admin + "/dashboard/api/config", headers={"x-api-key": ADMIN_KEY}).json()["mode"] == \
                "admin_key"
            # a proxy in front is fine here: the admin key is the gate, not the address
            assert httpx.get(admin + "/dashboard/api/recent", headers={"x-api-key": ADMIN_KEY,
                                                                        "X-Forwarded-For": "203.0.113.9"}).status_code == 200
        finally:
            gw._run(runner.cleanup())
    finally:
        gw.stop()


def test_same_listener_mounts_it_behind_the_admin_key(upstream: FakeUpstream, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TW_DASH_ADMIN", ADMIN_KEY)
    gw = GatewayServer(_admin_cfg(upstream, tmp_path, same_listener=True)).start()
    try:
        assert error_of(httpx.get(gw.url + "/dashboard/api/summary"), 401)["code"] == "invalid_admin_key"
        assert httpx.get(gw.url + "/dashboard/api/summary", headers={"x-api-key": ADMIN_KEY}).status_code == 200
    finally:
        gw.stop()


def test_a_disabled_dashboard_is_not_served(upstream: FakeUpstream, tmp_path: Path) -> None:
    gw = GatewayServer(config_for(upstream.base_url, tmp_path, extra="dashboard: {enabled: false}\n")).start()
    try:
        assert error_of(httpx.get(gw.url + "/dashboard"), 404)["code"] == "not_found"
    finally:
        gw.stop()


# -- the SQL, on SQLite and PostgreSQL ------------------------------------------------------------------------------

def _rows() -> list[dict[str, Any]]:
    rng = random.Random(3)
    rows = ledger_rows(600)
    for r in rows:
        r["latency_ms"] = rng.lognormvariate(6, 1)
        r["ttft_ms"] = rng.choice([None, rng.lognormvariate(5, 0.5)])
        r["escalations"] = rng.choice([0, 0, 0, 1])
        r["fallbacks"] = rng.choice([0, 0, 0, 0, 1])
        r["tier_source"] = rng.choice(["header", "semantic", "model", None])
    return rows


def _summary(reader: LedgerReader, q: DashboardQuery, upstream_url: str, tmp: Path) -> dict[str, Any]:
    cfg = config_for(upstream_url, tmp)
    prices = {"large": _price(2.5, 10), "small": _price(0.1, 0.4)}
    return reader.run(lambda s: build_summary(s, q, cfg, prices))


def _price(i: float, o: float) -> Any:
    from tierwise.cost.prices import ResolvedPrice
    return ResolvedPrice(i, o, i / 2, i)


def _same(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float | int):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.fixture
def pg_dsn_schema() -> Iterator[tuple[str, str]]:
    down = _pg_unreachable()
    if down:
        pytest.skip(down)
    import psycopg

    schema = f"tw_dash_{uuid.uuid4().hex[:12]}"
    try:
        yield BASE_DSN, schema
    finally:
        with psycopg.connect(BASE_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_sqlite_and_postgresql_give_the_same_panels_and_they_equal_spend(
        tmp_path: Path, pg_dsn_schema: tuple[str, str]) -> None:
    from tierwise.ledger.postgres import PostgresLedgerStore

    rows = _rows()
    lite = SQLiteLedgerStore(tmp_path / "l.db")
    dsn, schema = pg_dsn_schema
    pg = PostgresLedgerStore(dsn, schema=schema)
    lite.write_batch(rows)
    pg.write_batch(rows)
    readers = [LedgerReader(LedgerConfig(backend="sqlite", path=str(tmp_path / "l.db")), lite),
               LedgerReader(LedgerConfig(backend="postgres", dsn=dsn, pg_schema=schema), pg)]
    try:
        for tier, principal in ((None, None), ("chat", None), (None, "team-a"), ("code", "anonymous")):
            q = parse_query({"window": "2d", **({"tier": tier} if tier else {}),
                             **({"principal": principal} if principal else {})},
                            tiers={"chat", "code"}, max_days=400, now=MIDNIGHT + 86400)
            a, b = (_summary(r, q, "http://127.0.0.1:9/v1", tmp_path) for r in readers)
            _same(a, b)
            ref = lite.spend(SpendQuery(by=("tier", "principal"), since=q.since, until=q.until))
            want = [g for g in ref.groups if (tier is None or g.group[0] == tier)
                    and (principal is None or g.group[1] == principal)]
            assert a["totals"]["requests"] == sum(g.requests for g in want) > 0
            assert math.isclose(a["totals"]["cost_usd"], sum(g.cost_usd for g in want), rel_tol=1e-9)
            assert a["totals"]["errors"] == sum(g.errors for g in want)
            assert sum(a["timeline"]["requests"]) == a["totals"]["requests"]
            if tier is None and principal is None:  # the served tokens are those `tierwise report` prices
                groups = traffic(LedgerConfig(backend="sqlite", path=str(tmp_path / "l.db")), lite, q.since, q.until)
                for t in ("input_tokens", "output_tokens", "cache_read_tokens"):
                    assert a["totals"][f"served_{t}"] == sum(getattr(g, f"served_{t}") for g in groups) > 0
    finally:
        for r in readers:
            r.close()
        lite.close()
        pg.close()


def test_percentiles_are_within_two_percent_of_the_exact_ones(tmp_path: Path) -> None:
    rng = random.Random(5)
    values = sorted(rng.lognormvariate(5, 1.2) for _ in range(5000))
    rows = ledger_rows(1)
    store = SQLiteLedgerStore(tmp_path / "p.db")
    store.write_batch([{**rows[0], "id": f"p{i}", "ts": MIDNIGHT + i * 0.01, "status": "ok", "latency_ms": v}
                       for i, v in enumerate(values)])
    reader = LedgerReader(LedgerConfig(backend="sqlite", path=str(tmp_path / "p.db")), store)
    try:
        q = parse_query({"window": "1d"}, tiers=set(), max_days=400, now=MIDNIGHT + 3600)
        from tierwise.dashboard import sql

        got = percentiles((b, n) for k, b, n in reader.run(lambda s: sql.histograms(s, q)) if k == 0)
    finally:
        reader.close()
        store.close()
    assert got["count"] == 5000
    for p in (50, 90, 95, 99):
        exact = values[math.ceil(p / 100 * 5000) - 1]
        assert abs(got[f"p{p}"] / exact - 1) <= 0.021, (p, got[f"p{p}"], exact)


def test_the_memory_ledger_answers_like_sqlite(upstream: FakeUpstream, tmp_path: Path) -> None:
    cfg = config_for(upstream.base_url, tmp_path, extra=FAST)
    cfg.ledger.backend = "memory"
    gw = GatewayServer(cfg).start()
    try:
        send(gw, 3, model="label")
        gw.flush_ledger()
        d = httpx.get(gw.url + "/dashboard/api/summary").json()
        assert d["totals"]["requests"] == 3 and d["routing"]["models"][0]["model"] == "small"
    finally:
        gw.stop()


async def test_the_queries_run_off_the_event_loop(tmp_path: Path) -> None:
    """A slow query must not stall the loop: the reader's threads run it while a timer keeps ticking."""
    store = SQLiteLedgerStore(tmp_path / "s.db")
    reader = LedgerReader(LedgerConfig(backend="sqlite", path=str(tmp_path / "s.db")), store)
    try:
        def slow(s: Any) -> str:
            time.sleep(0.5)
            return threading.current_thread().name

        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(tick())
        name = await asyncio.wrap_future(reader.submit(slow))
        t.cancel()
        assert name.startswith("tierwise-dashboard") and ticks >= 10
    finally:
        reader.close()
        store.close()


def test_budget_status_is_the_ledgers_month_and_day_against_each_cap(upstream: FakeUpstream, tmp_path: Path) -> None:
    extra = ("budgets: {caps: {global: {daily_usd: 0.001, monthly_usd: 1000}, 'model:large': {daily_usd: 0.5}, "
             "'customer:*': {monthly_usd: 5}}}\n" + FAST)
    gw = GatewayServer(config_for(upstream.base_url, tmp_path, extra=extra)).start()
    try:
        send(gw, 3, model="chat")
        by_model = spend(gw, "model", time.time() - 3600)
        total = sum(c for _, c in by_model.values())
        d = httpx.get(gw.url + "/dashboard/api/summary").json()
        budgets = {b["scope"]: b for b in d["budgets"]}
        assert set(budgets) == {"global", "model:large"}  # customer:* has no member yet (an open gateway)
        g = budgets["global"]
        assert math.isclose(g["spent_today_usd"], total) and math.isclose(g["spent_month_usd"], total)
        assert math.isclose(g["level"], max(total / 0.001, total / 1000))
        level = g["level"]
        assert g["step"] == ("refused" if level >= 1 else "fallback_only" if level >= 0.95 else "cheaper"
                             if level >= 0.8 else None)
        assert g["projected_month_usd"] is None  # fewer than budgets.projection_min_days past days
        assert math.isclose(budgets["model:large"]["spent_today_usd"], by_model["large"][1])
        assert d["anomalies"] == []
    finally:
        gw.stop()


def test_an_unreadable_ledger_is_a_503_naming_it_and_the_page_recovers(open_gw: GatewayServer) -> None:
    assert open_gw.svc is not None
    path = Path(open_gw.svc.ledger.store.path)  # type: ignore[attr-defined]
    moved = path.with_suffix(".moved")
    path.rename(moved)
    try:
        for endpoint in ("summary", "recent"):
            err = error_of(httpx.get(f"{open_gw.url}/dashboard/api/{endpoint}"), 503)
            assert err["code"] == "ledger_unavailable" and str(path) in err["message"]
    finally:
        moved.rename(path)
    assert httpx.get(open_gw.url + "/dashboard/api/summary").status_code == 200
