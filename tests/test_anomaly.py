"""Spend anomalies: a synthetic runaway client against a learned baseline, with a real webhook receiver."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web

from tests.fakes.upstream import FakeUpstream
from tests.harness import config_for
from tierwise.config.schema import AnomalyConfig
from tierwise.errors import APIError
from tierwise.governance import Principal
from tierwise.governance.anomaly import AnomalyDetector
from tierwise.routing.engine import RouteRequest
from tierwise.service import Tierwise

MSG = {"messages": [{"role": "user", "content": "hi"}]}


def test_baseline_ignores_noise_and_flags_a_spike_once_per_bucket() -> None:
    d = AnomalyDetector(AnomalyConfig(bucket_s=300, min_buckets=12, k=6, min_usd=0.5))
    t = 1_000_000 * 300.0
    for i in range(24):  # a day of normal traffic: $0.2-$0.4 per bucket
        for _ in range(2 + i % 3):
            assert d.observe("team", "m", 0.1, t + i * 300) is None
    spike = t + 24 * 300
    alerts = [d.observe("team", "m", 0.5, spike + j) for j in range(10)]  # $5 in one bucket: a runaway loop
    raised = [a for a in alerts if a is not None]
    assert len(raised) == 1 and raised[0].principal == "team" and raised[0].bucket_spend_usd > raised[0].threshold_usd
    assert raised[0].baseline_median_usd == pytest.approx(0.3) and raised[0].action == "recorded"
    assert d.observe("other", "m", 5.0, spike) is None  # no history yet: nothing to compare against
    assert d.observe("team", "m", 0.3, spike + 300) is None  # the next bucket starts afresh


async def test_runaway_client_alerts_the_webhook_and_is_held_to_the_fallback(tmp_path: Path) -> None:
    got: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    with FakeUpstream() as up:
        up.set(prompt_tokens=1000, completion_tokens=1000)  # large: $0.0125 a request
        cfg = config_for(up.base_url, tmp_path)
        cfg.anomalies = AnomalyConfig(bucket_s=1, min_buckets=5, k=6, min_usd=0.05, tighten="fallback_only",
                                      tighten_for_s=60, webhook_url=f"http://127.0.0.1:{port}/hook")
        svc = Tierwise(cfg)
        try:
            p = Principal("runaway")
            loop = asyncio.get_running_loop()
            start = loop.time()
            while loop.time() - start < 5.5:  # a calm baseline: about one request a second
                await svc.complete(await svc.begin(dict(MSG), RouteRequest(task_header="chat"), p))
                await asyncio.sleep(0.9)
            for _ in range(12):  # then a loop gone wild: 12 requests at once
                call = await svc.begin(dict(MSG), RouteRequest(task_header="chat"), p)
                await svc.complete(call)
            assert svc.anomalies.alerts and svc.anomalies.alerts[-1].action == "fallback_only"
            held = await svc.begin(dict(MSG), RouteRequest(task_header="chat"), p)
            assert held.decision.candidates == ["fb"] and any("spend anomaly" in n for n in held.record.notes)
            await svc.complete(held)
            other = await svc.begin(dict(MSG), RouteRequest(task_header="chat"), Principal("calm"))
            assert other.decision.candidates[0] == "large"  # only the runaway principal is held
        finally:
            await svc.aclose()  # waits for the webhook
            await runner.cleanup()
    assert got and got[0]["type"] == "tierwise.spend_anomaly" and got[0]["principal"] == "runaway"
    lines = [json.loads(x) for x in Path(f"{tmp_path / 'ledger.db'}.alerts.jsonl").read_text().splitlines()]
    assert lines[0]["principal"] == "runaway" and lines[0]["action"] == "fallback_only"


async def test_block_holds_the_principal_with_429(tmp_path: Path) -> None:
    with FakeUpstream() as up:
        cfg = config_for(up.base_url, tmp_path)
        cfg.anomalies = AnomalyConfig(tighten="block", tighten_for_s=120)
        svc = Tierwise(cfg)
        try:
            svc.anomalies._held["leaked-key"] = 10**12  # as an alert on this principal would have set it
            with pytest.raises(APIError) as e:
                await svc.begin(dict(MSG), RouteRequest(), Principal("leaked-key"))
            assert e.value.status == 429 and e.value.code == "spend_anomaly"
            assert e.value.headers == {"Retry-After": "120"}
        finally:
            await svc.aclose()
