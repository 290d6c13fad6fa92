"""Property-based fuzzing of the gateway over real HTTP (hypothesis), against a real gateway on a healthy fake upstream.

For every generated request — JSON bodies with wrong types everywhere, huge numbers (beyond 64 bits, 1e308, NaN and
Infinity tokens), lone surrogates, deep nesting; raw bodies with random bytes spliced in (invalid UTF-8, broken
JSON); headers with arbitrary bytes (non-UTF-8, control characters, over-long); odd tier paths — the gateway must:

- never answer 5xx (the upstream is a healthy fake, so no 502/504 can be legitimate);
- answer every non-2xx in OpenAI's error shape (``{"error": {"message", "type", "param", "code"}}``);
- book exactly one ledger row for every chat request, carrying the id of the ``x-tierwise-request-id`` header;
  ``GET /v1/models`` books nothing unless refused at the protocol level.

Requests go out on a raw socket (byte-exact: no client library normalises or refuses what is sent). Examples are
derandomised (the same cases on every run, so CI cannot flake on a lucky draw); ``TIERWISE_FUZZ_EXAMPLES=N`` runs N
random examples per test instead, for a longer hunt.
"""

from __future__ import annotations

import copy
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for
from tests.schemas import validate

_LONG = int(os.environ.get("TIERWISE_FUZZ_EXAMPLES", "0"))


def _settings(examples: int) -> settings:
    return settings(
        max_examples=_LONG or examples,
        derandomize=not _LONG,
        database=None,  # nothing written to .hypothesis/
        deadline=None,  # real sockets: latency varies with the machine's load
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )


# -- the gateway under test ---------------------------------------------------------------------------------------


KEY = b"sk-fuzz-1"


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    with FakeUpstream() as openai_up, FakeUpstream() as anthropic_up:
        yield openai_up, anthropic_up


def _start(upstreams: tuple[FakeUpstream, FakeUpstream], tmp: Path, keys_env: str | None) -> GatewayServer:
    cfg = config_for(upstreams[0].base_url, tmp, anthropic_url=upstreams[1].base_url)
    cfg.models["small"].max_output = 4000
    cfg.server.body_timeout_s = 5.0
    cfg.server.api_keys_env = keys_env
    return GatewayServer(cfg).start()


@pytest.fixture(scope="module")
def fuzz_gateway(upstreams: tuple[FakeUpstream, FakeUpstream], tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[GatewayServer]:
    gw = _start(upstreams, tmp_path_factory.mktemp("fuzz-open"), None)
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def keyed_gateway(upstreams: tuple[FakeUpstream, FakeUpstream], tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[GatewayServer]:
    """The same gateway with API keys: the authentication path sees the fuzzed credentials."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TW_FUZZ_KEYS", f"fuzzer:{KEY.decode()}")
        gw = _start(upstreams, tmp_path_factory.mktemp("fuzz-keyed"), "TW_FUZZ_KEYS")
    try:
        yield gw
    finally:
        gw.stop()


def _rows(gw: GatewayServer) -> int:
    gw.flush_ledger()
    assert gw.svc is not None
    return gw.svc.ledger.store.count()


def _last_id(gw: GatewayServer) -> str:
    assert gw.svc is not None
    return gw.svc.ledger.store.tail(1)[-1]["id"]


# -- a byte-exact HTTP/1.1 client -----------------------------------------------------------------------------------


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


def send(port: int, method: bytes, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes | None
         ) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection (``Connection: close``); the whole answer, de-chunked."""
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if body is not None:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    data = b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    head, sep, payload = buf.partition(b"\r\n\r\n")
    assert sep, f"no complete answer: {buf[:300]!r}"
    status_line, *header_lines = head.split(b"\r\n")
    hdrs = {k.strip().lower().decode(): v.strip().decode("latin-1")
            for k, _, v in (ln.partition(b":") for ln in header_lines)}
    if hdrs.get("transfer-encoding", "").lower() == "chunked":
        payload = _dechunk(payload)
    return int(status_line.split()[1]), hdrs, payload


def check_answer(gw: GatewayServer, before: int, status: int, headers: dict[str, str], payload: bytes,
                 *, chat: bool) -> None:
    """The three invariants (see the module docstring)."""
    assert status < 500, f"gateway answered {status}: {payload[:500]!r}"
    assert b"Traceback" not in payload
    if status >= 300:
        assert headers.get("content-type", "").startswith("application/json"), headers
        validate(orjson.loads(payload), "ErrorResponse")
    elif headers.get("content-type", "").startswith("text/event-stream"):
        events = [ln[6:] for ln in payload.split(b"\n") if ln.startswith(b"data: ")]
        assert events and events[-1] == b"[DONE]", payload[-300:]
        for event in events[:-1]:
            assert "error" not in orjson.loads(event), event  # a healthy upstream never fails mid-stream
    elif chat:
        validate(orjson.loads(payload), "CreateChatCompletionResponse")
    else:
        validate(orjson.loads(payload), "ListModelsResponse")
    booked = _rows(gw) - before
    if chat:
        assert booked == 1, f"{booked} ledger rows for one chat request answered {status}"
    else:  # GET /v1/models books nothing, unless refused below the application (a malformed HTTP request)
        assert booked == (1 if "x-tierwise-request-id" in headers else 0), (booked, status, payload[:300])
    if booked:
        assert headers.get("x-tierwise-request-id") == _last_id(gw)


# -- strategies -----------------------------------------------------------------------------------------------------

MODELS = ["auto", "chat", "label", "cheap", "think", "small", "large", "fb", "claude", "", " ", "nope", "AUTO"]
ROLES = ["system", "developer", "user", "assistant", "tool", "function"]

text = st.text(max_size=12)  # any code point but lone surrogates (added per body, see test_fuzz_json_bodies)
big_ints = st.sampled_from([2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**15, 10**40])
numbers = st.one_of(
    st.integers(-3, 3000), big_ints, st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 5e-324, 1e308, -1e308, 5e-324, 0.0, float("nan"), float("inf")]),  # NaN, Infinity
)
scalars = st.one_of(st.none(), st.booleans(), numbers, text,
                    st.sampled_from(["NaN", "Infinity", "1e308", "1e999", "-0", "9" * 40, "0x10"]))
junk = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(text, kids, max_size=3),
                    max_leaves=6)
DEEP = "__tw_deep__"  # placeholder replaced by raw nesting (built as text: no recursion in the encoder)
deep = st.one_of(st.integers(1, 80), st.integers(1, 1100)).map(lambda d: f"{DEEP}{d}")

# Well-formed chat requests (each field of the right shape; values may still be absurd: huge limits, unknown
# models, empty strings). test_fuzz_json_bodies then replaces or deletes a few of their parts at random.
part = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": text}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": st.sampled_from(
        ["https://example.invalid/a.png", "data:image/png;base64,AAAA", "ftp://x", ""])})}),
)
tool_call = st.fixed_dictionaries({"id": text, "type": st.just("function"),
                                   "function": st.fixed_dictionaries({"name": text, "arguments": text})})
message = st.fixed_dictionaries(
    {"role": st.sampled_from(ROLES), "content": st.one_of(text, st.lists(part, max_size=3), st.none())},
    optional={"name": text, "tool_calls": st.lists(tool_call, max_size=2), "tool_call_id": text},
)
tool = st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": text}, optional={"parameters": st.just({"type": "object", "properties": {"q": {"type": "string"}}})})})
limit = st.one_of(st.integers(1, 5000), big_ints)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(MODELS),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "n": st.one_of(st.integers(1, 10), big_ints),
    "max_tokens": limit,
    "max_completion_tokens": limit,
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1),
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(0, 25),
    "stop": st.one_of(text, st.lists(text, max_size=3)),
    "tools": st.lists(tool, max_size=2),
    "tool_choice": st.sampled_from(["auto", "none", "required", {"type": "function", "function": {"name": "q"}}]),
    "response_format": st.sampled_from([{"type": "json_object"}, {"type": "text"}]),
    "user": text,
    "metadata": st.dictionaries(text, text, max_size=2),
    "seed": st.one_of(st.integers(), big_ints),
    "vendor_extension": st.one_of(junk, junk, deep),
}
chat_bodies = st.fixed_dictionaries({"messages": st.lists(message, min_size=1, max_size=3)}, optional=FIELDS)


def _slots(value: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in ``value``, depth first: the places a mutation can hit."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        out.append((value, key))
        _slots(child, out)
    return out


@st.composite
def mutated_bodies(draw: st.DrawFn) -> Any:
    """A well-formed chat request with 0-3 of its parts replaced by arbitrary JSON or deleted."""
    body = copy.deepcopy(draw(chat_bodies))  # just() and sampled_from() values are shared between draws
    for _ in range(draw(st.integers(0, 3))):
        slots = _slots(body, [])
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        if isinstance(container, dict) and draw(st.integers(0, 3)) == 0:
            del container[key]
        else:
            container[key] = draw(junk)
    return body


bodies = st.one_of(mutated_bodies(), mutated_bodies(), mutated_bodies(), junk)
# Lone surrogates, which no UTF-8 text can hold: JSON-escaped ("\ud800") or raw (invalid UTF-8 bytes). Any one of
# them anywhere makes the body unparseable, so a body gets at most one.
surrogates = st.one_of(st.none(), st.none(), st.none(), st.lists(st.integers(0xD800, 0xDFFF).map(chr), min_size=1,
                                                                 max_size=3).map("".join))


def encode(body: Any, ascii_only: bool) -> bytes:
    """JSON text of ``body`` the way a sloppy client might write it: stdlib json allows NaN/Infinity and big ints,
    and lone surrogates either escaped (ASCII) or written raw (invalid UTF-8)."""
    out = json.dumps(body, allow_nan=True, ensure_ascii=ascii_only)
    while DEEP in out:  # splice in raw nesting for the deep placeholders
        start = out.index(f'"{DEEP}')
        end = out.index('"', start + 1)
        depth = int(out[start + 1 + len(DEEP) : end])
        out = out[:start] + "[" * depth + "]" * depth + out[end + 1 :]
    return out.encode("utf-8", "surrogatepass")


def _header_value(raw: bytes) -> bytes:
    return raw.replace(b"\r", b"_").replace(b"\n", b"_")  # a CR/LF would start another header or request


# Header values a lenient parser lets through: anything but control characters, so non-UTF-8 bytes reach the
# gateway's own code.
parsable_values = st.one_of(
    st.binary(max_size=30).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F)),
    st.sampled_from([b"caf\xe9", b"\xff\xfe", b"\xed\xa0\x80", b"label", b"chat", b"Bearer \xe9", b"Bearer x",
                     b"Bearer " + KEY, KEY, b"Bearer " + KEY + b"\xe9", b"bearer  " + KEY + b" "]),
)
HEADER_NAMES = [b"X-Session-Id", b"X-Task", b"Authorization", b"x-api-key", b"Accept", b"User-Agent", b"X-Other"]
parsable_headers = st.lists(st.tuples(st.sampled_from(HEADER_NAMES), parsable_values), max_size=2)
# Any header: also control characters and invalid names (refused by the HTTP parser) and 9000-byte values.
header_values = st.one_of(
    parsable_values, parsable_values, st.binary(max_size=30).map(_header_value),
    st.integers(200, 9000).map(lambda n: b"A" * n),
)
header_name = st.one_of(
    *[st.sampled_from(HEADER_NAMES)] * 4,
    st.binary(min_size=1, max_size=8).map(_header_value).filter(lambda n: b":" not in n and n.strip() == n),
)
header_lists = st.lists(st.tuples(header_name, header_values), max_size=3)
_SAFE = b"abcdefghijklmnopqrstuvwxyz0123456789-_~"


def _segment(raw: bytes) -> bytes:
    """A tier path segment that still routes to the tier endpoint: unreserved bytes as they are, every other byte
    percent-encoded except '.' and '/' (dot segments and slashes would change the path itself)."""
    seg = b"".join(bytes([c]) if c in _SAFE else b"%%%02X" % c for c in raw if c not in b"./")
    return seg or b"x"


paths = st.one_of(
    st.just(b"/v1/chat/completions"),
    st.sampled_from([b"label", b"chat", b"cheap", b"think", b"nope"]).map(lambda t: b"/v1/tiers/" + t + b"/chat/completions"),
    st.binary(min_size=1, max_size=12).map(lambda b: b"/v1/tiers/" + _segment(b) + b"/chat/completions"),
    st.sampled_from([b"\xe9", b"caf\xe9", b"a b"]).map(lambda t: b"/v1/tiers/" + t + b"/chat/completions"),
)


# -- the properties -------------------------------------------------------------------------------------------------


@_settings(250)
@given(body=bodies, ascii_only=st.booleans(), poison=surrogates, headers=parsable_headers)
def test_fuzz_json_bodies(fuzz_gateway: GatewayServer, body: Any, ascii_only: bool, poison: str | None,
                          headers: list[tuple[bytes, bytes]]) -> None:
    if poison is not None:
        body = {"poison": poison, **body} if isinstance(body, dict) else [poison, body]
    before = _rows(fuzz_gateway)
    status, got, payload = send(fuzz_gateway.port, b"POST", b"/v1/chat/completions",
                                [(b"Content-Type", b"application/json"), *headers], encode(body, ascii_only))
    check_answer(fuzz_gateway, before, status, got, payload, chat=True)


VALID = orjson.dumps({"model": "chat", "messages": [{"role": "user", "content": "héllo"}], "max_tokens": 20,
                      "stream": False, "tools": [{"type": "function", "function": {"name": "q"}}]})


@_settings(100)
@given(edits=st.lists(st.tuples(st.integers(0, len(VALID)), st.integers(0, 3), st.binary(max_size=4)), min_size=1,
                      max_size=4),
       cut=st.one_of(st.none(), st.integers(0, len(VALID))))
def test_fuzz_raw_bodies(fuzz_gateway: GatewayServer, edits: list[tuple[int, int, bytes]], cut: int | None) -> None:
    """A valid body with random bytes replaced, inserted or cut off: invalid UTF-8, broken JSON, truncation."""
    raw = VALID
    for at, drop, insert in edits:
        raw = raw[:at] + insert + raw[at + drop :]
    if cut is not None:
        raw = raw[:cut]
    before = _rows(fuzz_gateway)
    status, got, payload = send(fuzz_gateway.port, b"POST", b"/v1/chat/completions", [], raw)
    check_answer(fuzz_gateway, before, status, got, payload, chat=True)


@_settings(150)
@given(path=paths, headers=header_lists, stream=st.booleans(), keyed=st.booleans())
def test_fuzz_headers_and_paths(fuzz_gateway: GatewayServer, keyed_gateway: GatewayServer, path: bytes,
                                headers: list[tuple[bytes, bytes]], stream: bool, keyed: bool) -> None:
    gw = keyed_gateway if keyed else fuzz_gateway
    body = orjson.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": stream})
    before = _rows(gw)
    status, got, payload = send(gw.port, b"POST", path, headers, body)
    check_answer(gw, before, status, got, payload, chat=True)


@_settings(60)
@given(headers=header_lists, keyed=st.booleans())
def test_fuzz_models(fuzz_gateway: GatewayServer, keyed_gateway: GatewayServer, headers: list[tuple[bytes, bytes]],
                     keyed: bool) -> None:
    gw = keyed_gateway if keyed else fuzz_gateway
    before = _rows(gw)
    status, got, payload = send(gw.port, b"GET", b"/v1/models", headers, None)
    check_answer(gw, before, status, got, payload, chat=False)
