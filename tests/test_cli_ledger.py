"""`tierwise ledger tail/export` and `tierwise price` on a real ledger written by a real gateway."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai

from tests.harness import GatewayServer


def tw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tierwise.cli", *args], capture_output=True, text=True, timeout=60)


def test_tail_and_export(client: openai.OpenAI, gateway: GatewayServer, tmp_path: Path) -> None:
    for tier in ("chat", "label", "chat"):
        client.chat.completions.create(model=tier, messages=[{"role": "user", "content": "hi"}])
    ids = [r["id"] for r in gateway.rows()]
    db = str(tmp_path / "ledger.db")
    tail = tw("ledger", "tail", "--db", db, "-n", "2")
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.strip().splitlines()
    assert len(lines) == 3 and "label(model)" in tail.stdout and "chat(model)" in lines[-1]
    out = tmp_path / "x.jsonl"
    exp = tw("ledger", "export", "--db", db, "--format", "jsonl", "-o", str(out))
    assert exp.returncode == 0, exp.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ids
    assert rows[0]["attempts"][0]["model"] == "large"
    csv_out = tw("ledger", "export", "--db", db, "--format", "csv", "--since", str(rows[1]["ts"]))
    table = list(csv.DictReader(io.StringIO(csv_out.stdout)))
    assert [r["id"] for r in table] == ids[1:]
    assert float(table[0]["cost_usd"]) == rows[1]["cost_usd"]


def test_price_command(tmp_path: Path) -> None:
    cfg = tmp_path / "t.yaml"
    cfg.write_text("""
providers: {up: {format: openai, base_url: "http://127.0.0.1:9/v1"}}
models:
  big: {provider: up, price: {input: 2.5, output: 10, cache_read: 1.25}}
tiers: {chat: {models: [big]}}
default_tier: chat
fallback_model: big
""")
    r = tw("price", "--config", str(cfg), "big", "--input", "86", "--cache-read", "1920", "--output", "300")
    assert r.returncode == 0, r.stderr
    assert "$0.005615" in r.stdout and "config" in r.stdout
    bad = tw("price", "--config", str(cfg), "nope")
    assert bad.returncode == 1 and "unknown model 'nope'" in bad.stderr


NASTY: dict[str, Any] = {
    "principal": "=HYPERLINK(\"http://evil.example\",\"click\")",
    "tier": "\x9b31mred",  # C1 CSI: an escape sequence in one character
    "requested_model": "@SUM(A1:A9)",
    "session_id": "-2+3\x1b]0;pwned\x07",
    "error": "line one\r\nline two\twith tab\x1b[2J\x00\x7f \u202eevil\u2066 \u2028",
    "notes": ["+cmd|' /C calc'!A0", "note \x85 with NEL"],
}


def _nasty_ledger(tmp_path: Path) -> tuple[str, dict]:
    from tierwise.ledger import SQLiteLedgerStore
    from tierwise.types import LedgerRecord

    rec = LedgerRecord(id="chatcmpl-nasty", ts=1_700_000_000.5, status="rejected", http_status=400)
    row = {**rec.as_row(), **NASTY}
    db = tmp_path / "nasty.db"
    store = SQLiteLedgerStore(db)
    store.write_batch([row])
    store.close()
    return str(db), row


def test_csv_export_neutralises_control_characters_and_formulas(tmp_path: Path) -> None:
    db, _ = _nasty_ledger(tmp_path)
    r = tw("ledger", "export", "--db", db, "--format", "csv")
    assert r.returncode == 0, r.stderr
    text = r.stdout
    lines = text.split("\n")
    assert len(lines) == 3 and lines[2] == ""  # header, one record on one line, final newline
    bad = [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F
           or c in "\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"]
    assert bad == []
    cell = next(csv.DictReader(io.StringIO(text)))
    assert cell["principal"] == "'" + NASTY["principal"]  # shown as text, never evaluated
    assert cell["requested_model"] == "'@SUM(A1:A9)"
    assert cell["session_id"].startswith("'-2+3")
    assert cell["tier"] == "\ufffd31mred"
    assert cell["error"].startswith("line one  line two with tab\ufffd[2J")
    assert cell["ts"] == "1700000000.5" and cell["http_status"] == "400"  # numbers stay numbers
    assert json.loads(cell["notes"].lstrip("'")) == ["+cmd|' /C calc'!A0", "note \ufffd with NEL"]


def test_jsonl_export_is_exact_and_has_no_raw_control_characters(tmp_path: Path) -> None:
    db, row = _nasty_ledger(tmp_path)
    r = tw("ledger", "export", "--db", db, "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == row  # exact: every value decodes back as it was stored
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029\u202e\u2066" for c in lines[0])


def test_tail_neutralises_control_characters(tmp_path: Path) -> None:
    db, _ = _nasty_ledger(tmp_path)
    r = tw("ledger", "tail", "--db", db)
    assert r.returncode == 0, r.stderr
    assert not any((ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F for c in r.stdout)


def test_tail_follow_prints_records_written_late_with_an_earlier_start(tmp_path: Path) -> None:
    """Records are written when requests end: one that started before the last printed record but was written after
    it must still be printed (the follower tracks the insertion sequence, not ts)."""
    import queue
    import signal
    import threading
    import time

    from tierwise.ledger import SQLiteLedgerStore
    from tierwise.types import LedgerRecord

    def row(rid: str, ts: float, status: str = "ok") -> dict:
        return LedgerRecord(id=rid, ts=ts, status=status).as_row()

    db = tmp_path / "follow.db"
    store = SQLiteLedgerStore(db)
    store.write_batch([row("req-a", 1000.0), row("req-b", 2000.0)])
    proc = subprocess.Popen([sys.executable, "-m", "tierwise.cli", "ledger", "tail", "-f", "--interval", "0.05",
                             "--db", str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, ""):
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()

    def seen_until(pred, timeout: float = 20.0) -> list[str]:  # type: ignore[no-untyped-def]
        got: list[str] = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                got.append(lines.get(timeout=0.2))
            except queue.Empty:
                continue
            if pred(got):
                return got
        raise AssertionError(f"not printed in time: {got}")

    try:
        first = seen_until(lambda g: any("req-b" in x for x in g))
        assert any("req-a" in x for x in first)
        store.write_batch([row("req-c-older", 1500.0)])  # started before req-b, written after it was printed
        store.write_batch([row("req-d", 3000.0)])
        later = seen_until(lambda g: any("req-d" in x for x in g))
        assert any("req-c-older" in x for x in later)
        assert not any("req-a" in x or "req-b" in x for x in later)  # nothing shown twice
        store.write_batch([row("req-b", 2000.0, status="error")])  # a record replaced by id is shown again
        again = seen_until(lambda g: any("req-b" in x for x in g))
        assert "error" in next(x for x in again if "req-b" in x)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        store.close()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


def test_rows_after_follows_insertion_order_in_both_stores(tmp_path: Path) -> None:
    from tierwise.ledger import MemoryLedgerStore, SQLiteLedgerStore
    from tierwise.types import LedgerRecord

    for store in (MemoryLedgerStore(), SQLiteLedgerStore(tmp_path / "seq.db")):
        assert store.rows_after(None, 5) == [] and store.rows_after(0, 5) == []
        store.write_batch([LedgerRecord(id="a", ts=3.0).as_row(), LedgerRecord(id="b", ts=2.0).as_row()])
        (seq, last), = store.rows_after(None, 1)
        assert last["id"] == "b"
        store.write_batch([LedgerRecord(id="c", ts=1.0).as_row()])
        store.write_batch([LedgerRecord(id="a", ts=4.0).as_row()])  # replaced: a new, higher sequence number
        after = store.rows_after(seq, 10)
        assert [r["id"] for _, r in after] == ["c", "a"] and after[0][0] > seq and after[1][0] > after[0][0]
        assert [r["id"] for _, r in store.rows_after(seq, 1)] == ["c"]
        assert [r["id"] for _, r in store.rows_after(0, 10)] == ["b", "c", "a"]
        assert [r["id"] for _, r in store.rows_after(None, 2)] == ["c", "a"]
        store.close()
