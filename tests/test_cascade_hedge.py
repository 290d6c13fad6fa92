"""Hedged cascades (``cascade.hedge_after_ms``) through a real gateway and the mock upstream, whose per-request
latency the test sets (a ``delay`` fault applies to the next request: the first rung's call, then the second's)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for
from tierwise.config.load import ConfigError

HEDGED = """
  hedged:
    policy: cascade
    cascade:
      hedge_after_ms: 150
      rungs:
        - {model: small, gate: {kind: logprob, threshold: 0.7}}
        - {model: large}
"""
MSG = [{"role": "user", "content": "What is 6*7?"}]
SMALL, LARGE = (100 * 0.1 + 10 * 0.4) / 1e6, (100 * 2.5 + 10 * 10) / 1e6  # real costs at 100 in / 10 out tokens


@pytest.fixture
def hgw(upstream: FakeUpstream, tmp_path: Path) -> Iterator[GatewayServer]:
    gw = GatewayServer(config_for(upstream.base_url, tmp_path, extra=HEDGED)).start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def hclient(hgw: GatewayServer) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=hgw.base_url, api_key="x", max_retries=0, timeout=20)
    yield c
    c.close()


def outcomes(row: dict) -> list[tuple[str, str]]:
    return [(a["model"], a["outcome"]) for a in row["attempts"]]


def asked(upstream: FakeUpstream) -> list[str]:
    return [r.body["model"] for r in upstream.requests if r.path.endswith("/chat/completions")]


def test_fast_first_rung_is_a_plain_cascade(hclient: openai.OpenAI, upstream: FakeUpstream,
                                            hgw: GatewayServer) -> None:
    upstream.set(logprob=-0.1, prompt_tokens=100, completion_tokens=10)  # 0.905 >= 0.7: passes
    raw = hclient.chat.completions.with_raw_response.create(model="hedged", messages=MSG)
    assert raw.headers["x-tierwise-model"] == "small"
    assert asked(upstream) == ["small-up"]
    row = hgw.rows()[-1]
    assert outcomes(row) == [("small", "ok")] and not any("hedge" in n for n in row["notes"])
    assert row["cost_usd"] == pytest.approx(SMALL, rel=1e-12)


def test_slow_first_rung_the_last_rung_serves_and_both_are_booked(hclient: openai.OpenAI, upstream: FakeUpstream,
                                                                   hgw: GatewayServer) -> None:
    upstream.set(logprob=-0.1, prompt_tokens=100, completion_tokens=10)
    upstream.delay(1.5)  # the small rung's call
    t0 = time.perf_counter()
    raw = hclient.chat.completions.with_raw_response.create(model="hedged", messages=MSG)
    took = time.perf_counter() - t0
    assert raw.headers["x-tierwise-model"] == "large" and took < 1.2  # not 1.5 s of small first
    assert asked(upstream) == ["small-up", "large-up"]
    row = hgw.rows()[-1]
    assert outcomes(row) == [("large", "ok"), ("small", "hedge_cancelled")]
    small = row["attempts"][1]
    assert small["cost_usd"] > 0 and "pre-call estimate" in small["error"]  # booked, marked as an estimate
    assert small["latency_ms"] >= 100
    assert row["cost_usd"] == pytest.approx(LARGE + small["cost_usd"], rel=1e-9)
    assert row["fallbacks"] == 0 and any("hedge: rung 1 (large) started" in n for n in row["notes"])
    assert float(raw.headers["x-tierwise-cost-usd"]) == pytest.approx(row["cost_usd"], abs=1e-10)


def test_first_rung_passes_while_the_hedge_runs(hclient: openai.OpenAI, upstream: FakeUpstream,
                                                hgw: GatewayServer) -> None:
    upstream.set(logprob=-0.1, prompt_tokens=100, completion_tokens=10)
    upstream.push_faults([{"kind": "delay", "seconds": 0.5}, {"kind": "delay", "seconds": 1.8}])  # small, large
    t0 = time.perf_counter()
    raw = hclient.chat.completions.with_raw_response.create(model="hedged", messages=MSG)
    took = time.perf_counter() - t0
    assert raw.headers["x-tierwise-model"] == "small" and took < 1.5
    row = hgw.rows()[-1]
    assert outcomes(row) == [("small", "ok"), ("large", "hedge_cancelled")]
    assert row["attempts"][0]["confidence"] == pytest.approx(0.904837, abs=1e-6)
    assert row["cost_usd"] == pytest.approx(SMALL + row["attempts"][1]["cost_usd"], rel=1e-9)
    assert row["attempts"][1]["cost_usd"] > 0


def test_first_rung_fails_its_gate_the_running_hedge_serves_sooner(hclient: openai.OpenAI, upstream: FakeUpstream,
                                                                   hgw: GatewayServer) -> None:
    upstream.set(logprob=-1.0, prompt_tokens=100, completion_tokens=10)  # 0.37 < 0.7: escalates
    upstream.push_faults([{"kind": "delay", "seconds": 1.0}, {"kind": "delay", "seconds": 1.0}])
    t0 = time.perf_counter()
    raw = hclient.chat.completions.with_raw_response.create(model="hedged", messages=MSG)
    took = time.perf_counter() - t0
    # one after the other it takes >= 2 s; hedged, the large call started 150 ms after the small one
    assert raw.headers["x-tierwise-model"] == "large" and took < 1.8
    assert raw.headers["x-tierwise-escalations"] == "1"
    row = hgw.rows()[-1]
    assert outcomes(row) == [("small", "escalated"), ("large", "ok")]
    assert row["cost_usd"] == pytest.approx(SMALL + LARGE, rel=1e-12)  # both real: both answered


def test_hedge_serves_streams(hclient: openai.OpenAI, upstream: FakeUpstream, hgw: GatewayServer) -> None:
    upstream.set(logprob=-0.1, prompt_tokens=100, completion_tokens=10)
    upstream.delay(1.5)
    t0 = time.perf_counter()
    stream = hclient.chat.completions.create(model="hedged", messages=MSG, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text and time.perf_counter() - t0 < 1.2
    row = hgw.rows()[-1]
    assert row["model"] == "large" and outcomes(row) == [("large", "ok"), ("small", "hedge_cancelled")]


def test_hedge_budget_must_be_positive(tmp_path: Path) -> None:
    bad = HEDGED.replace("hedge_after_ms: 150", "hedge_after_ms: 0")
    with pytest.raises(ConfigError, match="hedge_after_ms"):
        config_for("http://127.0.0.1:9/v1", tmp_path, extra=bad)
