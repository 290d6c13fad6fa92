"""examples/grafana-dashboard.json: a well-formed Grafana dashboard whose every PromQL expression names metrics — and
labels of those metrics — that a real gateway's /metrics exposes after traffic."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for

DASHBOARD = Path(__file__).resolve().parent.parent / "examples" / "grafana-dashboard.json"
MSG = [{"role": "user", "content": "hi"}]
EXTRA = """  casc:
    policy: cascade
    cascade:
      rungs:
        - {model: small, gate: {kind: logprob, threshold: 0.7}}
        - {model: large}
telemetry: {metrics: {attribution: [principal]}}
budgets: {caps: {global: {daily_usd: 50}}}
"""
METRIC = re.compile(r"\b(tierwise_[a-z_]+)\b")
SELECTOR = re.compile(r"\b(tierwise_[a-z_]+)\{([^}]*)\}")
BY = re.compile(r"\bby \(([^)]*)\)")


def exposed(tmp: Path, upstream: FakeUpstream) -> dict[str, set[str]]:
    """Sample name -> its label names, from a gateway that served every kind of request."""
    gw = GatewayServer(config_for(upstream.base_url, tmp, extra=EXTRA)).start()
    try:
        url = gw.base_url + "/chat/completions"
        httpx.post(url, json={"model": "auto", "messages": MSG})
        with httpx.stream("POST", url, json={"model": "label", "messages": MSG, "stream": True}) as r:
            r.read()
        upstream.set(logprob=-1.0)
        httpx.post(url, json={"model": "casc", "messages": MSG})  # an escalation
        upstream.http_error(401)
        httpx.post(url, json={"model": "chat", "messages": MSG})  # a fallback
        for _ in range(9):
            upstream.http_error(500)
        httpx.post(url, json={"model": "chat", "messages": MSG}, timeout=20)  # retries, an error
        text = httpx.get(gw.url + "/metrics").text
    finally:
        gw.stop()
    out: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


def exprs(dash: dict) -> list[str]:
    out = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    out += [v["definition"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return out


def test_dashboard_is_well_formed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in dash["templating"]["list"]}
    assert names == {"datasource", "tier"}
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            e = t["expr"]
            for a, b in ("()", "{}", "[]"):
                assert e.count(a) == e.count(b), e
            assert set(re.findall(r"\$(\w+)", e)) <= names | {"__rate_interval", "__range"}, e


def test_every_expression_uses_exposed_metrics_and_labels(tmp_path: Path, upstream: FakeUpstream) -> None:
    dash = json.loads(DASHBOARD.read_text())
    have = exposed(tmp_path, upstream)
    used: set[str] = set()
    for e in exprs(dash):
        metrics = set(METRIC.findall(e))
        assert metrics, e
        used |= metrics
        for m in metrics:
            assert m in have, f"{m} (in {e!r}) is not exposed by /metrics"
        labels = set().union(*(have[m] for m in metrics))
        for m, matchers in SELECTOR.findall(e):
            for name in re.findall(r"(\w+)\s*[=!]~?", matchers):
                assert name in have[m], f"{m} has no label {name!r} ({e!r})"
        for group in BY.findall(e):
            for name in (x.strip() for x in group.split(",")):
                assert name in labels | {"le"}, f"no label {name!r} on {sorted(metrics)} ({e!r})"
    # the panels the issue asks for are all there
    for family in ("tierwise_cost_usd_total", "tierwise_requests_total", "tierwise_request_duration_seconds_bucket",
                   "tierwise_time_to_first_token_seconds_bucket", "tierwise_escalations_total",
                   "tierwise_fallbacks_total", "tierwise_budget_used_ratio", "tierwise_model_cooldown"):
        assert family in used, family
