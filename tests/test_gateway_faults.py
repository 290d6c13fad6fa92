"""Resilience end to end: retries, Retry-After, timeouts, fallbacks, cooldowns, mid-stream failures, bad input."""

from __future__ import annotations

import logging
import socket
import time

import httpx
import openai
import orjson
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer
from tests.schemas import validate

MSG = [{"role": "user", "content": "the secret prompt text 7f3a"}]


def outcomes(row: dict) -> list[tuple[str, str]]:
    return [(a["model"], a["outcome"]) for a in row["attempts"]]


def test_500_is_retried_then_served(client: openai.OpenAI, upstream: FakeUpstream, gateway: GatewayServer) -> None:
    upstream.http_error(500)
    c = client.chat.completions.create(model="chat", messages=MSG)
    assert c.model == "large"
    row = gateway.rows()[-1]
    assert outcomes(row) == [("large", "server"), ("large", "ok")]
    assert row["fallbacks"] == 0 and row["status"] == "ok"


def test_429_retry_after_is_honoured(client: openai.OpenAI, upstream: FakeUpstream, gateway: GatewayServer) -> None:
    upstream.http_error(429, retry_after=0.3)
    t0 = time.perf_counter()
    c = client.chat.completions.create(model="chat", messages=MSG)
    assert time.perf_counter() - t0 >= 0.3
    assert c.model == "large"
    assert outcomes(gateway.rows()[-1]) == [("large", "rate_limit"), ("large", "ok")]


def test_long_retry_after_falls_back_instead_of_waiting(client: openai.OpenAI, upstream: FakeUpstream,
                                                        gateway: GatewayServer) -> None:
    upstream.http_error(429, retry_after=60)
    t0 = time.perf_counter()
    c = client.chat.completions.create(model="chat", messages=MSG)
    assert time.perf_counter() - t0 < 2
    assert c.model == "small"
    row = gateway.rows()[-1]
    assert outcomes(row) == [("large", "rate_limit"), ("small", "ok")] and row["fallbacks"] == 1


def test_timeout_then_fallback(client: openai.OpenAI, upstream: FakeUpstream, gateway: GatewayServer) -> None:
    for _ in range(3):  # large: first try + 2 retries all time out (provider timeout 2 s)
        upstream.delay(3)
    c = client.chat.completions.create(model="chat", messages=MSG)
    assert c.model == "small"
    row = gateway.rows()[-1]
    assert outcomes(row) == [("large", "timeout")] * 3 + [("small", "ok")]
    assert row["fallbacks"] == 1


def test_garbage_and_dropped_connection_fall_back(client: openai.OpenAI, upstream: FakeUpstream,
                                                  gateway: GatewayServer) -> None:
    upstream.garbage_body()
    upstream.close_connection()
    upstream.close_connection()
    c = client.chat.completions.create(model="chat", messages=MSG)
    assert c.model == "small"
    row = gateway.rows()[-1]
    # garbage is not retried (the upstream is broken, not busy); a dropped connection is
    assert outcomes(row) == [("large", "bad_response"), ("small", "connection"), ("small", "connection"),
                             ("small", "ok")]
    assert row["status"] == "ok" and row["fallbacks"] == 1


def test_all_fail_gives_openai_error_with_attempts(upstream: FakeUpstream, gateway: GatewayServer) -> None:
    for _ in range(9):
        upstream.http_error(503)
    r = httpx.post(gateway.base_url + "/chat/completions", json={"model": "chat", "messages": MSG}, timeout=10)
    assert r.status_code == 502
    body = r.json()
    validate(body, "ErrorResponse")
    err = body["error"]
    assert err["code"] == "upstream_server_error" and err["type"] == "upstream_error"
    assert [a["model"] for a in err["attempts"]] == ["large"] * 3 + ["small"] * 3 + ["fb"] * 3
    assert "large: server (503)" in err["message"]
    assert "Traceback" not in r.text
    row = gateway.rows()[-1]
    assert row["status"] == "error" and row["http_status"] == 502 and len(row["attempts"]) == 9


def test_upstream_client_error_is_returned_not_retried(upstream: FakeUpstream, gateway: GatewayServer) -> None:
    upstream.http_error(400, body={"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}})
    r = httpx.post(gateway.base_url + "/chat/completions", json={"model": "chat", "messages": MSG}, timeout=10)
    assert r.status_code == 400
    assert "max_tokens is too large" in r.json()["error"]["message"]
    assert upstream.calls == 1


def test_cooldown_after_repeated_failures(client: openai.OpenAI, upstream: FakeUpstream,
                                          gateway: GatewayServer) -> None:
    for _ in range(3):
        upstream.http_error(500)
    client.chat.completions.create(model="chat", messages=MSG)  # large fails 3x -> cooldown, small serves
    client.chat.completions.create(model="chat", messages=MSG)
    rows = gateway.rows()
    assert any("cooldown" in n for n in rows[-2]["notes"])
    assert outcomes(rows[-1]) == [("small", "ok")]  # large is cooling down: demoted behind small
    assert any("cooling down" in n for n in rows[-1]["notes"])


def test_session_pinning_and_repin(client: openai.OpenAI, upstream: FakeUpstream, gateway: GatewayServer) -> None:
    h = {"X-Session-Id": "sess-1"}
    for _ in range(3):
        upstream.http_error(500)
    first = client.chat.completions.create(model="chat", messages=MSG, extra_headers=h)
    assert first.model == "small"  # large failed: small served and the session is pinned to it
    second = client.chat.completions.create(model="chat", messages=MSG, extra_headers=h)
    assert second.model == "small"  # pinned, although large is first in the tier
    rows = gateway.rows()
    assert rows[-1]["session_id"] == "sess-1" and outcomes(rows[-1]) == [("small", "ok")]
    for _ in range(3):
        upstream.http_error(502)
    third = client.chat.completions.create(model="chat", messages=MSG, extra_headers=h)
    assert third.model != "small"
    assert any("re-pinned from small" in n for n in gateway.rows()[-1]["notes"])
    # the request's `user` field pins too
    client.chat.completions.create(model="chat", messages=MSG, user="user-9")
    assert gateway.rows()[-1]["session_id"] == "user-9"


def test_reasoning_floor_raises_max_tokens(client: openai.OpenAI, upstream: FakeUpstream,
                                           gateway: GatewayServer) -> None:
    client.chat.completions.create(model="think", messages=MSG, max_completion_tokens=1024)
    assert upstream.last_request.body["max_completion_tokens"] == 4096
    assert any("raised from 1024 to reasoning floor 4096" in n for n in gateway.rows()[-1]["notes"])
    client.chat.completions.create(model="chat", messages=MSG, max_tokens=10)  # not a reasoning model: untouched
    assert upstream.last_request.body["max_tokens"] == 10


def test_empty_length_is_a_clear_error(upstream: FakeUpstream, gateway: GatewayServer) -> None:
    for _ in range(2):
        upstream.empty_length()  # thinker, then the fallback fb, both burn the budget
    r = httpx.post(gateway.base_url + "/chat/completions",
                   json={"model": "think", "messages": MSG, "max_tokens": 50}, timeout=10)
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "empty_completion_length" and "finish_reason=length" in err["message"]
    row = gateway.rows()[-1]
    assert [a["outcome"] for a in row["attempts"]] == ["empty_length", "empty_length"]
    assert row["cost_usd"] > 0  # the burnt tokens are still billed and booked


def test_mid_stream_disconnect_sends_error_event_and_books(upstream: FakeUpstream, gateway: GatewayServer) -> None:
    upstream.set(reply="alpha beta gamma delta epsilon")
    upstream.disconnect_mid_stream(after_chunks=2)
    body = {"model": "chat", "messages": MSG, "stream": True}
    with httpx.stream("POST", gateway.base_url + "/chat/completions", json=body, timeout=10) as r:
        assert r.status_code == 200
        events = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    err = orjson.loads(events[-2])
    assert err["error"]["code"] == "upstream_stream_interrupted"
    row = gateway.rows()[-1]
    assert row["status"] == "error" and row["attempts"][-1]["outcome"] == "connection"
    assert row["output_tokens"] > 0  # tokens so far, counted by tierwise
    assert any("usage estimated" in n for n in row["notes"])


def test_client_disconnect_mid_stream_books_client_cancelled(upstream: FakeUpstream,
                                                             gateway: GatewayServer) -> None:
    upstream.set(reply=" ".join(f"w{i}" for i in range(200)), inter_chunk_s=0.02)
    body = orjson.dumps({"model": "chat", "messages": MSG, "stream": True})
    s = socket.create_connection(("127.0.0.1", gateway.port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    got = b""
    while got.count(b"data: ") < 5:
        got += s.recv(65536)
    s.close()
    deadline = time.time() + 5
    while time.time() < deadline:
        rows = gateway.rows()
        if rows and rows[-1]["status"] == "client_cancelled":
            break
        time.sleep(0.05)
    row = gateway.rows()[-1]
    assert row["status"] == "client_cancelled"
    assert 0 < row["output_tokens"] < 200 and row["cost_usd"] > 0


@pytest.mark.parametrize(
    "payload,status,code,param",
    [
        (b"{not json", 400, "invalid_json", None),
        (b"", 400, "invalid_json", None),
        (b"[1,2]", 400, "invalid_json", None),
        (orjson.dumps({"model": "chat"}), 400, "missing_required_parameter", "messages"),
        (orjson.dumps({"messages": "hi"}), 400, "invalid_request", "messages"),
        (orjson.dumps({"messages": [{"role": "wizard", "content": "x"}]}), 400, "invalid_request", "messages[0].role"),
        (orjson.dumps({"messages": [{"role": "user", "content": 5}]}), 400, "invalid_request", "messages[0].content"),
        (orjson.dumps({"messages": MSG, "stream": "yes"}), 400, "invalid_request", "stream"),
        (orjson.dumps({"messages": MSG, "max_tokens": -1}), 400, "invalid_request", "max_tokens"),
        (orjson.dumps({"messages": MSG, "model": 42}), 400, "invalid_request", "model"),
        (orjson.dumps({"messages": MSG, "model": "gpt-nope"}), 404, "model_not_found", "model"),
    ],
)
def test_bad_requests(gateway: GatewayServer, upstream: FakeUpstream, payload: bytes, status: int, code: str,
                      param: str | None) -> None:
    r = httpx.post(gateway.base_url + "/chat/completions", content=payload,
                   headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == status, r.text
    validate(r.json(), "ErrorResponse")
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["param"] == param
    assert upstream.calls == 0
    row = gateway.rows()[-1]  # refused before routing, but booked
    assert (row["status"], row["http_status"], row["id"]) == ("rejected", status, r.headers["x-tierwise-request-id"])


def test_unknown_tier_paths_and_methods(gateway: GatewayServer) -> None:
    r = httpx.post(gateway.base_url + "/tiers/nope/chat/completions", json={"messages": MSG})
    assert r.status_code == 404 and r.json()["error"]["code"] == "tier_not_found"
    r = httpx.post(gateway.base_url + "/chat/completions", json={"messages": MSG}, headers={"X-Task": "nope"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "X-Task"
    r = httpx.get(gateway.base_url + "/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(gateway.base_url + "/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_body_over_limit_is_413(gateway: GatewayServer, upstream: FakeUpstream) -> None:
    big = orjson.dumps({"messages": [{"role": "user", "content": "x" * (4 * 1024 * 1024 + 10)}]})
    r = httpx.post(gateway.base_url + "/chat/completions", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit must hold for chunked bodies too
        for i in range(0, len(big), 1 << 20):
            yield big[i : i + (1 << 20)]

    r = httpx.post(gateway.base_url + "/chat/completions", content=chunks(),
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert upstream.calls == 0


def test_no_secret_or_prompt_in_logs(client: openai.OpenAI, upstream: FakeUpstream, gateway: GatewayServer,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for _ in range(9):
        upstream.http_error(500)
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="chat", messages=MSG)
    client.chat.completions.create(model="chat", messages=MSG)
    httpx.post(gateway.base_url + "/chat/completions", content=b"{bad")
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "sk-test-secret-123" not in text
    assert "7f3a" not in text
