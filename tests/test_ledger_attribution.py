"""Ledger schema version 2 (attribution): the new columns, an older ledger migrated in place with its rows kept,
rows an older tierwise left in journals and fallback files, and interrupted requests attributed from their begin
line."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import orjson

from tests.test_ledger_store import make_record
from tierwise.ledger import (
    COLUMN_NAMES,
    SCHEMA_VERSION,
    Journal,
    LedgerWriter,
    SQLiteLedgerStore,
    import_unwritten,
    replay_orphans,
)
from tierwise.ledger.store import ADDED_COLUMNS, APPLICATION_ID
from tierwise.types import LedgerRecord

# The version-1 layout exactly as tierwise created it (frozen: a file written by an older tierwise looks like this).
V1_COLUMNS = (
    "id", "ts", "principal", "tier", "tier_source", "requested_model", "model", "attempts", "input_tokens",
    "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "cost_usd", "cost_breakdown",
    "estimated_cost_usd", "ttft_ms", "latency_ms", "fallbacks", "escalations", "session_id", "stream", "status",
    "http_status", "error", "notes",
)
V1_SCHEMA = """
CREATE TABLE requests (
  id TEXT NOT NULL UNIQUE, ts REAL, principal TEXT, tier TEXT, tier_source TEXT, requested_model TEXT, model TEXT,
  attempts TEXT, input_tokens INTEGER, output_tokens INTEGER, cache_read_tokens INTEGER, cache_write_tokens INTEGER,
  reasoning_tokens INTEGER, cost_usd REAL, cost_breakdown TEXT, estimated_cost_usd REAL, ttft_ms REAL,
  latency_ms REAL, fallbacks INTEGER, escalations INTEGER, session_id TEXT, stream INTEGER, status TEXT,
  http_status INTEGER, error TEXT, notes TEXT
);
CREATE INDEX requests_ts ON requests (ts);
CREATE INDEX requests_principal ON requests (principal, ts);
CREATE INDEX requests_tier ON requests (tier, ts);
CREATE INDEX requests_model ON requests (model, ts);
"""


def v1_row(i: int) -> dict:
    """A row as tierwise wrote it before attribution: the version-1 columns only."""
    row = make_record(i).as_row()
    return {k: row[k] for k in V1_COLUMNS}


def unattributed(i: int) -> dict:
    return {**v1_row(i), "key_id": None, "customer": None, "department": None, "project": None, "tags": {},
            "revenue_usd": None, "arm": None}


def make_v1_file(path: Path, n: int) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute("PRAGMA user_version=1")
    for i in range(n):
        row = v1_row(i)
        values = [orjson.dumps(v).decode() if isinstance(v, list | dict) else int(v) if isinstance(v, bool) else v
                  for v in row.values()]
        conn.execute(f"INSERT INTO requests ({', '.join(V1_COLUMNS)}) VALUES ({', '.join('?' * len(V1_COLUMNS))})",
                     values)
    conn.commit()
    conn.close()


def schema_of(path: Path) -> tuple[list, list]:
    conn = sqlite3.connect(path)
    try:
        cols = conn.execute("PRAGMA table_info(requests)").fetchall()
        idx = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                           "ORDER BY name").fetchall()
        return cols, idx
    finally:
        conn.close()


def test_the_row_carries_attribution_last_in_column_order() -> None:
    row = LedgerRecord(id="x", ts=1.0, key_id="k1", customer="acme", department="search", project="p",
                       tags={"team": "search"}).as_row()
    assert list(row) == list(COLUMN_NAMES)
    assert list(COLUMN_NAMES[-7:]) == ["key_id", "customer", "department", "project", "tags", "revenue_usd", "arm"]
    assert COLUMN_NAMES[:len(V1_COLUMNS)] == V1_COLUMNS  # version-1 CSV columns keep their positions
    assert (row["key_id"], row["customer"], row["department"], row["project"], row["tags"]) == (
        "k1", "acme", "search", "p", {"team": "search"})
    assert LedgerRecord(id="y", ts=1.0).as_row()["tags"] == {}


def test_a_version_1_ledger_is_migrated_in_place_with_its_rows_kept(tmp_path: Path) -> None:
    old = tmp_path / "v1.db"
    make_v1_file(old, 50)
    store = SQLiteLedgerStore(old)
    try:
        assert list(store.iter_rows()) == [unattributed(i) for i in range(50)]  # every old row, unattributed
        store.write_batch([make_record(50).as_row()])  # and new rows carry attribution
        assert store.tail(1) == [make_record(50).as_row()]
        assert store.count() == 51
    finally:
        store.close()
    conn = sqlite3.connect(old)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    plan = " ".join(str(r) for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT count(*) FROM requests WHERE customer = 'a' AND ts >= 0").fetchall())
    conn.close()
    assert "requests_customer" in plan
    fresh = tmp_path / "new.db"
    SQLiteLedgerStore(fresh).close()
    assert schema_of(old)[0] == schema_of(fresh)[0]  # same columns, types, defaults, in the same order
    assert [n for n, _ in schema_of(old)[1]] == [n for n, _ in schema_of(fresh)[1]] == [
        "requests_arm", "requests_customer", "requests_department", "requests_model", "requests_principal",
        "requests_project", "requests_tier", "requests_ts"]
    migrated = schema_of(old)
    SQLiteLedgerStore(old).close()  # opening again changes nothing
    assert schema_of(old) == migrated


def test_a_failed_migration_leaves_the_version_1_file_as_it_was(tmp_path: Path) -> None:
    old = tmp_path / "v1.db"
    make_v1_file(old, 3)
    conn = sqlite3.connect(old)
    conn.execute("CREATE INDEX requests_project ON requests (ts)")  # in the way of the migration's index
    conn.commit()
    conn.close()
    before = schema_of(old)
    try:
        SQLiteLedgerStore(old).close()
    except sqlite3.OperationalError as exc:
        assert "requests_project" in str(exc)
    else:
        raise AssertionError("the migration should have failed")
    assert schema_of(old) == before  # one transaction: no column half-added
    conn = sqlite3.connect(old)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 3
    conn.close()


def test_rows_an_older_tierwise_left_in_a_fallback_file_or_journal_are_stored(tmp_path: Path) -> None:
    store = SQLiteLedgerStore(tmp_path / "l.db")
    try:
        fallback = tmp_path / "l.db.unwritten.jsonl"
        fallback.write_text(json.dumps(v1_row(1)) + "\n")
        assert import_unwritten(store, fallback) == 1
        jdir = tmp_path / "j"
        jdir.mkdir()
        begin = {k: v for k, v in v1_row(3).items()
                 if k in ("id", "ts", "principal", "tier", "tier_source", "requested_model", "session_id", "stream",
                          "estimated_cost_usd", "notes")}
        (jdir / "seg-1-1-000000.jsonl").write_text(
            json.dumps(v1_row(2)) + "\n" + json.dumps({**begin, "status": "in_flight"}) + "\n")
        report = replay_orphans(jdir, store)
        assert (report.records, report.interrupted) == (1, 1)
        rows = {r["id"]: r for r in store.iter_rows()}
        assert rows[v1_row(1)["id"]] == unattributed(1) and rows[v1_row(2)["id"]] == unattributed(2)
        assert {k: rows[v1_row(3)["id"]][k] for k in ADDED_COLUMNS} == ADDED_COLUMNS
        assert rows[v1_row(3)["id"]]["status"] == "interrupted"
    finally:
        store.close()


def test_an_interrupted_request_is_attributed_from_its_begin_line(tmp_path: Path) -> None:
    store = SQLiteLedgerStore(tmp_path / "l.db")
    jdir = tmp_path / "j"
    journal = Journal(jdir)
    w = LedgerWriter(store, flush_interval_ms=3_600_000, journal=journal)
    rec = LedgerRecord(id="r-1", ts=1_700_000_000.0, principal="team-a", key_id="k-a", customer="acme",
                       department="search", project="summarise", tags={"team": "search", "feature": "summarise"},
                       estimated_cost_usd=0.5)
    w.begin(rec)
    begin = json.loads(next(jdir.glob("seg-*.jsonl")).read_text())
    assert "revenue_usd" not in begin  # an interrupted request was not answered: it earns nothing
    assert {k: begin[k] for k in ADDED_COLUMNS if k != "revenue_usd"} == {
        "key_id": "k-a", "customer": "acme", "department": "search", "project": "summarise",
        "tags": {"team": "search", "feature": "summarise"}, "arm": None}
    # the process dies here: its journal segment stays, its lock gone, for the next start to replay
    for seg in journal._segments:
        os.close(seg.fd)
    journal._segments.clear()
    report = replay_orphans(jdir, store)
    assert report.interrupted == 1
    (row,) = list(store.iter_rows())
    assert row["status"] == "interrupted" and row["cost_usd"] == 0.5
    assert (row["principal"], row["key_id"], row["customer"], row["department"], row["project"], row["tags"]) == (
        "team-a", "k-a", "acme", "search", "summarise", {"team": "search", "feature": "summarise"})
    w.close()
    store.close()
