"""Fuzzing /v1/messages, /v1/responses and /v1/embeddings over real HTTP (hypothesis, derandomised in CI).

Near-valid bodies with parts replaced by junk, and valid bodies with random bytes spliced in: every answer is below
500, in the endpoint's shape (an answer object, a stream ending as its protocol ends, or the endpoint's error
shape), and exactly one ledger row is booked per request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for
from tests.test_api_embeddings import with_embeddings
from tests.test_fuzz_gateway import _rows, _settings

MESSAGES, RESPONSES, EMBEDDINGS = "/v1/messages", "/v1/responses", "/v1/embeddings"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    with FakeUpstream() as up, FakeUpstream() as anth:
        cfg = with_embeddings(config_for(up.base_url, tmp_path_factory.mktemp("api-fuzz"), anthropic_url=anth.base_url))
        server = GatewayServer(cfg).start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def http(gw: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=20) as c:
        yield c


text = st.text(max_size=10)
junk = st.recursive(st.none() | st.booleans() | st.integers(-5, 2**64) | st.floats(allow_nan=False) | text,
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(text, kids, max_size=3), max_leaves=8)
models = st.sampled_from(["chat", "label", "claude", "small", "auto", "emb", "nope", ""])
block = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": text},
                          optional={"cache_control": st.just({"type": "ephemeral"})}),
    st.fixed_dictionaries({"type": st.just("tool_use"), "id": text, "name": text, "input": st.just({"a": 1})}),
    st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": text, "content": text},
                          optional={"is_error": st.booleans()}),
    st.fixed_dictionaries({"type": st.just("image"), "source": st.just(
        {"type": "base64", "media_type": "image/png", "data": "AAAA"})}),
)
turn = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                              "content": st.one_of(text, st.lists(block, max_size=3))})
messages_body = st.fixed_dictionaries(
    {"model": models, "max_tokens": st.integers(1, 5000), "messages": st.lists(turn, min_size=1, max_size=3)},
    optional={"system": st.one_of(text, st.lists(block, max_size=2)), "stream": st.booleans(),
              "stop_sequences": st.lists(text, max_size=2), "tool_choice": st.just({"type": "auto"}),
              "tools": st.just([{"name": "f", "input_schema": {"type": "object"}}])})
item = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "developer"]), "content": text}),
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": text, "name": text, "arguments": text}),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": text, "output": text}),
)
responses_body = st.fixed_dictionaries(
    {"model": models, "input": st.one_of(text, st.lists(item, min_size=1, max_size=3))},
    optional={"instructions": text, "stream": st.booleans(), "max_output_tokens": st.integers(1, 5000),
              "tools": st.just([{"type": "function", "name": "f", "parameters": {"type": "object"}}])})
embeddings_body = st.fixed_dictionaries(
    {"model": models, "input": st.one_of(text, st.lists(text, max_size=3),
                                         st.lists(st.integers(0, 5000), min_size=1, max_size=4))},
    optional={"encoding_format": st.sampled_from(["float", "base64", "hex"]), "dimensions": st.integers(-1, 9)})


def _mutate(body: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """Replace or delete up to two top-level fields with junk (types confused, required fields missing)."""
    for _ in range(data.draw(st.integers(0, 2))):
        key = data.draw(st.sampled_from([*body, "extra"]))
        if data.draw(st.booleans()):
            body.pop(key, None)
        else:
            body[key] = data.draw(junk)
    return body


def check(gw: GatewayServer, path: str, before: int, r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    assert b"Traceback" not in r.content
    if r.status_code >= 300:
        err = r.json()
        if path == MESSAGES:
            assert err["type"] == "error" and isinstance(err["error"]["message"], str), err
        else:
            assert isinstance(err["error"]["message"], str), err
    elif r.headers["content-type"].startswith("text/event-stream"):
        last = r.content.rstrip().rsplit(b"\n\n", 1)[-1]
        assert last.startswith(b"event: message_stop" if path == MESSAGES else b"event: response."), last
    else:
        kind = {MESSAGES: ("type", "message"), RESPONSES: ("object", "response"), EMBEDDINGS: ("object", "list")}
        key, value = kind[path]
        assert r.json()[key] == value
    assert _rows(gw) - before == 1, f"not one ledger row for {path} answered {r.status_code}"


@_settings(80)
@given(body=messages_body, data=st.data())
def test_fuzz_messages(gw: GatewayServer, http: httpx.Client, body: dict[str, Any], data: st.DataObject) -> None:
    before = _rows(gw)
    check(gw, MESSAGES, before, http.post(MESSAGES, json=_mutate(body, data)))


@_settings(80)
@given(body=responses_body, data=st.data())
def test_fuzz_responses(gw: GatewayServer, http: httpx.Client, body: dict[str, Any], data: st.DataObject) -> None:
    before = _rows(gw)
    check(gw, RESPONSES, before, http.post(RESPONSES, json=_mutate(body, data)))


@_settings(60)
@given(body=embeddings_body, data=st.data())
def test_fuzz_embeddings(gw: GatewayServer, http: httpx.Client, body: dict[str, Any], data: st.DataObject) -> None:
    before = _rows(gw)
    check(gw, EMBEDDINGS, before, http.post(EMBEDDINGS, json=_mutate(body, data)))


@_settings(60)
@given(path=st.sampled_from([MESSAGES, RESPONSES, EMBEDDINGS]),
       edits=st.lists(st.tuples(st.integers(0, 120), st.integers(0, 3), st.binary(max_size=4)), min_size=1,
                      max_size=3))
def test_fuzz_raw_bytes(gw: GatewayServer, http: httpx.Client, path: str, edits: list[tuple[int, int, bytes]]) -> None:
    valid = {MESSAGES: {"model": "chat", "max_tokens": 20, "messages": [{"role": "user", "content": "héllo"}]},
             RESPONSES: {"model": "chat", "input": [{"role": "user", "content": "héllo"}]},
             EMBEDDINGS: {"model": "emb", "input": ["héllo", "wörld"]}}[path]
    raw = orjson.dumps(valid)
    for at, drop, insert in edits:
        raw = raw[:at] + insert + raw[at + drop:]
    before = _rows(gw)
    check(gw, path, before, http.post(path, content=raw, headers={"content-type": "application/json"}))


def test_module_gateway_is_not_empty(gw: GatewayServer) -> None:
    """The fuzz tests above really reached the upstreams (not only refusals)."""
    rows = gw.rows()
    assert any(r["status"] == "ok" for r in rows) and any(r["status"] == "rejected" for r in rows)
