"""Hostile input over real HTTP: whatever a client sends, the answer is a clear 4xx in OpenAI's error shape (never a
5xx, never a stack trace, never an echo of a header), and the request is booked in the ledger exactly once."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for
from tests.schemas import validate

MSG = [{"role": "user", "content": "hello"}]
CHAT = b"/v1/chat/completions"


# -- helpers ------------------------------------------------------------------------------------------------------


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the whole answer (the gateway closes or sends Content-Length), return it parsed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        while True:
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                lines = head.split(b"\r\n")
                headers = {k.strip().lower().decode(): v.strip().decode("latin-1")
                           for k, _, v in (ln.partition(b":") for ln in lines[1:])}
                n = int(headers.get("content-length", "-1"))
                if 0 <= n <= len(rest):
                    return int(lines[0].split()[1]), headers, rest[:n]
            chunk = s.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed before a full answer: {buf[:300]!r}")
            buf += chunk


def post_raw(port: int, body: bytes, headers: bytes = b"", path: bytes = CHAT) -> tuple[int, dict[str, str], bytes]:
    return raw_request(port, b"POST " + path + b" HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                       b"Connection: close\r\n" + headers + b"Content-Length: " + str(len(body)).encode()
                       + b"\r\n\r\n" + body)


def error_of(status: int, payload: bytes) -> dict:
    """The OpenAI error object of a non-2xx answer (schema-checked)."""
    assert 400 <= status < 500, (status, payload[:300])
    body = orjson.loads(payload)
    validate(body, "ErrorResponse")
    assert b"Traceback" not in payload
    return body["error"]


class Booked:
    """Counts ledger rows around a request: ``with booked(gw) as b: ...; b.row`` is the one row it added."""

    def __init__(self, gw: GatewayServer) -> None:
        self.gw = gw
        self.before = len(gw.rows())
        self.row: dict = {}

    def __enter__(self) -> Booked:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            return
        rows = self.gw.rows()
        assert len(rows) == self.before + 1, f"expected exactly one new ledger row, got {len(rows) - self.before}"
        self.row = rows[-1]


@pytest.fixture
def limited(upstream: FakeUpstream, tmp_path: Path) -> Iterator[GatewayServer]:
    """A gateway with per-model output limits and a short body timeout."""
    cfg = config_for(upstream.base_url, tmp_path)
    cfg.models["large"].max_output = 2000
    cfg.models["small"].max_output = 1000
    cfg.server.body_timeout_s = 0.5
    gw = GatewayServer(cfg).start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def keyed(upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GatewayServer]:
    monkeypatch.setenv("TW_HOSTILE_KEYS", "team-a:sk-aaa-111")
    cfg = config_for(upstream.base_url, tmp_path)
    cfg.server.api_keys_env = "TW_HOSTILE_KEYS"
    gw = GatewayServer(cfg).start()
    try:
        yield gw
    finally:
        gw.stop()


# -- 1. header values are cleaned at ingress ----------------------------------------------------------------------


def test_non_utf8_session_header_is_served_and_booked_clean(gateway: GatewayServer) -> None:
    body = orjson.dumps({"model": "chat", "messages": MSG})
    with Booked(gateway) as b:
        status, _, _ = post_raw(gateway.port, body, b"X-Session-Id: caf\xe9\r\n")
    assert status == 200
    assert b.row["session_id"] == "caf\ufffd" and b.row["status"] == "ok"
    with Booked(gateway) as b:  # a rejected request books the same cleaned value
        status, _, payload = post_raw(gateway.port, b"{bad", b"X-Session-Id: caf\xe9\xff\r\n")
    assert error_of(status, payload)["code"] == "invalid_json"
    assert b.row["session_id"] == "caf\ufffd\ufffd" and b.row["status"] == "rejected"


def test_non_utf8_task_header_is_a_clear_404(gateway: GatewayServer, upstream: FakeUpstream) -> None:
    body = orjson.dumps({"messages": MSG})
    with Booked(gateway) as b:
        status, _, payload = post_raw(gateway.port, body, b"X-Task: lab\xe9l\r\n")
    err = error_of(status, payload)
    assert status == 404 and err["code"] == "tier_not_found" and err["param"] == "X-Task"
    assert "lab\ufffdl" in err["message"]
    assert b.row["tier"] == "lab\ufffdl" and b.row["http_status"] == 404
    assert upstream.calls == 0


def test_tier_from_the_path_is_cleaned(gateway: GatewayServer) -> None:
    body = orjson.dumps({"messages": MSG})
    with Booked(gateway):
        status, _, payload = post_raw(gateway.port, body, path=b"/v1/tiers/caf%E9%ED%A0%80/chat/completions")
    assert status == 404 and error_of(status, payload)["code"] == "tier_not_found"
    with Booked(gateway) as b:  # a raw non-ASCII byte in the request target: refused by the HTTP parser, in JSON
        status, _, payload = post_raw(gateway.port, body, path=b"/v1/tiers/caf\xe9/chat/completions")
    assert status == 400 and error_of(status, payload)["code"] == "invalid_request_line"
    assert b.row["status"] == "rejected"


def test_long_session_header_and_user_are_cut(gateway: GatewayServer) -> None:
    body = orjson.dumps({"model": "chat", "messages": MSG})
    with Booked(gateway) as b:
        status, _, _ = post_raw(gateway.port, body, b"X-Session-Id: " + b"s" * 5000 + b"\r\n")
    assert status == 200 and b.row["session_id"] == "s" * 256
    with Booked(gateway) as b:
        r = httpx.post(gateway.base_url + "/chat/completions",
                       json={"model": "chat", "messages": MSG, "user": "u\x00" + "u" * 5000})
    assert r.status_code == 200
    assert b.row["session_id"] == "u\ufffd" + "u" * 254


def test_non_utf8_credentials_are_a_clean_401(keyed: GatewayServer) -> None:
    body = orjson.dumps({"model": "chat", "messages": MSG})
    for auth in (b"Authorization: Bearer sk-aaa-111\xe9\r\n", b"x-api-key: \xff\xfe\r\n",
                 b"Authorization: Bearer " + b"k" * 5000 + b"\r\n"):
        with Booked(keyed) as b:
            status, _, payload = post_raw(keyed.port, body, auth + b"X-Session-Id: s\xe9\r\n")
        err = error_of(status, payload)
        assert status == 401 and err["code"] == "invalid_api_key"
        assert b.row["principal"] == "unauthenticated" and b.row["session_id"] == "s\ufffd"
    status, _, payload = raw_request(keyed.port, b"GET /v1/models HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                                                 b"Authorization: Bearer \xe9\r\n\r\n")
    assert status == 401 and error_of(status, payload)["code"] == "invalid_api_key"


# -- 2. type confusion and nesting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body,param",
    [
        ({"messages": [{"role": {}, "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": [], "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": 1, "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [1]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": {"text": "x"}}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x", "name": {}}]}, "messages[0].name"),
        ({"messages": [{"role": "assistant", "content": "x", "tool_calls": 5}]}, "messages[0].tool_calls"),
        ({"messages": [{"role": "assistant", "content": "x", "tool_calls": ["f"]}]}, "messages[0].tool_calls[0]"),
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": 7}]}, "messages[0].tool_call_id"),
        ({"messages": MSG, "model": {}}, "model"),
        ({"messages": MSG, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"messages": MSG, "n": "2"}, "n"),
        ({"messages": MSG, "n": True}, "n"),
        ({"messages": MSG, "max_tokens": 1.5}, "max_tokens"),
        ({"messages": MSG, "max_tokens": 1e30}, "max_tokens"),
        ({"messages": MSG, "max_completion_tokens": [1]}, "max_completion_tokens"),
        ({"messages": MSG, "top_logprobs": -1}, "top_logprobs"),
        ({"messages": MSG, "temperature": "hot"}, "temperature"),
        ({"messages": MSG, "temperature": True}, "temperature"),
        ({"messages": MSG, "top_p": {}}, "top_p"),
        ({"messages": MSG, "logprobs": "yes"}, "logprobs"),
        ({"messages": MSG, "stop": [1]}, "stop"),
        ({"messages": MSG, "stop": 5}, "stop"),
        ({"messages": MSG, "tools": {}}, "tools"),
        ({"messages": MSG, "tools": [5]}, "tools[0]"),
        ({"messages": MSG, "tool_choice": 5}, "tool_choice"),
        ({"messages": MSG, "response_format": "json"}, "response_format"),
        ({"messages": MSG, "user": 5}, "user"),
        ({"messages": MSG, "metadata": []}, "metadata"),
    ],
)
def test_wrong_types_are_400_naming_the_field(gateway: GatewayServer, upstream: FakeUpstream, body: dict,
                                              param: str) -> None:
    with Booked(gateway) as b:
        status, _, payload = post_raw(gateway.port, orjson.dumps(body))
    err = error_of(status, payload)
    assert status == 400 and err["param"] == param, err
    assert len(err["message"]) < 300
    assert (b.row["status"], b.row["http_status"]) == ("rejected", 400)
    assert upstream.calls == 0


def nested(depth: int) -> bytes:
    """A request whose JSON nests ``depth`` levels (the body object is level 1)."""
    inner = b"[" * (depth - 1) + b"]" * (depth - 1)
    return b'{"model":"chat","messages":[{"role":"user","content":"x"}],"vendor_ext":' + inner + b"}"


@pytest.mark.parametrize("depth", [65, 255, 300, 1024, 1025, 5000])
def test_deep_nesting_is_refused_at_parse_time(gateway: GatewayServer, upstream: FakeUpstream, depth: int) -> None:
    with Booked(gateway) as b:
        status, _, payload = post_raw(gateway.port, nested(depth))
    err = error_of(status, payload)
    assert status == 400 and err["code"] in ("json_too_deep", "invalid_json")
    assert b.row["status"] == "rejected" and upstream.calls == 0


def test_nesting_up_to_the_limit_is_served(gateway: GatewayServer, upstream: FakeUpstream) -> None:
    status, _, _ = post_raw(gateway.port, nested(64))
    assert status == 200
    assert upstream.calls == 1


def test_huge_numbers_are_refused_or_passed_not_500(gateway: GatewayServer) -> None:
    for raw in (b'{"messages":[{"role":"user","content":"x"}],"seed":123456789012345678901234567890}',
                b'{"messages":[{"role":"user","content":"x"}],"temperature":1e400}',
                b'{"messages":[{"role":"user","content":"x"}],"max_tokens":18446744073709551615}',
                b'{"messages":[{"role":"user","content":"x"}],"n":-9223372036854775809}',
                b'{"messages":[{"role":"user","content":"x"}],"temperature":NaN}',
                b'{"messages":[{"role":"user","content":"\\ud800"}]}'):
        with Booked(gateway):
            status, _, payload = post_raw(gateway.port, raw)
        assert status < 500, payload
        if status >= 400:
            error_of(status, payload)


# -- 3. slow bodies and protocol-level errors ---------------------------------------------------------------------


def test_slow_body_gets_408(limited: GatewayServer) -> None:
    t0 = time.monotonic()
    with Booked(limited) as b:
        status, headers, payload = raw_request(
            limited.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"mess")
    assert time.monotonic() - t0 < 5
    err = error_of(status, payload)
    assert status == 408 and err["code"] == "request_timeout" and "body_timeout_s" in err["message"]
    assert headers.get("connection", "").lower() == "close"
    assert (b.row["status"], b.row["http_status"]) == ("rejected", 408)


@pytest.mark.parametrize("framing", [
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",  # a chunk size that is not hex
    b"Content-Encoding: gzip\r\nContent-Length: 15\r\n\r\nnot gzip at all",  # undecodable content encoding
])
def test_broken_body_framing_is_400(gateway: GatewayServer, caplog: pytest.LogCaptureFixture, framing: bytes) -> None:
    caplog.set_level(logging.DEBUG)
    with Booked(gateway) as b:
        status, _, payload = raw_request(gateway.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n" + framing)
    assert status == 400 and error_of(status, payload)["code"] in ("invalid_body", "bad_http_request")
    assert b.row["status"] == "rejected"
    assert "Traceback" not in caplog.text and "Unhandled exception" not in caplog.text


@pytest.mark.parametrize(
    "data,status,code",
    [
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nX-Secret: sk-LEAK-" + b"A" * 9000 + b"\r\n\r\n",
         431, "header_too_large"),
        (b"POST /v1/chat/completions?q=sk-LEAK-" + b"A" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
         431, "header_too_large"),
        (b"GARBAGE sk-LEAK-\r\n\r\n", 400, "invalid_request_line"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03sk-LEAK-\r\n\r\n", 400, "invalid_request_line"),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nX-Bad\x01Name: sk-LEAK-\r\n\r\n", 400, None),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nX-Ok: sk-LEAK-\x00\r\n\r\n", 400, None),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: -5\r\n\r\nsk-LEAK-", 400, None),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
         b"sk-LEAK-", 400, None),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-H%d: sk-LEAK-\r\n" % i for i in range(200))
         + b"\r\n", 400, None),
    ],
)
def test_parser_errors_answer_openai_json_without_echo(gateway: GatewayServer, caplog: pytest.LogCaptureFixture,
                                                        data: bytes, status: int, code: str | None) -> None:
    caplog.set_level(logging.DEBUG)
    with Booked(gateway) as b:
        got, headers, payload = raw_request(gateway.port, data)
    err = error_of(got, payload)
    assert got == status and headers["content-type"].startswith("application/json")
    if code is not None:
        assert err["code"] == code
    assert b"LEAK" not in payload and "LEAK" not in str(headers)
    assert "LEAK" not in caplog.text
    assert (b.row["status"], b.row["http_status"]) == ("rejected", status)
    assert headers["x-tierwise-request-id"] == b.row["id"]


def test_unknown_paths_and_methods_stay_json(gateway: GatewayServer) -> None:
    for method, path in (("GET", "/v1/caf%ED%A0%80"), ("DELETE", "/v1/chat/completions"), ("BREW", "/v1/models")):
        r = httpx.request(method, gateway.url + path)
        assert r.status_code in (400, 404, 405), (method, r.status_code)
        error_of(r.status_code, r.content)


# -- 4. absurd but well-typed values -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["", "   ", "m" * 300])
def test_empty_or_absurd_model_is_400(gateway: GatewayServer, upstream: FakeUpstream, model: str) -> None:
    with Booked(gateway):
        r = httpx.post(gateway.base_url + "/chat/completions", json={"model": model, "messages": MSG})
    err = error_of(r.status_code, r.content)
    assert r.status_code == 400 and err["param"] == "model"
    assert len(err["message"]) < 200  # the 300-character name is not echoed back
    assert upstream.calls == 0


def test_output_limits(limited: GatewayServer, upstream: FakeUpstream) -> None:
    url = limited.base_url + "/chat/completions"

    def ask(model: str, **extra: object) -> httpx.Response:
        with Booked(limited):
            return httpx.post(url, json={"model": model, "messages": MSG, **extra}, timeout=10)

    # a named model: its own max_output
    assert ask("small", max_tokens=1000).status_code == 200
    r = ask("small", max_tokens=1001)
    err = error_of(r.status_code, r.content)
    assert r.status_code == 400 and err["param"] == "max_tokens" and "1000" in err["message"] and "'small'" in err["message"]
    r = ask("large", max_completion_tokens=10**15)
    assert r.status_code == 400 and error_of(r.status_code, r.content)["param"] == "max_completion_tokens"
    # a model without max_output: the global server.max_tokens_limit
    assert ask("fb", max_tokens=1_048_576).status_code == 200
    r = ask("fb", max_tokens=1_048_577)
    assert r.status_code == 400 and "1048576" in error_of(r.status_code, r.content)["message"]
    # a tier: the largest limit among its models (chat = large 2000 + small 1000; label = small)
    assert ask("chat", max_tokens=1500).status_code == 200
    r = ask("chat", max_tokens=2001)
    assert r.status_code == 400 and "tier 'chat'" in error_of(r.status_code, r.content)["message"]
    r = ask("label", max_tokens=1500)
    assert r.status_code == 400 and "tier 'label'" in error_of(r.status_code, r.content)["message"]
    # the tier wins over the model field when it comes from the endpoint or the X-Task header
    with Booked(limited):
        r = httpx.post(limited.base_url + "/tiers/label/chat/completions",
                       json={"model": "large", "messages": MSG, "max_tokens": 1500})
    assert r.status_code == 400
    with Booked(limited):
        r = httpx.post(url, json={"model": "auto", "messages": MSG, "max_tokens": 1500}, headers={"X-Task": "chat"})
    assert r.status_code == 200
    # auto without a classifier: the default tier (chat)
    assert ask("auto", max_tokens=2000).status_code == 200
    assert ask("auto", max_tokens=2001).status_code == 400


def test_a_tier_budget_is_clamped_to_each_models_own_limit(limited: GatewayServer, upstream: FakeUpstream) -> None:
    """chat admits 2000 (large's limit); when large fails, small is sent its own 1000, not a budget it refuses."""
    upstream.push_faults([{"kind": "http_error", "status": 401}])  # large refuses: falls back to small
    r = httpx.post(limited.base_url + "/chat/completions", json={"model": "chat", "messages": MSG, "max_tokens": 1500},
                   timeout=10)
    assert r.status_code == 200 and r.headers["x-tierwise-model"] == "small"
    assert upstream.last_request.body["max_tokens"] == 1000
    (row,) = [row for row in limited.rows() if row["id"] == r.headers["x-tierwise-request-id"]]
    assert any("max_tokens lowered from 1500 to its max_output 1000" in n for n in row["notes"])


def test_n_is_bounded_by_server_max_n(gateway: GatewayServer, upstream: FakeUpstream) -> None:
    url = gateway.base_url + "/chat/completions"
    with Booked(gateway) as b:
        r = httpx.post(url, json={"model": "chat", "messages": MSG, "n": 100000})
    err = error_of(r.status_code, r.content)
    assert r.status_code == 400 and err["param"] == "n" and "server.max_n" in err["message"]
    assert b.row["status"] == "rejected" and upstream.calls == 0
    with Booked(gateway):
        r = httpx.post(url, json={"model": "chat", "messages": MSG, "n": 8}, timeout=10)
    assert r.status_code == 200 and len(r.json()["choices"]) == 8
