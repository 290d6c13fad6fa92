"""Prompt/answer capture and POST /v1/feedback through a real gateway (fake upstream), SQLite and PostgreSQL."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for
from tierwise.rollout.capture import feedback_scores, iter_captured, open_rollout_store, purge, store_path
from tierwise.rollout.records import Captured, Feedback

CAPTURE = """rollout:
  capture: {enabled: true, tiers: [chat, label], tier_rates: {label: 0.0}, retention_days: 7,
            redact: ['sk-[A-Za-z0-9]{8,}', 'secret-\\d+']}
"""


def _gateway(upstream: FakeUpstream, tmp: Path, extra: str = CAPTURE) -> GatewayServer:
    return GatewayServer(config_for(upstream.base_url, tmp, extra=extra)).start()


@pytest.fixture
def gw(upstream: FakeUpstream, tmp_path: Path) -> Iterator[GatewayServer]:
    g = _gateway(upstream, tmp_path)
    try:
        yield g
    finally:
        g.stop()


def _client(g: GatewayServer, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=g.base_url, api_key=key, max_retries=0, timeout=20)


def _ask(c: openai.OpenAI, model: str, text: str, **kw: object) -> tuple[str, str]:
    """(tierwise request id, answer) of one chat request."""
    raw = c.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": text}],
                                                      **kw)  # type: ignore[call-overload]
    return raw.headers["x-tierwise-request-id"], raw.parse().choices[0].message.content or ""


def _flush(g: GatewayServer) -> None:
    assert g.svc is not None and g.svc.capture is not None
    g.flush_ledger()
    assert g.svc.capture.flush(10)


def test_capture_is_sampled_per_tier_redacted_and_joins_the_ledger(gw: GatewayServer) -> None:
    c = _client(gw)
    rid1, answer1 = _ask(c, "chat", "my key is sk-ABCDEFGH12345 and code secret-42, fix it", temperature=0.2)
    raw = c.chat.completions.with_raw_response.create(model="chat", messages=[{"role": "user", "content": "s"}],
                                                      stream=True)
    rid2 = raw.headers["x-tierwise-request-id"]
    chunks = list(raw.parse())
    c.chat.completions.create(model="label", messages=[{"role": "user", "content": "rate 0 tier"}])
    c.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "tier not captured"}])
    _flush(gw)
    got = list(iter_captured(gw.cfg))
    assert [g.tier for g in got] == ["chat", "chat"]  # label: rate 0; cheap: not in tiers
    first = got[0]
    assert first.request_id == rid1
    assert "sk-ABCDEFGH" not in str(first.messages) and "secret-42" not in str(first.messages)
    assert first.messages[0]["content"] == "my key is [REDACTED] and code [REDACTED], fix it"
    assert first.answer == answer1 and first.params["temperature"] == 0.2
    assert first.body()["messages"] == first.messages and "stream" not in got[1].params
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert got[1].answer == streamed and got[1].request_id == rid2
    ledger_ids = {r["id"] for r in gw.rows()}
    assert {g.request_id for g in got} <= ledger_ids
    assert store_path(gw.cfg).name == "ledger.rollout.db"


def test_capture_off_by_default_stores_nothing(upstream: FakeUpstream, tmp_path: Path) -> None:
    g = _gateway(upstream, tmp_path, extra="")
    try:
        assert g.svc is not None and g.svc.capture is None
        _client(g).chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        g.flush_ledger()
    finally:
        g.stop()
    assert not store_path(g.cfg).exists()


def test_purge_drops_captures_past_retention(tmp_path: Path, upstream: FakeUpstream) -> None:
    cfg = config_for(upstream.base_url, tmp_path, extra=CAPTURE)
    store = open_rollout_store(cfg)
    now = time.time()
    store.write_captures([Captured(f"r{i}", now - days * 86400, "chat", "large", "p", [{"role": "user",
                                   "content": "x"}]) for i, days in enumerate((1, 6, 8, 30))])
    store.close()
    assert purge(cfg) == 2
    assert [c.request_id for c in iter_captured(cfg)] == ["r1", "r0"]
    assert purge(cfg, older_than_days=0.5) == 2


def _post(g: GatewayServer, body: object, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{g.base_url}/feedback", json=body, headers=headers, timeout=10)


def test_feedback_is_stored_idempotently_and_bad_input_is_refused(gw: GatewayServer) -> None:
    rid, _ = _ask(_client(gw), "chat", "q")
    r = _post(gw, {"request_id": rid, "thumbs": "up", "comment": "mail me at a@b.example, key sk-QQQQQQQQQQ"})
    assert r.status_code == 200 and r.json() == {"object": "feedback", "request_id": rid, "source": "user",
                                                 "created": True}
    r = _post(gw, {"request_id": rid, "thumbs": "down"})  # same source again: replaces, not a second row
    assert r.status_code == 200 and r.json()["created"] is False
    assert _post(gw, {"request_id": rid, "source": "judge:large", "score": 0.75, "label": "ok"}).json()["created"]
    store = open_rollout_store(gw.cfg)
    fbs = sorted(store.iter_feedback(), key=lambda f: f.source)
    store.close()
    assert [(f.source, f.thumbs, f.score) for f in fbs] == [("judge:large", None, 0.75), ("user", -1, None)]
    assert fbs[1].comment is None
    assert feedback_scores(gw.cfg) == {rid: pytest.approx(0.375)}
    assert feedback_scores(gw.cfg, sources=["user"]) == {rid: 0.0}

    unknown = _post(gw, {"request_id": "chatcmpl-nope", "score": 1})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "request_not_found" and unknown.json()["error"]["param"] == "request_id"
    for body, param in (({"score": 1}, "request_id"), ({"request_id": rid}, None),
                        ({"request_id": rid, "score": 1.5}, "score"), ({"request_id": rid, "score": True}, "score"),
                        ({"request_id": rid, "thumbs": "sideways"}, "thumbs"), ({"request_id": rid, "stars": 5}, "stars"),
                        ({"request_id": 7, "score": 1}, "request_id"), ({"request_id": rid, "label": "x" * 201}, "label")):
        bad = _post(gw, body)
        assert bad.status_code == 400, body
        assert bad.json()["error"]["code"] == "invalid_feedback" and bad.json()["error"]["param"] == param
    raw = httpx.post(f"{gw.base_url}/feedback", content=b"[1,", headers={"content-type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"


def test_feedback_right_after_the_answer_finds_the_unflushed_record(upstream: FakeUpstream, tmp_path: Path) -> None:
    g = _gateway(upstream, tmp_path)
    try:
        assert g.svc is not None
        g.svc.cfg.ledger.flush_interval_ms = 5000  # the writer would not write for seconds on its own
        rid, _ = _ask(_client(g), "chat", "q")
        assert _post(g, {"request_id": rid, "score": 1}).status_code == 200
    finally:
        g.stop()


def test_feedback_is_authenticated_and_scoped_to_the_caller(upstream: FakeUpstream, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TW_FB_KEYS", "alice:key-alice-123,bob:key-bob-456")
    g = _gateway(upstream, tmp_path, extra=CAPTURE.replace("rollout:", "server: {api_keys_env: TW_FB_KEYS}\nrollout:"))
    try:
        rid, _ = _ask(_client(g, "key-alice-123"), "chat", "q")
        assert _post(g, {"request_id": rid, "score": 1}).status_code == 401
        assert _post(g, {"request_id": rid, "score": 1}, key="wrong-key").status_code == 401
        assert _post(g, {"request_id": rid, "score": 1}, key="key-bob-456").status_code == 404  # not bob's request
        assert _post(g, {"request_id": rid, "score": 1}, key="key-alice-123").status_code == 200
    finally:
        g.stop()


# -- PostgreSQL: the store lives in the ledger's database ----------------------------------------------------

psycopg = pytest.importorskip("psycopg")
BASE_DSN = os.environ.get("TIERWISE_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")


@pytest.fixture
def pg_schema() -> Iterator[str]:
    schema = f"tw_rollout_{uuid.uuid4().hex[:10]}"
    yield schema
    with psycopg.connect(BASE_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_postgres_gateway_captures_and_takes_feedback(upstream: FakeUpstream, tmp_path: Path, pg_schema: str) -> None:
    cfg = config_for(upstream.base_url, tmp_path, extra=CAPTURE)
    cfg.ledger.backend, cfg.ledger.dsn, cfg.ledger.pg_schema = "postgres", BASE_DSN, pg_schema
    g = GatewayServer(cfg).start()
    try:
        rid, _ = _ask(_client(g), "chat", "pg sk-ZZZZZZZZZZ \u00fc")
        _flush(g)
        got = list(iter_captured(cfg, tiers=["chat"]))
        assert [c.request_id for c in got] == [rid] and got[0].messages[0]["content"] == "pg [REDACTED] \u00fc"
        assert _post(g, {"request_id": rid, "score": 0.5}).json()["created"] is True
        assert _post(g, {"request_id": rid, "score": 0.25}).json()["created"] is False
        assert _post(g, {"request_id": "nope", "score": 0.5}).status_code == 404
    finally:
        g.stop()
    assert feedback_scores(cfg) == {rid: 0.25}
    store = open_rollout_store(cfg)
    try:
        assert store.count_captured() == 1 and store.count_feedback() == 1
        assert store.put_feedback(Feedback(rid, "judge:x", time.time(), thumbs=1)) is True
        assert store.purge(time.time() + 1) == 1
    finally:
        store.close()


def test_a_broken_capture_store_never_fails_a_request(upstream: FakeUpstream, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")  # the store's parent is a file: every open fails
    extra = f'rollout: {{path: "{blocker / "r.db"}", capture: {{enabled: true}}}}\n'
    g = _gateway(upstream, tmp_path, extra=extra)
    try:
        c = _client(g)
        for _ in range(3):
            assert c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}]).choices
        assert g.svc is not None and g.svc.capture is not None
        assert g.svc.capture.flush(10)
        assert g.svc.capture.dropped == 3 and g.svc.capture.captured == 0
        assert len(g.rows()) == 3  # the ledger has every request
    finally:
        g.stop()


def test_capture_queue_full_drops_instead_of_blocking(tmp_path: Path, upstream: FakeUpstream) -> None:
    from tierwise.rollout.capture import Capturer
    from tierwise.rollout.config import CaptureConfig
    from tierwise.types import LedgerRecord

    cfg = config_for(upstream.base_url, tmp_path)
    cap = Capturer(CaptureConfig(enabled=True, queue_max=2), lambda: open_rollout_store(cfg))
    cap._started = True  # the writer thread is not running: the queue fills
    body = {"model": "chat", "messages": [{"role": "user", "content": "x"}]}
    offered = [cap.offer(LedgerRecord(id=f"r{i}", ts=time.time(), tier="chat"), body, "a") for i in range(5)]
    assert offered == [True, True, False, False, False] and cap.dropped == 3
    assert not cap.offer(LedgerRecord(id="e", ts=time.time(), tier="chat", status="error"), body, None)


def test_check_config_names_bad_capture_settings(tmp_path: Path, upstream: FakeUpstream,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from tests.rollout_data import config_file
    from tierwise.cli import main

    cfg = config_for(upstream.base_url, tmp_path,
                     extra="rollout: {capture: {enabled: true, tiers: [chat, chta], tier_rates: {lable: 0.5}}}\n")
    path = config_file(cfg, tmp_path / "tierwise.yaml")
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "rollout.capture.tiers[1]" in err and "unknown tier 'chta'" in err
    assert "rollout.capture.tier_rates.lable" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("tiers:\n    - chat\n    - chta", "redact: ['(unclosed']"))
    assert main(["check-config", str(bad)]) == 1
    assert "is not a regular expression" in capsys.readouterr().err


def test_default_redaction_patterns() -> None:
    from tierwise.rollout.capture import Redactor
    from tierwise.rollout.config import DEFAULT_REDACT

    r = Redactor(list(DEFAULT_REDACT), 1000)
    text = ("key sk-proj-abcdefghijklmnop1234, aws AKIAABCDEFGHIJKLMNOP, Authorization: Bearer abcdefghijklmnopqrstu, "
            "mail jane.doe+x@example.co.uk, nul\x00here")
    assert r.text(text) == ("key [REDACTED], aws [REDACTED], Authorization: [REDACTED], mail [REDACTED], "
                            "nul\ufffdhere")
    assert r.json({"messages": [{"content": ["sk-abcdefghijklmnopqrst"]}], "n": 2}) == \
        {"messages": [{"content": ["[REDACTED]"]}], "n": 2}
    assert len(Redactor([], 1000).text("x" * 5000)) <= 1000


def test_capture_purge_cli(tmp_path: Path, upstream: FakeUpstream, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.rollout_data import config_file
    from tierwise.cli import main

    cfg = config_for(upstream.base_url, tmp_path, extra=CAPTURE)
    path = config_file(cfg, tmp_path / "tierwise.yaml")
    store = open_rollout_store(cfg)
    now = time.time()
    store.write_captures([Captured(f"r{d}", now - d * 86400, "chat", "large", "p", []) for d in (1, 3, 10)])
    store.close()
    assert main(["capture", "purge", "-c", str(path)]) == 0  # retention_days: 7
    assert capsys.readouterr().out.strip() == "purged 1 capture(s)"
    assert main(["capture", "purge", "-c", str(path), "--older-than", "2"]) == 0
    assert capsys.readouterr().out.strip() == "purged 1 capture(s)"
    assert [c.request_id for c in iter_captured(cfg)] == ["r1"]
