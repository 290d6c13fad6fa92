"""Issue 8, the upstream side: nothing an upstream says leaks a secret, operator errors fall back, retries leave the
fallback its share of the deadline, and fallbacks are counted as models passed over for another.

Everything goes through real loopback HTTP: the gateway (tests/harness.py) in front of two fake upstreams, ``a`` (the
primary ``first`` in OpenAI format and ``claude`` in Anthropic format) and ``b`` (the healthy ``second``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer
from tierwise.config import load_config_text
from tierwise.errors import from_upstream
from tierwise.providers.errors import client_detail
from tierwise.routing.executor import count_fallbacks
from tierwise.types import Attempt, ErrorKind, UpstreamError

SECRET = "upstreamF-SECRET-q8Zr2LmX0vNw"
MSG = [{"role": "user", "content": "hello there"}]


def config_text(a: str, b: str, tmp: Path, *, deadline: float = 10, timeout: float = 2, retry_extra: str = "") -> str:
    return f"""
server: {{request_deadline_s: {deadline}}}
ledger: {{backend: sqlite, path: "{tmp / 'ledger.db'}", flush_interval_ms: 20}}
retry: {{max_retries: 2, base_delay_ms: 5, max_delay_ms: 20, max_retry_after_s: 2, cooldown_failures: 3,
         cooldown_s: 30{retry_extra}}}
providers:
  prim: {{format: openai, base_url: "{a}", api_key: sk-test-prim-key-1234, timeout_s: {timeout}}}
  anth: {{format: anthropic, base_url: "{a}", api_key: test-anthropic-key-1234, timeout_s: {timeout}}}
  sec: {{format: openai, base_url: "{b}", api_key: sk-test-sec-key-5678, timeout_s: {timeout}}}
models:
  first: {{provider: prim, upstream: first-up, price: {{input: 1, output: 2}}}}
  claude: {{provider: anth, upstream: claude-up, price: {{input: 3, output: 15}}}}
  second: {{provider: sec, upstream: second-up, price: {{input: 0.1, output: 0.2}}}}
tiers:
  chat: {{models: [first, second]}}
  anth_chat: {{models: [claude, second]}}
  casc:
    policy: cascade
    cascade:
      rungs:
        - {{model: first, gate: {{kind: validator, regex: "."}}}}
        - {{model: second}}
default_tier: chat
fallback_model: second
"""


GatewayFactory = Callable[..., GatewayServer]


@pytest.fixture
def a(upstream: FakeUpstream) -> FakeUpstream:
    return upstream


@pytest.fixture
def b(anthropic_upstream: FakeUpstream) -> FakeUpstream:
    anthropic_upstream.set(reply="fallback answer")
    return anthropic_upstream


@pytest.fixture
def make_gw(a: FakeUpstream, b: FakeUpstream, tmp_path: Path) -> Iterator[GatewayFactory]:
    started: list[GatewayServer] = []

    def make(**kw: object) -> GatewayServer:
        cfg = load_config_text(config_text(a.base_url, b.base_url, tmp_path / str(len(started)), **kw), env={})
        (tmp_path / str(len(started))).mkdir()
        gw = GatewayServer(cfg).start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture
def gw(make_gw: GatewayFactory) -> GatewayServer:
    return make_gw()


def post(gw: GatewayServer, body: dict) -> httpx.Response:
    return httpx.post(gw.base_url + "/chat/completions", json=body, timeout=20)


def answer(r: httpx.Response) -> str:
    """The answer's text, from a JSON completion or an SSE stream."""
    if not r.headers["content-type"].startswith("text/event-stream"):
        return r.json()["choices"][0]["message"]["content"]
    chunks = [orjson.loads(ln[6:]) for ln in r.text.splitlines() if ln.startswith("data: {")]
    return "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices"))


def outcomes(row: dict) -> list[tuple[str, str]]:
    return [(x["model"], x["outcome"]) for x in row["attempts"]]


def assert_no_secret(r: httpx.Response, gw: GatewayServer, caplog: pytest.LogCaptureFixture) -> None:
    """The secret is nowhere: response body, response headers, ledger rows, log records."""
    parts = ["upstreamF", "q8Zr2LmX0vNw", "SECRET"]
    places = {
        "body": r.text,
        "headers": str(list(r.headers.items())),
        "ledger": orjson.dumps(gw.rows()).decode(),
        "logs": caplog.text + "".join(str(rec.args) + str(rec.exc_info) for rec in caplog.records),
    }
    for where, text in places.items():
        for part in parts:
            assert part not in text, f"secret fragment {part!r} leaked into the {where}"


# ---- 1. no upstream text reaches the client, the ledger or the logs -----------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_401_with_secret_falls_back_and_leaks_nothing(gw: GatewayServer, a: FakeUpstream, b: FakeUpstream,
                                                               caplog: pytest.LogCaptureFixture, stream: bool) -> None:
    caplog.set_level(logging.DEBUG)
    a.http_error(401, body={"error": {"message": f"Incorrect API key provided: {SECRET}. You can find your API key "
                                                 "at https://platform.openai.com/account/api-keys.",
                                      "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}})
    r = post(gw, {"model": "chat", "messages": MSG, "stream": stream})
    assert r.status_code == 200, r.text
    assert answer(r) == "fallback answer"
    assert r.headers["x-tierwise-model"] == "second" and r.headers["x-tierwise-fallbacks"] == "1"
    assert a.calls == 1  # a refused key is not retried on the same model
    row = gw.rows()[-1]
    assert outcomes(row)[:2] == [("first", "auth"), ("second", "ok")] and row["fallbacks"] == 1
    assert row["attempts"][0]["error"] == "prim: HTTP 401 (type=invalid_request_error, code=invalid_api_key)"
    assert_no_secret(r, gw, caplog)


def test_upstream_401_on_the_only_model_is_a_clear_502(gw: GatewayServer, a: FakeUpstream,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    a.http_error(401, body={"error": {"message": f"Incorrect API key provided: {SECRET}", "type": "invalid_request_error",
                                      "code": "invalid_api_key"}})
    r = post(gw, {"model": "first", "messages": MSG})  # a concrete model: no fallback
    assert r.status_code == 502
    err = r.json()["error"]
    assert (err["type"], err["code"]) == ("upstream_error", "upstream_auth_failed")
    assert "refused tierwise's credentials" in err["message"] and "model 'first'" in err["message"]
    assert "HTTP 401" in err["message"] and "Incorrect API key" not in err["message"]
    assert r.headers["x-tierwise-fallbacks"] == "0"
    row = gw.rows()[-1]
    assert (row["status"], row["http_status"], row["fallbacks"]) == ("error", 502, 0)
    assert outcomes(row) == [("first", "auth")] and a.calls == 1
    assert_no_secret(r, gw, caplog)


def test_401_counts_toward_the_models_cooldown(gw: GatewayServer, a: FakeUpstream) -> None:
    for _ in range(3):
        a.http_error(401)
        assert post(gw, {"model": "chat", "messages": MSG}).status_code == 200
    assert any("cooldown" in n for n in gw.rows()[-1]["notes"])
    post(gw, {"model": "chat", "messages": MSG})
    assert outcomes(gw.rows()[-1]) == [("second", "ok")]  # first is cooling down: tried last, not at all here


def test_upstream_404_model_not_found_falls_back(gw: GatewayServer, a: FakeUpstream) -> None:
    a.http_error(404, body={"error": {"message": "The model `first-up` does not exist", "type": "invalid_request_error",
                                      "code": "model_not_found"}})
    r = post(gw, {"model": "chat", "messages": MSG})
    assert r.status_code == 200 and r.headers["x-tierwise-model"] == "second"
    assert outcomes(gw.rows()[-1]) == [("first", "not_found"), ("second", "ok")]
    a.http_error(404)
    r = post(gw, {"model": "first", "messages": MSG})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_model_not_found"


def test_upstream_400_with_secret_keeps_only_identifiers(gw: GatewayServer, a: FakeUpstream,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    a.http_error(400, body={"error": {"message": f"Invalid header value {SECRET} for this request",
                                      "type": "invalid_request_error", "param": "messages", "code": "bad_value"}})
    r = post(gw, {"model": "chat", "messages": MSG})
    assert r.status_code == 400  # the caller's fault: returned, not retried, no fallback
    err = r.json()["error"]
    assert (err["code"], err["param"]) == ("upstream_invalid_request", "messages")
    assert err["message"] == ("upstream rejected the request (model 'first', prim: HTTP 400 (type=invalid_request_error,"
                              " code=bad_value))")
    assert a.calls == 1 and gw.rows()[-1]["fallbacks"] == 0
    assert_no_secret(r, gw, caplog)


def test_upstream_400_plain_explanation_reaches_the_caller(gw: GatewayServer, a: FakeUpstream) -> None:
    a.http_error(400, body={"type": "error", "error": {"type": "invalid_request_error",
                                                       "message": "prompt is too long: 210000 tokens > 200000 maximum"}})
    r = post(gw, {"model": "anth_chat", "messages": MSG})
    assert r.status_code == 400
    assert r.json()["error"]["message"].endswith(": prompt is too long: 210000 tokens > 200000 maximum")


@pytest.mark.parametrize("body", [
    {"error": {"message": f"internal error while checking key {SECRET}", "type": "server_error"}},
    f"<html>upstream proxy error; auth={SECRET}</html>",
])
def test_upstream_500_with_secret(gw: GatewayServer, a: FakeUpstream, b: FakeUpstream, body: object,
                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        a.http_error(500, body=body)
    r = post(gw, {"model": "chat", "messages": MSG})
    assert r.status_code == 200 and r.headers["x-tierwise-model"] == "second"
    assert_no_secret(r, gw, caplog)
    for _ in range(3):
        a.http_error(500, body=body)
        b.http_error(503, body=body)
    r = post(gw, {"model": "chat", "messages": MSG})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_server_error"
    assert r.headers["x-tierwise-fallbacks"] == "1"  # two models tried, both failed: one fallback
    assert gw.rows()[-1]["fallbacks"] == 1
    assert_no_secret(r, gw, caplog)


def test_anthropic_401_with_secret_falls_back(gw: GatewayServer, a: FakeUpstream,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    a.http_error(401, body={"type": "error", "error": {"type": "authentication_error",
                                                       "message": f"invalid x-api-key: {SECRET}"}})
    r = post(gw, {"model": "anth_chat", "messages": MSG})
    assert r.status_code == 200 and r.headers["x-tierwise-model"] == "second"
    row = gw.rows()[-1]
    assert outcomes(row) == [("claude", "auth"), ("second", "ok")]
    assert row["attempts"][0]["error"] == "anth: HTTP 401 (type=authentication_error)"
    assert_no_secret(r, gw, caplog)


def test_anthropic_error_event_mid_stream_with_secret(gw: GatewayServer, a: FakeUpstream,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def ev(name: str, obj: dict) -> str:
        return f"event: {name}\ndata: {orjson.dumps(obj).decode()}\n\n"

    sse = (ev("message_start", {"type": "message_start", "message": {"id": "msg_1", "model": "claude-up",
                                                                      "usage": {"input_tokens": 5}}})
           + ev("content_block_start", {"type": "content_block_start", "index": 0,
                                        "content_block": {"type": "text", "text": ""}})
           + ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": "Hi"}})
           + ev("error", {"type": "error", "error": {"type": "overloaded_error",
                                                     "message": f"Overloaded (key {SECRET})"}}))
    a.raw_response(sse, content_type="text/event-stream")
    r = post(gw, {"model": "claude", "messages": MSG, "stream": True})
    assert r.status_code == 200 and "Hi" in r.text
    assert "upstream_stream_interrupted" in r.text and "type=overloaded_error" in r.text
    assert gw.rows()[-1]["status"] == "error"
    assert_no_secret(r, gw, caplog)


def test_error_object_in_a_200_with_secret(gw: GatewayServer, a: FakeUpstream,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        a.raw_response({"error": {"message": f"bad key {SECRET}", "type": "server_error"}})
    r = post(gw, {"model": "chat", "messages": MSG})
    assert r.status_code == 200 and r.headers["x-tierwise-model"] == "second"
    assert_no_secret(r, gw, caplog)


def test_client_detail_filter() -> None:
    ok = [
        "prompt is too long: 210000 tokens > 200000 maximum",
        "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
        "max_tokens is too large: 100000. This model supports at most 4096 completion tokens.",
        "Invalid 'messages[0].role': value must be one of system, user.",
    ]
    refused = [
        f"Incorrect API key provided: {SECRET}",
        "Incorrect API key provided: sk-proj-abc",  # talks about keys
        "bad value zq8x7Yb1",  # letters mixed with digits
        "bad value Abcdefghijklmnopqrstuvwxyz",  # a long run
        "see https://example.com",
        "line one\nline two",
        "caf\u00e9 is not ascii",
        "x" * 300,
    ]
    for text in ok:
        assert client_detail({"message": text}) == (text, None), text
    for text in refused:
        assert client_detail({"message": text})[0] is None, text
    assert client_detail({"param": "messages[2].content"})[1] == "messages[2].content"
    assert client_detail({"param": "Bearer abc123"})[1] is None
    assert client_detail(None) == (None, None)


def test_from_upstream_never_uses_the_body_text_for_operator_errors() -> None:
    err = UpstreamError(ErrorKind.AUTH, "prim: HTTP 403 (type=permission_error)", status=403,
                        body={"message": f"key {SECRET} has no access", "type": "permission_error"})
    api = from_upstream(err, [Attempt("first", "auth", 403).as_dict()])
    assert api.status == 502 and SECRET not in orjson.dumps(api.body()).decode()
    assert "refused tierwise's credentials" in api.message and "model 'first'" in api.message


# ---- 2. retries leave the fallback its turn ---------------------------------------------------------------------

FAST = {"deadline": 1.0, "timeout": 0.4}  # old behaviour: three 0.4 s timeouts > 1 s deadline -> 504


@pytest.mark.parametrize("stream", [False, True])
def test_slow_primary_leaves_the_fallback_its_turn(make_gw: GatewayFactory, a: FakeUpstream, stream: bool) -> None:
    gw = make_gw(**FAST)
    a.set(ttft_s=5)  # the role chunk (streams) comes at once, the first token never within the timeout
    t0 = time.perf_counter()
    r = post(gw, {"model": "chat", "messages": MSG, "stream": stream})
    elapsed = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    assert answer(r) == "fallback answer"
    assert r.headers["x-tierwise-model"] == "second" and elapsed < 1.0
    row = gw.rows()[-1]
    assert outcomes(row)[0] == ("first", "timeout") and ("second", "ok") in outcomes(row)
    assert row["fallbacks"] == 1 and row["status"] == "ok"
    assert any("first: retry 1 not started" in n for n in row["notes"])


def test_slow_primary_in_a_cascade_escalates_within_the_deadline(make_gw: GatewayFactory, a: FakeUpstream) -> None:
    gw = make_gw(**FAST)
    a.set(ttft_s=5)
    r = post(gw, {"model": "casc", "messages": MSG})
    assert r.status_code == 200 and r.headers["x-tierwise-model"] == "second"
    assert outcomes(gw.rows()[-1]) == [("first", "timeout"), ("second", "ok")]


def test_retries_still_happen_when_there_is_time(make_gw: GatewayFactory, a: FakeUpstream) -> None:
    gw = make_gw(deadline=3.0, timeout=0.4)  # budget 2.6 s: all three tries fit, then the fallback
    a.set(ttft_s=5)
    r = post(gw, {"model": "chat", "messages": MSG})
    assert r.status_code == 200
    assert outcomes(gw.rows()[-1]) == [("first", "timeout")] * 3 + [("second", "ok")]


def test_zero_reserve_restores_the_old_greedy_retries(make_gw: GatewayFactory, a: FakeUpstream) -> None:
    gw = make_gw(**FAST, retry_extra=", fallback_reserve_s: 0")
    a.set(ttft_s=5)
    r = post(gw, {"model": "chat", "messages": MSG})
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
    assert [m for m, _ in outcomes(gw.rows()[-1])] == ["first"] * 3


# ---- 3. fallbacks count the models passed over for another ------------------------------------------------------


def test_count_fallbacks() -> None:
    def att(*pairs: tuple[str, str]) -> list[Attempt]:
        return [Attempt(m, o) for m, o in pairs]

    assert count_fallbacks(att(("a", "server")), None) == 0  # tried one, failed: nothing fallen back to
    assert count_fallbacks(att(("a", "server"), ("a", "server")), None) == 0
    assert count_fallbacks(att(("a", "server"), ("b", "timeout")), None) == 1  # tried two, both failed
    assert count_fallbacks(att(("a", "auth"), ("b", "server"), ("c", "server")), None) == 2
    assert count_fallbacks(att(("a", "server"), ("a", "ok")), "a") == 0  # retried and served
    assert count_fallbacks(att(("a", "rate_limit"), ("b", "ok")), "b") == 1
    assert count_fallbacks(att(("a", "skipped_cooldown"), ("b", "ok")), "b") == 1
    assert count_fallbacks(att(("a", "server"), ("b", "skipped_cooldown")), None) == 0  # b was never tried
    assert count_fallbacks(att(("a", "escalated"), ("b", "ok")), "b") == 0  # an escalation is not a fallback
    assert count_fallbacks(att(("a", "ok"), ("v", "verifier"), ("a", "escalated"), ("b", "ok")), "b") == 0
    assert count_fallbacks(att(("a", "auth")), "b") == 1  # a stream's headers: b serves, its attempt not booked yet
