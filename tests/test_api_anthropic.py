"""POST /v1/messages driven by the official ``anthropic`` SDK (and raw HTTP for what the SDK will not send).

A real gateway in front of fake upstreams of both wire formats: a Messages request is routed like any chat
(tiers, governance, ledger), answered by an OpenAI-format or an Anthropic-format model, and translated back,
streaming included; cache-control blocks reach Anthropic upstreams and their cache tokens are priced and booked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.governance_env import GovEnv, gateway_config, make_key
from tests.harness import GatewayServer, config_for

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def claude(gateway: GatewayServer) -> Iterator[anthropic.Anthropic]:
    c = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0, timeout=20)
    try:
        yield c
    finally:
        c.close()


def _events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], orjson.loads(lines["data"])))
    return out


def _no_key_anywhere(obj: Any, keys: tuple[str, ...]) -> bool:
    if isinstance(obj, dict):
        return all(k not in obj for k in keys) and all(_no_key_anywhere(v, keys) for v in obj.values())
    if isinstance(obj, list):
        return all(_no_key_anywhere(v, keys) for v in obj)
    return True


def test_create_routes_through_a_tier_and_books_one_row(gateway: GatewayServer, claude: anthropic.Anthropic,
                                                         upstream: FakeUpstream) -> None:
    upstream.set(reply="Bonjour tout le monde", prompt_tokens=40, completion_tokens=4)
    msg = claude.messages.create(model="chat", max_tokens=64, system="answer in French", messages=HI,
                                 stop_sequences=["END"], metadata={"user_id": "u-42"},
                                 extra_body={"temperature": 0.5})
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "large"
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == "Bonjour tout le monde"
    assert msg.stop_reason == "end_turn" and msg.id.startswith("msg_")
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (40, 4)
    sent = upstream.last_request.body
    assert sent["messages"] == [{"role": "system", "content": "answer in French"}, {"role": "user", "content": "hi"}]
    assert sent["model"] == "large-up" and sent["max_tokens"] == 64 and sent["stop"] == ["END"]
    assert sent["user"] == "u-42" and sent["temperature"] == 0.5
    [row] = gateway.rows()
    assert row["status"] == "ok" and row["tier"] == "chat" and row["model"] == "large"
    assert row["session_id"] == "u-42" and "api: anthropic-messages" in row["notes"]
    assert row["cost_usd"] == pytest.approx((40 * 2.5 + 4 * 10) / 1e6)


def test_stream_events_follow_the_messages_protocol(gateway: GatewayServer, upstream: FakeUpstream) -> None:
    upstream.set(reply="one two three", prompt_tokens=12, completion_tokens=3)
    r = httpx.post(gateway.url + "/v1/messages", timeout=20, json={
        "model": "chat", "max_tokens": 50, "stream": True, "messages": HI})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.content)
    names = [n for n, _ in events]
    assert names[:2] == ["message_start", "ping"]
    assert names[2] == "content_block_start" and names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(n == "content_block_delta" for n in names[3:-3])
    assert "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta") == "one two three"
    assert all(d["type"] == n for n, d in events)
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"]["input_tokens"] == 12 and delta["usage"]["output_tokens"] == 3
    [row] = gateway.rows()
    assert row["stream"] and row["status"] == "ok" and (row["input_tokens"], row["output_tokens"]) == (12, 3)


def test_sdk_stream_with_cache_tokens_priced_and_booked(gateway: GatewayServer, claude: anthropic.Anthropic,
                                                        anthropic_upstream: FakeUpstream) -> None:
    anthropic_upstream.set(reply="cached answer", prompt_tokens=1000, cached_tokens=600, cache_creation_tokens=300,
                           completion_tokens=20)
    system = [{"type": "text", "text": "long shared context", "cache_control": {"type": "ephemeral"}}]
    with claude.messages.stream(model="claude", max_tokens=100, system=system, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "cached answer" and final.stop_reason == "end_turn"
    u = final.usage
    assert (u.input_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens, u.output_tokens) == (
        100, 600, 300, 20)
    sent = anthropic_upstream.last_request.body
    assert sent["system"] == [{"type": "text", "text": "long shared context", "cache_control": {"type": "ephemeral"}}]
    [row] = gateway.rows()
    assert (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"], row["output_tokens"]) == (
        100, 600, 300, 20)
    # claude: input 3, output 15, cache_read 0.3, cache_write 3.75 USD per 1M tokens
    assert row["cost_usd"] == pytest.approx((100 * 3 + 600 * 0.3 + 300 * 3.75 + 20 * 15) / 1e6)
    assert row["cost_breakdown"]["cache_write"] == pytest.approx(300 * 3.75 / 1e6)


TOOLS = [{"name": "get_weather", "description": "weather of a city", "cache_control": {"type": "ephemeral"},
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
FOLLOW_UP = [
    {"role": "user", "content": "weather in Paris?"},
    {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "look it up", "signature": "sig"},
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
    {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C", "is_error": False,
         "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "and tomorrow?"}]},
]


def test_tool_use_answer_and_tool_result_turn(gateway: GatewayServer, claude: anthropic.Anthropic,
                                              upstream: FakeUpstream) -> None:
    upstream.set(reply="", tool_calls=[{"id": "call_w1", "name": "get_weather", "arguments": {"city": "Paris"}}])
    msg = claude.messages.create(model="chat", max_tokens=100, tools=TOOLS, messages=FOLLOW_UP,
                                 tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True})
    assert msg.stop_reason == "tool_use"
    [block] = msg.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "Paris"}
    assert block.id == "call_w1"
    sent = upstream.last_request.body
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "weather of a city", "parameters": TOOLS[0]["input_schema"]}}]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False
    assert sent["messages"] == [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18 C"},
        {"role": "user", "content": "and tomorrow?"},
    ]
    # the Messages-only hints never reach an OpenAI-format upstream
    assert _no_key_anywhere(sent, ("cache_control", "is_error", "_tierwise_anthropic_hints"))


def test_hints_reach_an_anthropic_upstream(gateway: GatewayServer, claude: anthropic.Anthropic,
                                           anthropic_upstream: FakeUpstream) -> None:
    claude.messages.create(model="claude", max_tokens=100, tools=TOOLS, messages=FOLLOW_UP, extra_body={"top_k": 5},
                           tool_choice={"type": "any"})
    sent = anthropic_upstream.last_request.body
    assert sent["tools"][0]["cache_control"] == {"type": "ephemeral"}
    assert sent["tool_choice"] == {"type": "any"} and sent["top_k"] == 5
    result = sent["messages"][2]["content"][0]
    assert result == {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": False,
                      "cache_control": {"type": "ephemeral"}, "content": "18 C"}
    assert sent["messages"][1]["content"][1] == {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                                  "input": {"city": "Paris"}}


def test_streamed_tool_use_accumulates_its_input(gateway: GatewayServer, claude: anthropic.Anthropic,
                                                 upstream: FakeUpstream) -> None:
    upstream.set(reply="Checking.", tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}},
                                                {"name": "get_weather", "arguments": {"city": "Rome"}}])
    with claude.messages.stream(model="chat", max_tokens=100, tools=TOOLS, messages=HI) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[0].text == "Checking."
    assert [b.input for b in final.content[1:]] == [{"city": "Oslo"}, {"city": "Rome"}]
    assert final.stop_reason == "tool_use"


def test_tier_endpoint_and_image_blocks(gateway: GatewayServer, upstream: FakeUpstream) -> None:
    r = httpx.post(gateway.url + "/v1/tiers/label/messages", timeout=20, json={
        "model": "whatever-the-sdk-sends", "max_tokens": 10, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is it?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "small" and r.headers["x-tierwise-tier"] == "label"
    parts = upstream.last_request.body["messages"][0]["content"]
    assert parts[1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


BAD = [
    ({"model": "chat", "messages": HI}, 400, "invalid_request_error", "'max_tokens' is required"),
    ({"model": "chat", "max_tokens": "10", "messages": HI}, 400, "invalid_request_error", "'max_tokens' must be"),
    ({"max_tokens": 10, "messages": HI}, 400, "invalid_request_error", "'model' is required"),
    ({"model": "chat", "max_tokens": 10, "messages": []}, 400, "invalid_request_error", "'messages' must be"),
    ({"model": "chat", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {}}]}]}, 400, "invalid_request_error", "'messages[0].content[0].type'"),
    ({"model": "chat", "max_tokens": 10, "messages": [{"role": "user", "content": [{"text": "no type"}]}]},
     400, "invalid_request_error", "'messages[0].content[0]' must be a content block"),
    ({"model": "chat", "max_tokens": 10, "messages": [{"role": "system", "content": "x"}]},
     400, "invalid_request_error", "'messages[0].role'"),
    ({"model": "chat", "max_tokens": 10, "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": "not an object"}]}]},
     400, "invalid_request_error", ".input' must be an object"),
    ({"model": "chat", "max_tokens": 10, "messages": HI, "tools": [{"type": "web_search_20250305",
                                                                     "name": "web_search"}]},
     400, "invalid_request_error", "server tools"),
    ({"model": "chat", "max_tokens": 10, "messages": HI, "mcp_servers": []}, 400, "invalid_request_error",
     "'mcp_servers' is not supported"),
    ({"model": "chat", "max_tokens": 10, "messages": HI, "temperature": 3}, 400, "invalid_request_error",
     "'temperature' must be a number between 0 and 1"),
    ({"model": "chat", "max_tokens": 10**9, "messages": HI}, 400, "invalid_request_error", "exceeds the output limit"),
    ({"model": "no-such-model", "max_tokens": 10, "messages": HI}, 404, "not_found_error", "no-such-model"),
]


@pytest.mark.parametrize(("body", "status", "etype", "text"), BAD)
def test_bad_requests_get_anthropic_errors_and_one_row(gateway: GatewayServer, upstream: FakeUpstream,
                                                       body: dict, status: int, etype: str, text: str) -> None:
    r = httpx.post(gateway.url + "/v1/messages", json=body, timeout=20)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["type"] == "error" and set(err) == {"type", "error"} and err["error"]["type"] == etype
    assert text in err["error"]["message"]
    assert upstream.calls == 0
    [row] = gateway.rows()
    assert row["status"] == "rejected" and row["http_status"] == status and r.headers["x-tierwise-request-id"] == row["id"]


@pytest.mark.parametrize(("raw", "status", "text"), [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b'{"a":' * 70 + b"1" + b"}" * 70, 400, "deeper than 64 levels"),
    (b'{"model": "chat", "max_tokens": 5, "messages": [{"role": "user", "content": "' + b"x" * (5 << 20) + b'"}]}',
     413, "exceeds the limit"),
])
def test_hostile_bodies(gateway: GatewayServer, raw: bytes, status: int, text: str) -> None:
    r = httpx.post(gateway.url + "/v1/messages", content=raw, headers={"content-type": "application/json"}, timeout=20)
    assert r.status_code == status
    err = r.json()
    assert err["type"] == "error" and text in err["error"]["message"]
    [row] = gateway.rows()
    assert row["status"] == "rejected" and row["http_status"] == status


def test_sdk_raises_its_own_exceptions(gateway: GatewayServer, claude: anthropic.Anthropic,
                                       upstream: FakeUpstream) -> None:
    with pytest.raises(anthropic.NotFoundError) as nf:
        claude.messages.create(model="claude-opus-9", max_tokens=10, messages=HI)
    assert nf.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="chat", max_tokens=10, messages=[{"role": "user", "content": [
            {"type": "text"}]}])  # type: ignore[list-item]
    for _ in range(20):
        upstream.http_error(500)
    with pytest.raises(anthropic.InternalServerError) as ise:
        claude.messages.create(model="chat", max_tokens=10, messages=HI)
    assert ise.value.status_code == 502 and ise.value.body["error"]["type"] == "api_error"
    rows = gateway.rows()
    assert [r["status"] for r in rows] == ["rejected", "rejected", "error"]


def test_upstream_failure_mid_stream_ends_with_an_error_event(gateway: GatewayServer,
                                                              upstream: FakeUpstream) -> None:
    upstream.set(reply="a b c d e f")
    upstream.disconnect_mid_stream(after_chunks=2)
    r = httpx.post(gateway.url + "/v1/messages", timeout=20, json={
        "model": "label", "max_tokens": 50, "stream": True, "messages": HI})
    assert r.status_code == 200
    events = _events(r.content)
    assert events[-1][0] == "error" and events[-1][1]["error"]["type"] == "api_error"
    assert events[-2][0] == "content_block_stop"
    [row] = gateway.rows()
    assert row["status"] == "error" and row["stream"]


def test_static_key_required(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TW_TEST_KEYS", "team-a:sk-aaa-111")
    with FakeUpstream() as up:
        cfg = config_for(up.base_url, tmp_path)
        cfg.server.api_keys_env = "TW_TEST_KEYS"
        gw = GatewayServer(cfg).start()
        try:
            bad = anthropic.Anthropic(base_url=gw.url, api_key="sk-wrong", max_retries=0)
            with pytest.raises(anthropic.AuthenticationError) as exc:
                bad.messages.create(model="chat", max_tokens=10, messages=HI)
            assert exc.value.body["error"]["type"] == "authentication_error"
            good = anthropic.Anthropic(base_url=gw.url, api_key="sk-aaa-111", max_retries=0)  # sent as x-api-key
            assert good.messages.create(model="chat", max_tokens=10, messages=HI).content
            rows = gw.rows()
        finally:
            gw.stop()
    assert [(r["status"], r["http_status"], r["principal"]) for r in rows] == [
        ("rejected", 401, "unauthenticated"), ("ok", 200, "team-a")]


def test_virtual_key_allow_list_and_rate_limit(tmp_path: Path) -> None:
    env = GovEnv("sqlite", tmp_path)
    with FakeUpstream() as up:
        cfg = gateway_config(up.base_url, tmp_path, env)
        store = env.store()
        try:
            _, key = make_key(store, "acme", allowed_models=["small"], rpm=1)
        finally:
            store.close()
        gw = GatewayServer(cfg).start()
        try:
            c = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)
            with pytest.raises(anthropic.PermissionDeniedError) as denied:
                c.messages.create(model="large", max_tokens=10, messages=HI)
            assert denied.value.body["error"]["type"] == "permission_error"
            assert c.messages.create(model="small", max_tokens=10, messages=HI).model == "small"
            with pytest.raises(anthropic.RateLimitError) as limited:
                c.messages.create(model="small", max_tokens=10, messages=HI)
            assert limited.value.response.headers.get("retry-after")
            rows = gw.rows()
        finally:
            gw.stop()
    assert [(r["http_status"], r["principal"]) for r in rows] == [(403, "acme"), (200, "acme"), (429, "acme")]


def test_top_level_cache_control_is_an_anthropic_hint(gateway: GatewayServer, claude: anthropic.Anthropic,
                                                      upstream: FakeUpstream,
                                                      anthropic_upstream: FakeUpstream) -> None:
    claude.messages.create(model="claude", max_tokens=10, messages=HI, cache_control={"type": "ephemeral"})
    assert anthropic_upstream.last_request.body["cache_control"] == {"type": "ephemeral"}
    claude.messages.create(model="chat", max_tokens=10, messages=HI, cache_control={"type": "ephemeral"})
    assert "cache_control" not in upstream.last_request.body
    r = httpx.post(gateway.url + "/v1/messages", timeout=20, json={
        "model": "chat", "max_tokens": 10, "messages": HI, "cache_control": "yes"})
    assert r.status_code == 400 and "'cache_control' must be an object" in r.json()["error"]["message"]


def test_other_methods_and_sub_paths_answer_in_anthropic_shape(gateway: GatewayServer) -> None:
    r = httpx.get(gateway.url + "/v1/messages", timeout=20)
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(gateway.url + "/v1/messages/count_tokens", json={"model": "chat", "messages": HI}, timeout=20)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_x_task_header_overrides_the_agents_model_name(gateway: GatewayServer) -> None:
    c = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0, default_headers={"X-Task": "label"})
    assert c.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=HI).model == "small"
    c2 = anthropic.Anthropic(base_url=gateway.url + "/v1/tiers/label", api_key="x", max_retries=0)
    assert c2.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=HI).model == "small"
    assert [(r["tier"], r["tier_source"]) for r in gateway.rows()] == [("label", "header"), ("label", "endpoint")]


def test_client_hangup_mid_stream_books_one_cancelled_row(gateway: GatewayServer, upstream: FakeUpstream) -> None:
    import time

    upstream.set(reply="a b c d e f g h i j", inter_chunk_s=0.2)
    with httpx.stream("POST", gateway.url + "/v1/messages", timeout=20, json={
            "model": "chat", "max_tokens": 50, "stream": True, "messages": HI}) as r:
        for line in r.iter_lines():
            if line.startswith("event: content_block_delta"):
                break  # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not gateway.rows():
        time.sleep(0.1)
    [row] = gateway.rows()
    assert row["status"] == "client_cancelled" and row["http_status"] == 499 and row["stream"]
