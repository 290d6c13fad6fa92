"""Cascades over real loopback HTTP: each gate really decides, costs add up over every rung, gate errors escalate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for

CASCADES = """
  casc_lp:
    policy: cascade
    cascade:
      rungs:
        - {model: small, gate: {kind: logprob, threshold: 0.7}}
        - {model: large}
  casc_vote:
    policy: cascade
    cascade:
      rungs:
        - {model: small, gate: {kind: vote, threshold: 0.6, samples: 5, extract: number}}
        - {model: large}
  casc_verify:
    policy: cascade
    cascade:
      rungs:
        - {model: small, gate: {kind: verifier, threshold: 0.5, verifier_model: fb}}
        - {model: large}
  casc_json:
    policy: cascade
    cascade:
      rungs:
        - {model: small, gate: {kind: validator, json_schema: {type: object, required: [label]}}}
        - {model: large}
  casc_stream_fast:
    policy: cascade
    cascade:
      stream_first_rung: true
      rungs:
        - {model: small, gate: {kind: logprob, threshold: 0.99}}
        - {model: large}
"""
MSG = [{"role": "user", "content": "What is 6*7?"}]


@pytest.fixture
def cgw(upstream: FakeUpstream, tmp_path: Path) -> Iterator[GatewayServer]:
    gw = GatewayServer(config_for(upstream.base_url, tmp_path, extra=CASCADES)).start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def cclient(cgw: GatewayServer) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=cgw.base_url, api_key="x", max_retries=0, timeout=20)
    yield c
    c.close()


def by_model(upstream: FakeUpstream) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in upstream.requests:
        if r.path.endswith("/chat/completions"):
            out[r.body["model"]] = out.get(r.body["model"], 0) + 1
    return out


def test_logprob_gate_passes_confident_answer(cclient: openai.OpenAI, upstream: FakeUpstream,
                                              cgw: GatewayServer) -> None:
    upstream.set(logprob=-0.1, prompt_tokens=100, completion_tokens=10)  # exp(-0.1) = 0.905 >= 0.7
    raw = cclient.chat.completions.with_raw_response.create(model="casc_lp", messages=MSG)
    assert raw.headers["x-tierwise-model"] == "small" and raw.headers["x-tierwise-escalations"] == "0"
    assert upstream.last_request.body["logprobs"] is True
    row = cgw.rows()[-1]
    assert row["attempts"][0]["confidence"] == pytest.approx(0.904837, abs=1e-6)
    assert row["cost_usd"] == pytest.approx((100 * 0.1 + 10 * 0.4) / 1e6, rel=1e-12)


def test_logprob_gate_escalates_and_costs_add_up(cclient: openai.OpenAI, upstream: FakeUpstream,
                                                 cgw: GatewayServer) -> None:
    upstream.set(logprob=-1.0, prompt_tokens=100, completion_tokens=10)  # exp(-1) = 0.37 < 0.7
    raw = cclient.chat.completions.with_raw_response.create(model="casc_lp", messages=MSG)
    assert raw.headers["x-tierwise-model"] == "large" and raw.headers["x-tierwise-escalations"] == "1"
    assert by_model(upstream) == {"small-up": 1, "large-up": 1}
    row = cgw.rows()[-1]
    assert [(a["model"], a["outcome"]) for a in row["attempts"]] == [("small", "escalated"), ("large", "ok")]
    assert (row["escalations"], row["fallbacks"]) == (1, 0)  # an escalation is not a fallback
    assert raw.headers["x-tierwise-fallbacks"] == "0"
    small, large = (100 * 0.1 + 10 * 0.4) / 1e6, (100 * 2.5 + 10 * 10) / 1e6
    assert row["cost_usd"] == pytest.approx(small + large, rel=1e-12)
    assert float(raw.headers["x-tierwise-cost-usd"]) == pytest.approx(small + large, abs=1e-10)


def test_vote_gate_uses_agreement_and_serves_majority(cclient: openai.OpenAI, upstream: FakeUpstream,
                                                      cgw: GatewayServer) -> None:
    answers = ["The answer is 42", "so 42", "I think 41", "42", "#### 42"]
    upstream.set(reply=lambda body: answers[body.get("_sample", 0)])
    c = cclient.chat.completions.create(model="casc_vote", messages=MSG)
    assert c.model == "small" and "42" in c.choices[0].message.content and len(c.choices) == 1
    sent = [r.body for r in upstream.requests if r.body.get("model") == "small-up"][-1]
    assert sent["n"] == 5 and sent["temperature"] == 0.8
    assert cgw.rows()[-1]["attempts"][0]["confidence"] == pytest.approx(0.8)
    answers[:] = ["41", "42", "43", "44", "42"]  # agreement 0.4 < 0.6: escalate
    c = cclient.chat.completions.create(model="casc_vote", messages=MSG)
    assert c.model == "large"


def test_verifier_gate(cclient: openai.OpenAI, upstream: FakeUpstream, cgw: GatewayServer) -> None:
    def reply(body: dict) -> str:
        return verdict[0] if body["model"] == "fb-up" else "Paris"

    verdict = ["Yes"]
    upstream.set(reply=reply)
    c = cclient.chat.completions.create(model="casc_verify", messages=MSG)
    assert c.model == "small"
    judge = [r.body for r in upstream.requests if r.body.get("model") == "fb-up"][-1]
    assert "Proposed answer:\nParis" in judge["messages"][0]["content"]
    row = cgw.rows()[-1]
    assert [a["outcome"] for a in row["attempts"]] == ["ok", "verifier"]
    assert row["cost_usd"] == pytest.approx(sum(a["cost_usd"] for a in row["attempts"]), rel=1e-12)
    verdict[0] = "No, that is wrong."
    c = cclient.chat.completions.create(model="casc_verify", messages=MSG)
    assert c.model == "large"


def test_validator_gate_and_refusal(cclient: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.set(reply=lambda b: '{"label": "billing"}' if b["model"] == "small-up" else "large says hi")
    assert cclient.chat.completions.create(model="casc_json", messages=MSG).model == "small"
    upstream.set(reply=lambda b: '{"other": 1}' if b["model"] == "small-up" else "large says hi")
    assert cclient.chat.completions.create(model="casc_json", messages=MSG).model == "large"
    upstream.set(reply=lambda b: "I'm sorry, but I can't help with that." if b["model"] == "small-up" else "ok")
    assert cclient.chat.completions.create(model="casc_json", messages=MSG).model == "large"


def test_gate_error_escalates_never_passes(cclient: openai.OpenAI, upstream: FakeUpstream,
                                           cgw: GatewayServer) -> None:
    # the verifier answers with no verdict: the gate cannot judge, so the cascade escalates
    upstream.set(reply=lambda b: "maybe?" if b["model"] == "fb-up" else "Paris")
    c = cclient.chat.completions.create(model="casc_verify", messages=MSG)
    assert c.model == "large"
    assert any("gate on small failed" in n for n in cgw.rows()[-1]["notes"])
    # the verifier's upstream fails outright (after its retries): escalate as well
    upstream.set(reply=lambda b: "Paris")
    upstream.delay(0)  # the small rung's call: served normally
    for _ in range(3):
        upstream.http_error(500)  # the verifier call and its two retries
    c = cclient.chat.completions.create(model="casc_verify", messages=MSG)
    assert c.model == "large"
    row = cgw.rows()[-1]
    assert [(a["model"], a["outcome"]) for a in row["attempts"]] == [
        ("small", "escalated"), ("fb", "server"), ("fb", "server"), ("fb", "server"), ("large", "ok")]


def test_empty_or_truncated_answer_always_escalates(cclient: openai.OpenAI, upstream: FakeUpstream,
                                                     cgw: GatewayServer) -> None:
    upstream.set(logprob=-0.01)
    upstream.empty_length()
    c = cclient.chat.completions.create(model="casc_lp", messages=MSG)
    assert c.model == "large"
    assert any("finish_reason=length" in n for n in cgw.rows()[-1]["notes"])


def test_failed_rung_escalates(cclient: openai.OpenAI, upstream: FakeUpstream, cgw: GatewayServer) -> None:
    for _ in range(3):
        upstream.http_error(503)
    upstream.set(logprob=-0.01)
    c = cclient.chat.completions.create(model="casc_lp", messages=MSG)
    assert c.model == "large" and cgw.rows()[-1]["escalations"] == 1


def test_streaming_cascade_streams_gated_answer(cgw: GatewayServer, upstream: FakeUpstream) -> None:
    upstream.set(logprob=-1.0, reply=lambda b: "small answer" if b["model"] == "small-up" else "the large answer",
                 prompt_tokens=50, completion_tokens=5)
    body = {"model": "casc_lp", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", cgw.base_url + "/chat/completions", json=body, timeout=10) as r:
        events = [orjson.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == "the large answer"
    assert all(r.body.get("stream") is not True for r in upstream.requests)  # rungs ran non-streaming
    assert events[-1]["usage"]["completion_tokens"] == 5  # the served rung's usage
    row = cgw.rows()[-1]
    assert row["escalations"] == 1 and row["status"] == "ok"
    assert row["cost_usd"] == pytest.approx((50 * 0.1 + 5 * 0.4 + 50 * 2.5 + 5 * 10) / 1e6, rel=1e-12)


def test_stream_first_rung_streams_live_without_gate(cgw: GatewayServer, upstream: FakeUpstream) -> None:
    upstream.set(logprob=-1.0, reply="fast small answer")
    body = {"model": "casc_stream_fast", "messages": MSG, "stream": True}
    with httpx.stream("POST", cgw.base_url + "/chat/completions", json=body, timeout=10) as r:
        assert r.headers["x-tierwise-model"] == "small"
        list(r.iter_lines())
    assert upstream.last_request.body["stream"] is True
    assert any("stream_first_rung" in n for n in cgw.rows()[-1]["notes"])
