"""/metrics over real HTTP: traffic through a real gateway and a fake upstream, the exposition parsed with the
Prometheus text-format parser, every value checked against the ledger rows of the same requests."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp.test_utils import make_mocked_request

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for
from tests.telemetry_util import Samples, by, scrape, total
from tierwise.gateway.app import GATEWAY_KEY
from tierwise.telemetry.endpoint import TELEMETRY_KEY

MSG = [{"role": "user", "content": "a secret prompt that must never be a label"}]
CASCADE = """  casc:
    policy: cascade
    cascade:
      rungs:
        - {model: small, gate: {kind: logprob, threshold: 0.7}}
        - {model: large}
"""
TELEMETRY = """telemetry: {metrics: {attribution: [principal]}}
budgets: {caps: {global: {daily_usd: 50, monthly_usd: 900}, "model:*": {daily_usd: 20}}}
"""


@pytest.fixture
def mgw(upstream: FakeUpstream, tmp_path: Path) -> Iterator[GatewayServer]:
    gw = GatewayServer(config_for(upstream.base_url, tmp_path, extra=CASCADE + TELEMETRY)).start()
    try:
        yield gw
    finally:
        gw.stop()


def chat(gw: GatewayServer, model: str = "auto", stream: bool = False, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": MSG, "stream": stream, **extra}
    return httpx.post(gw.base_url + "/chat/completions", json=body, timeout=20)


def ledger_views(rows: list[dict]) -> dict[str, dict]:
    """What /metrics must show, computed from the ledger rows."""
    req: Counter = Counter()
    tokens: dict[str, float] = defaultdict(float)
    cost: dict[tuple[str, str], float] = defaultdict(float)
    timed: Counter = Counter()
    ttft: Counter = Counter()
    attempts: Counter = Counter()
    retries = escalations = fallbacks = 0
    for r in rows:
        tier, model = r["tier"] or "none", r["model"] or "none"
        req[(tier, model, r["status"], str(r["http_status"]))] += 1
        for kind in ("input", "output", "cache_read", "cache_write", "reasoning"):
            tokens[kind] += r[f"{kind}_tokens"]
        if r["cost_usd"]:
            cost[(tier, model)] += r["cost_usd"]
        if r["status"] != "rejected":
            timed[(tier, model)] += 1
        if r["ttft_ms"] is not None:
            ttft[(tier, model)] += 1
        for a in r["attempts"]:
            attempts[(a["model"], a["outcome"])] += 1
            retries += bool(a.get("retry"))
        escalations += r["escalations"]
        fallbacks += r["fallbacks"]
    return {"req": dict(req), "tokens": {k: v for k, v in tokens.items() if v}, "cost": dict(cost),
            "timed": dict(timed), "ttft": dict(ttft), "attempts": dict(attempts),
            "counts": {"retries": retries, "escalations": escalations, "fallbacks": fallbacks}}


def test_metrics_equal_the_ledger(mgw: GatewayServer, upstream: FakeUpstream) -> None:
    for _ in range(3):
        assert chat(mgw).status_code == 200
    upstream.set(prompt_tokens=40, completion_tokens=6, cached_tokens=8, reasoning_tokens=2)
    with httpx.stream("POST", mgw.base_url + "/chat/completions", timeout=20, json={
            "model": "label", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200 and list(r.iter_lines())[-2] == "data: [DONE]"
    upstream.set(logprob=-1.0, prompt_tokens=100, completion_tokens=10, cached_tokens=0, reasoning_tokens=0)
    esc = chat(mgw, "casc")
    assert esc.headers["x-tierwise-escalations"] == "1"
    upstream.http_error(401)  # large refuses tierwise's key: fall back to small
    fb = chat(mgw, "chat")
    assert fb.status_code == 200 and fb.headers["x-tierwise-fallbacks"] == "1"
    for _ in range(9):  # every model of the tier, each tried three times (2 retries): the request fails
        upstream.http_error(500)
    assert chat(mgw, "chat").status_code == 502
    assert chat(mgw, "no-such-model").status_code == 404  # refused before routing

    rows = mgw.rows()
    assert len(rows) == 8
    want = ledger_views(rows)
    m = scrape(mgw.url + "/metrics")

    assert by(m, "tierwise_requests_total", "tier", "model", "status", "code") == want["req"]
    got_tokens = by(m, "tierwise_tokens_total", "kind")
    assert got_tokens == {(k,): v for k, v in want["tokens"].items()}
    assert got_tokens[("cache_read",)] == 8 and got_tokens[("reasoning",)] == 2
    got_cost = by(m, "tierwise_cost_usd_total", "tier", "model")
    assert got_cost.keys() == want["cost"].keys()
    for k, v in want["cost"].items():
        assert got_cost[k] == pytest.approx(v, rel=1e-9)
    assert by(m, "tierwise_request_duration_seconds_count", "tier", "model") == want["timed"]
    assert by(m, "tierwise_time_to_first_token_seconds_count", "tier", "model") == want["ttft"]
    assert want["ttft"] == {("label", "small"): 1}
    assert by(m, "tierwise_upstream_attempts_total", "model", "outcome") == want["attempts"]
    counts = want["counts"]
    assert counts["escalations"] == 1 and counts["fallbacks"] >= 3 and counts["retries"] >= 6
    assert total(m, "tierwise_escalations_total", tier="casc") == counts["escalations"]
    assert total(m, "tierwise_fallbacks_total") == counts["fallbacks"]
    assert total(m, "tierwise_retries_total") == counts["retries"]
    # attribution: every request belongs to the anonymous principal here
    assert by(m, "tierwise_attributed_requests_total", "dimension", "name") == {("principal", "anonymous"): 8}
    assert total(m, "tierwise_attributed_cost_usd_total") == pytest.approx(sum(r["cost_usd"] for r in rows))

    # the failing request put its models in cooldown (3 failures in a row): the gauge says so at scrape time
    cool = {labels["model"]: v for labels, v in m["tierwise_model_cooldown"]}
    assert cool == {"large": 1.0, "small": 1.0, "fb": 1.0, "thinker": 0.0}
    # budgets: read from the state backend at scrape time; every request settled, nothing reserved
    spent = sum(r["cost_usd"] for r in rows)
    assert total(m, "tierwise_budget_spent_usd", scope="global", period="day") == pytest.approx(spent)
    assert total(m, "tierwise_budget_spent_usd", scope="global", period="month") == pytest.approx(spent)
    assert total(m, "tierwise_budget_reserved_usd", scope="global") == 0
    assert total(m, "tierwise_budget_limit_usd", scope="global", period="month") == 900
    assert total(m, "tierwise_budget_used_ratio", scope="global", period="day") == pytest.approx(spent / 50)
    small = sum(a.get("cost_usd", 0) for r in rows for a in r["attempts"] if a["model"] == "small")
    assert total(m, "tierwise_budget_spent_usd", scope="model:small", period="day") == pytest.approx(small)
    assert {lb["scope"] for lb, _ in m["tierwise_budget_limit_usd"]} == {"global", "model:small", "model:large",
                                                                        "model:thinker", "model:fb"}
    assert total(m, "tierwise_ledger_healthy") == 1 and total(m, "tierwise_ledger_dropped_rows") == 0


def _series(m: Samples) -> int:
    return sum(len(v) for v in m.values())


def test_label_cardinality_is_bounded(upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = ",".join(f"p{i}:sk-key-{i}" for i in range(6))
    monkeypatch.setenv("TW_TEST_KEYS", keys)
    extra = "telemetry: {metrics: {attribution: [principal], max_attribution_values: 2}}\n"
    cfg = config_for(upstream.base_url, tmp_path, extra=extra)
    cfg.server.api_keys_env = "TW_TEST_KEYS"
    gw = GatewayServer(cfg).start()
    try:
        ids = []
        for i in range(6):  # six principals
            r = httpx.post(gw.base_url + "/chat/completions", json={"model": "auto", "messages": MSG},
                           headers={"Authorization": f"Bearer sk-key-{i}"}, timeout=20)
            ids.append(r.headers["x-tierwise-request-id"])
        before = _series(scrape(gw.url + "/metrics"))
        for i in range(30):  # hostile variety: unknown tiers, unknown models, tier names in the path
            h = {"Authorization": "Bearer sk-key-0", "X-Task": f"task-{i}"}
            httpx.post(gw.base_url + "/chat/completions", json={"model": f"model-{i}", "messages": MSG}, headers=h)
            httpx.post(f"{gw.base_url}/tiers/tier-{i}/chat/completions", json={"messages": MSG}, headers=h)
        text = httpx.get(gw.url + "/metrics").text
        m = scrape(gw.url + "/metrics")
    finally:
        gw.stop()
    names = {lb["name"] for lb, _ in m["tierwise_attributed_requests_total"]}
    assert names == {"p0", "p1", "other"}  # two principals by name, the rest collapsed
    assert total(m, "tierwise_attributed_requests_total") == 66
    assert {lb["tier"] for lb, _ in m["tierwise_requests_total"]} == {"chat", "other"}
    assert {lb["model"] for lb, _ in m["tierwise_requests_total"]} == {"large", "none"}
    assert total(m, "tierwise_requests_total", tier="other", status="rejected") == 60
    assert _series(m) - before <= 3  # 60 hostile requests added at most a couple of series
    for secret in ["task-1", "model-1", "tier-1", "secret prompt", "sk-key", *ids]:
        assert secret not in text


def test_token_and_loopback_rules(upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TW_METRICS_TOKEN", "scrape-token-0123456789")
    cfg = config_for(upstream.base_url, tmp_path, extra="telemetry: {metrics: {token_env: TW_METRICS_TOKEN}}\n")
    gw = GatewayServer(cfg).start()
    try:
        assert httpx.get(gw.url + "/metrics").status_code == 401
        bad = httpx.get(gw.url + "/metrics", headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_metrics_token"
        scrape(gw.url + "/metrics", {"Authorization": "Bearer scrape-token-0123456789"})
    finally:
        gw.stop()
    # a gateway that takes API keys and has no metrics token: loopback scrapers only
    monkeypatch.setenv("TW_TEST_KEYS", "a:sk-a")
    cfg = config_for(upstream.base_url, tmp_path / "b")
    cfg.server.api_keys_env = "TW_TEST_KEYS"
    gw = GatewayServer(cfg).start()
    try:
        scrape(gw.url + "/metrics")  # from 127.0.0.1
        tel = gw.runner.app[TELEMETRY_KEY]  # type: ignore[union-attr]

        class Transport:
            def get_extra_info(self, name: str, default: object = None) -> object:
                return ("10.1.2.3", 40000) if name == "peername" else default

        refused = tel._refused(make_mocked_request("GET", "/metrics", transport=Transport()))
        assert refused is not None and refused.status == 403
    finally:
        gw.stop()


def test_metrics_on_the_admin_listener(upstream: FakeUpstream, tmp_path: Path) -> None:
    from tierwise.gateway.admin import start_admin

    cfg = config_for(upstream.base_url, tmp_path, extra="admin: {port: 0}\n")
    gw = GatewayServer(cfg).start()
    try:
        assert chat(gw).status_code == 200
        assert httpx.get(gw.url + "/metrics").status_code == 404  # not on the public listener
        runner, port = gw._run(start_admin(cfg, "admin-key-0123456789", port=0,
                                           gateway=gw.runner.app[GATEWAY_KEY]))  # type: ignore[union-attr]
        try:
            m = scrape(f"http://127.0.0.1:{port}/metrics")
            assert total(m, "tierwise_requests_total", status="ok") == 1
        finally:
            gw._run(runner.cleanup())
    finally:
        gw.stop()


def test_metrics_off(upstream: FakeUpstream, tmp_path: Path) -> None:
    cfg = config_for(upstream.base_url, tmp_path, extra="telemetry: {metrics: {enabled: false}}\n")
    gw = GatewayServer(cfg).start()
    try:
        assert chat(gw).status_code == 200
        assert httpx.get(gw.url + "/metrics").status_code == 404
        assert gw.svc is not None and gw.svc.observers == []
    finally:
        gw.stop()
