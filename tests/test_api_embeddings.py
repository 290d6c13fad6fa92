"""POST /v1/embeddings driven by the official ``openai`` SDK: routed to the configured model, priced by input
tokens, one ledger row per request, the gateway's keys, allow-lists and rate limits, precise errors."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.governance_env import GovEnv, gateway_config, make_key
from tests.harness import GatewayServer, config_for
from tierwise.apis.embeddings_config import EmbeddingsConfig
from tierwise.config import ConfigError, TierwiseConfig, load_config_text
from tierwise.config.schema import ModelConfig


def with_embeddings(cfg: TierwiseConfig) -> TierwiseConfig:
    """The harness config plus two embeddings models on the fake OpenAI upstream."""
    cfg.models["emb"] = ModelConfig.model_validate(
        {"provider": "fake", "upstream": "text-embedding-3-small", "price": {"input": 0.02, "output": 0}})
    cfg.models["emb-large"] = ModelConfig.model_validate(
        {"provider": "fake", "upstream": "text-embedding-3-large", "price": {"input": 0.13, "output": 0}})
    cfg.embeddings = EmbeddingsConfig(models=["emb", "emb-large"])
    return cfg


@pytest.fixture
def egw(upstream: FakeUpstream, tmp_path: Path) -> Iterator[GatewayServer]:
    gw = GatewayServer(with_embeddings(config_for(upstream.base_url, tmp_path))).start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def ec(egw: GatewayServer) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=egw.base_url, api_key="unused", max_retries=0, timeout=20)
    try:
        yield c
    finally:
        c.close()


def test_embeddings_priced_by_input_tokens_and_booked(egw: GatewayServer, ec: openai.OpenAI,
                                                      upstream: FakeUpstream) -> None:
    upstream.set(prompt_tokens=1000)
    r = ec.embeddings.create(model="emb-large", input=["first text", "second text"], dimensions=4)
    assert [d.index for d in r.data] == [0, 1] and len(r.data[0].embedding) == 4
    assert r.model == "emb-large" and r.usage.prompt_tokens == 1000
    sent = upstream.last_request
    assert sent.path == "/v1/embeddings" and sent.body == {
        "model": "text-embedding-3-large", "input": ["first text", "second text"], "dimensions": 4,
        "encoding_format": "base64"}  # the SDK asks for base64 and decodes it itself
    [row] = egw.rows()
    assert row["status"] == "ok" and row["model"] == "emb-large" and row["requested_model"] == "emb-large"
    assert (row["input_tokens"], row["output_tokens"]) == (1000, 0)
    assert row["cost_usd"] == pytest.approx(1000 * 0.13 / 1e6) and row["estimated_cost_usd"] > 0
    assert "api: openai-embeddings" in row["notes"] and row["tier"] is None


def test_auto_token_ids_and_base64_pass_through(egw: GatewayServer, upstream: FakeUpstream) -> None:
    r = httpx.post(egw.base_url + "/embeddings", timeout=20, json={
        "model": "auto", "input": [[1, 2, 3], "text"], "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "emb" and len(struct.unpack("<8f", base64.b64decode(body["data"][0]["embedding"]))) == 8
    r2 = httpx.post(egw.base_url + "/embeddings", timeout=20, json={"input": "no model given"})
    assert r2.json()["model"] == "emb"
    assert [row["model"] for row in egw.rows()] == ["emb", "emb"]


def test_usage_estimated_when_the_upstream_reports_none(egw: GatewayServer, ec: openai.OpenAI,
                                                        upstream: FakeUpstream) -> None:
    upstream.set(embeddings_usage=False)
    r = ec.embeddings.create(model="emb", input="hello world, this is a test")
    assert r.usage.prompt_tokens > 0
    [row] = egw.rows()
    assert row["input_tokens"] == r.usage.prompt_tokens and row["cost_usd"] > 0
    assert any("usage estimated" in n for n in row["notes"])


def test_retries_then_answers_with_the_same_model_only(egw: GatewayServer, ec: openai.OpenAI,
                                                       upstream: FakeUpstream) -> None:
    upstream.http_error(500)
    assert ec.embeddings.create(model="emb", input="x").data
    [row] = egw.rows()
    assert [a["outcome"] for a in row["attempts"]] == ["server", "ok"] and row["status"] == "ok"
    for _ in range(3):  # max_retries 2: three tries
        upstream.http_error(503)
    with pytest.raises(openai.InternalServerError) as exc:
        ec.embeddings.create(model="emb", input="x")
    assert exc.value.status_code == 502
    row = egw.rows()[-1]
    assert row["status"] == "error" and [a["model"] for a in row["attempts"]] == ["emb"] * 3  # never another model
    assert upstream.pending_faults == 0
    upstream.garbage_body()
    with pytest.raises(openai.InternalServerError):
        ec.embeddings.create(model="emb", input="x")
    assert egw.rows()[-1]["attempts"][0]["outcome"] == "bad_response"


BAD = [
    ({"model": "emb"}, 400, "input", "'input' is required"),
    ({"model": "emb", "input": []}, 400, "input", "(empty)"),
    ({"model": "emb", "input": ["ok", ""]}, 400, "input[1]", "empty string"),
    ({"model": "emb", "input": ["ok", {"text": "x"}]}, 400, "input[1]", "got object"),
    ({"model": "emb", "input": "x", "encoding_format": "hex"}, 400, "encoding_format", "'float' or 'base64'"),
    ({"model": "emb", "input": "x", "dimensions": 0}, 400, "dimensions", "integer >= 1"),
    ({"model": "emb", "input": "x", "stream": True}, 400, "stream", "not an embeddings field"),
    ({"model": 7, "input": "x"}, 400, "model", "must be a string"),
    ({"model": "small", "input": "x"}, 404, "model", "does not serve embeddings"),
    ({"model": "nope", "input": "x"}, 404, "model", "embeddings models: emb, emb-large"),
]


@pytest.mark.parametrize(("body", "status", "param", "text"), BAD)
def test_bad_requests(egw: GatewayServer, upstream: FakeUpstream, body: dict, status: int, param: str,
                      text: str) -> None:
    r = httpx.post(egw.base_url + "/embeddings", json=body, timeout=20)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and text in err["message"]
    assert upstream.calls_to("/v1/embeddings") == 0
    [row] = egw.rows()
    assert row["status"] == "rejected" and row["http_status"] == status


def test_hostile_bodies(egw: GatewayServer) -> None:
    deep = b'{"input": ' + b"[" * 70 + b"]" * 70 + b"}"
    huge = b'{"model": "emb", "input": "' + b"x" * (5 << 20) + b'"}'
    codes = [httpx.post(egw.base_url + "/embeddings", content=raw, headers={"content-type": "application/json"},
                        timeout=20).status_code for raw in (deep, huge, b"\xff\xfe")]
    assert codes == [400, 413, 400]
    assert [(r["status"], r["http_status"]) for r in egw.rows()] == [("rejected", 400), ("rejected", 413),
                                                                    ("rejected", 400)]


def test_no_embeddings_configured(gateway: GatewayServer) -> None:
    r = httpx.post(gateway.base_url + "/embeddings", json={"model": "x", "input": "x"}, timeout=20)
    assert r.status_code == 404 and "configure an 'embeddings:' section" in r.json()["error"]["message"]
    assert len(gateway.rows()) == 1


def test_keys_allow_lists_and_rate_limits(tmp_path: Path) -> None:
    env = GovEnv("sqlite", tmp_path)
    with FakeUpstream() as up:
        cfg = with_embeddings(gateway_config(up.base_url, tmp_path, env))
        store = env.store()
        try:
            _, key = make_key(store, "acme", allowed_models=["emb"], rpm=1)
        finally:
            store.close()
        gw = GatewayServer(cfg).start()
        try:
            anon = openai.OpenAI(base_url=gw.base_url, api_key="sk-not-a-key", max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                anon.embeddings.create(model="emb", input="x")
            c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
            with pytest.raises(openai.PermissionDeniedError):
                c.embeddings.create(model="emb-large", input="x")
            assert c.embeddings.create(model="emb", input="x").data
            with pytest.raises(openai.RateLimitError):
                c.embeddings.create(model="emb", input="x")
            rows = gw.rows()
        finally:
            gw.stop()
    assert [(r["http_status"], r["principal"]) for r in rows] == [
        (401, "unauthenticated"), (403, "acme"), (200, "acme"), (429, "acme")]


def test_config_problems(tmp_path: Path) -> None:
    text = """
providers:
  oa: {format: openai, base_url: "http://127.0.0.1:9/v1"}
  an: {format: anthropic, base_url: "http://127.0.0.1:9/v1"}
models:
  m: {provider: oa, price: {input: 1, output: 1}}
  c: {provider: an, price: {input: 1, output: 1}}
tiers:
  t: {models: [m]}
embeddings: {models: [m, c, ghost], default: other}
default_tier: t
fallback_model: m
"""
    with pytest.raises(ConfigError) as exc:
        load_config_text(text, env={})
    msg = str(exc.value)
    assert "embeddings.models[0]" in msg and "also in a tier" in msg
    assert "embeddings.models[1]" in msg and "format 'openai'" in msg
    assert "embeddings.models[2]" in msg and "unknown model 'ghost'" in msg
    assert "embeddings.default" in msg
