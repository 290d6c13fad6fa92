"""Shadow mode through the real gateway: the candidate decides (and, sampled, is called) beside every served request,
and never delays, changes or fails it — with a candidate upstream that hangs and one that errors."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for
from tierwise.config import ConfigError, load_config_text

MSG = [{"role": "user", "content": "summarise the quarterly report please"}]


def shadow_block(call_share: float = 0.0, budget: float = 0.0, timeout_s: float = 0.5,
                 chat: str = "{models: [claude, small], policy: priority}") -> str:
    return f"""shadow:
  name: try-claude
  call_share: {call_share}
  daily_budget_usd: {budget}
  timeout_s: {timeout_s}
  tiers:
    chat: {chat}
"""


@pytest.fixture
def start(upstream: FakeUpstream, anthropic_upstream: FakeUpstream, tmp_path: Path) -> Iterator:
    gws: list[GatewayServer] = []

    def go(extra: str) -> tuple[GatewayServer, openai.OpenAI]:
        cfg = config_for(upstream.base_url, tmp_path, extra=extra, anthropic_url=anthropic_upstream.base_url)
        gw = GatewayServer(cfg).start()
        gws.append(gw)
        return gw, openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=20)

    yield go
    for gw in gws:
        gw.stop()


def shadow_rows(tmp: Path, n: int, timeout: float = 10.0) -> list[dict]:
    """The arms store's shadow records once ``n`` are there (they are written off the request path)."""
    deadline = time.monotonic() + timeout
    while True:
        conn = sqlite3.connect(tmp / "ledger.db.arms.db")
        conn.row_factory = sqlite3.Row
        try:
            rows = [dict(r) for r in conn.execute("SELECT * FROM shadow ORDER BY ts")]
        finally:
            conn.close()
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def ledger_rows(gw: GatewayServer, n: int, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = gw.rows()
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_shadow_records_the_candidates_choice_and_cost_without_calling_it(
        start, anthropic_upstream: FakeUpstream, tmp_path: Path) -> None:
    gw, client = start(shadow_block())
    for _ in range(3):
        c = client.chat.completions.create(model="chat", messages=MSG)
        assert c.model == "large"  # the incumbent still serves
    rows = shadow_rows(tmp_path, 3)
    assert len(rows) == 3
    served_ids = {r["id"] for r in gw.rows()}
    for r in rows:
        assert r["request_id"] in served_ids and r["name"] == "try-claude" and r["tier"] == "chat"
        assert (r["served_model"], r["shadow_model"], r["same"], r["called"]) == ("large", "claude", 0, 0)
        assert json.loads(r["shadow_plan"]) == ["claude", "small", "fb"]
        # estimates from the price book: claude (3/15 USD per M tokens) is dearer than large (2.5/10)
        assert r["shadow_estimated_usd"] > r["served_estimated_usd"] > 0
    assert anthropic_upstream.calls == 0  # call_share 0: decisions only
    assert all(r["principal"] != "shadow:try-claude" for r in gw.rows())


def test_a_hanging_candidate_never_delays_the_served_answer(
        start, upstream: FakeUpstream, anthropic_upstream: FakeUpstream, tmp_path: Path) -> None:
    anthropic_upstream.set(latency_s=10.0)  # the candidate's model hangs (far beyond shadow.timeout_s)
    # claude alone (its own fallback): nothing in the candidate's plan answers
    gw, client = start(shadow_block(call_share=1.0, budget=10.0, timeout_s=3.0, chat="{models: [claude], fallback: claude}"))
    t0 = time.perf_counter()
    c = client.chat.completions.create(model="chat", messages=MSG)
    served_s = time.perf_counter() - t0
    assert c.model == "large" and c.choices[0].message.content == upstream.behaviour.reply
    assert served_s < 2.0, served_s  # not held up by the hanging candidate, nor by the 3 s shadow timeout
    chunks = list(client.chat.completions.create(model="chat", messages=MSG, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == upstream.behaviour.reply
    rows = shadow_rows(tmp_path, 2)
    assert [(r["called"], r["call_status"]) for r in rows] == [(1, "timeout"), (1, "timeout")]
    assert all(2.9 < r["call_latency_ms"] / 1000 < 6.0 for r in rows)
    booked = [r for r in ledger_rows(gw, 4) if r["principal"] == "shadow:try-claude"]
    assert len(booked) == 2
    for b in booked:  # billed as shadow, at the pre-call estimate (the upstream may bill an abandoned call)
        assert b["tags"]["billing"] == "shadow" and b["tags"]["shadow_of"] in {r["request_id"] for r in rows}
        assert b["status"] == "error" and b["http_status"] == 504 and b["cost_usd"] > 0
        assert b["stream"] is False and b["tier_source"] == "shadow"
    served = [r for r in gw.rows() if r["principal"] != "shadow:try-claude"]
    assert [(r["status"], r["model"]) for r in served] == [("ok", "large"), ("ok", "large")]


def test_an_erroring_candidate_never_fails_or_changes_the_served_answer(
        start, upstream: FakeUpstream, anthropic_upstream: FakeUpstream, tmp_path: Path) -> None:
    anthropic_upstream.push_faults([{"kind": "http_error", "status": 500}] * 20)
    gw, client = start(shadow_block(call_share=1.0, budget=10.0, timeout_s=5.0))
    for _ in range(2):
        c = client.chat.completions.create(model="chat", messages=MSG)
        assert c.model == "large" and c.choices[0].message.content == upstream.behaviour.reply
    rows = shadow_rows(tmp_path, 2)
    assert len(rows) == 2
    # the candidate's plan falls back as the real executor does (claude fails, small answers): still recorded
    for r in rows:
        assert r["called"] == 1 and r["call_status"] in ("ok", "error")
    booked = [r for r in ledger_rows(gw, 4) if r["principal"] == "shadow:try-claude"]
    assert len(booked) == 2 and all(b["tags"]["billing"] == "shadow" for b in booked)
    assert any(a["model"] == "claude" and a["outcome"] != "ok" for b in booked for a in b["attempts"])
    served = [r for r in gw.rows() if r["principal"] != "shadow:try-claude"]
    assert [(r["status"], r["model"]) for r in served] == [("ok", "large"), ("ok", "large")]
    assert gw.svc is not None and gw.svc.health.cooling_down("claude", time.time()) is False


def test_shadow_calls_stop_at_their_own_budget(start, anthropic_upstream: FakeUpstream, tmp_path: Path) -> None:
    gw, client = start(shadow_block(call_share=1.0, budget=1e-9))
    client.chat.completions.create(model="chat", messages=MSG)
    (row,) = shadow_rows(tmp_path, 1)
    assert (row["called"], row["call_status"]) == (0, "skipped:budget")
    assert anthropic_upstream.calls == 0


def test_shadow_config_errors_are_precise(upstream: FakeUpstream, tmp_path: Path) -> None:
    base = config_for(upstream.base_url, tmp_path)  # a valid config to build text from
    assert base.shadow is None
    text = f"""
providers: {{fake: {{format: openai, base_url: "{upstream.base_url}", api_key: k}}}}
models: {{small: {{provider: fake, price: {{input: 1, output: 1}}}}}}
tiers: {{chat: {{models: [small]}}}}
default_tier: chat
fallback_model: small
"""
    with pytest.raises(ConfigError, match=r"shadow.call_share.*daily_budget_usd"):
        load_config_text(text + "shadow: {call_share: 0.5, tiers: {chat: {models: [small]}}}\n", env={})
    with pytest.raises(ConfigError, match=r"shadow.call_share.*\[0, 1\].*got 1.5"):
        load_config_text(text + "shadow: {call_share: 1.5, daily_budget_usd: 1, tiers: {chat: {models: [small]}}}\n",
                         env={})
    with pytest.raises(ConfigError, match=r"shadow.tiers.chat.models\[0\] \(line 7\): unknown model 'nope'"):
        load_config_text(text + "shadow: {tiers: {chat: {models: [nope]}}}\n", env={})
    with pytest.raises(ConfigError, match=r"shadow.tiers.other.*unknown tier 'other'"):
        load_config_text(text + "shadow: {tiers: {other: {models: [small]}}}\n", env={})
