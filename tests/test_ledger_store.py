"""Ledger stores and exports against real SQLite files."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import threading

import pytest

from tierwise.config.schema import LedgerConfig
from tierwise.ledger import (
    COLUMN_NAMES,
    SCHEMA_VERSION,
    LedgerSchemaError,
    LedgerStore,
    MemoryLedgerStore,
    SQLiteLedgerStore,
    export_rows,
    format_tail,
    import_unwritten,
    open_store,
)
from tierwise.types import Attempt, Cost, LedgerRecord, Usage


def make_record(i: int, ts: float | None = None, **over: object) -> LedgerRecord:
    """A record with every field set to a non-default value, so a dropped column cannot go unnoticed."""
    rec = LedgerRecord(
        id=f"req-{i:05d}",
        ts=1_700_000_000.123456 + i if ts is None else ts,
        principal=f"team-{i % 3}",
        tier="code",
        tier_source="header",
        requested_model="auto",
        model="gpt-4o-mini",
        attempts=[
            Attempt("claude-haiku", "rate_limit", status=429, error="slow down", latency_ms=12.3456, retry=1),
            Attempt("gpt-4o-mini", "ok", status=200, latency_ms=345.6, usage=Usage(100, 20, 5, 1, 3), cost_usd=1e-5),
        ],
        usage=Usage(100 + i, 20, 5, 1, 3),
        cost=Cost(0.0001, 0.0002, 0.00003, 0.000004, 0.0000005),
        estimated_cost_usd=0.000321,
        ttft_ms=88.25,
        latency_ms=412.5,
        fallbacks=1,
        escalations=2,
        session_id="sess-1",
        stream=True,
        status="ok",
        http_status=200,
        error="none really, ünïcødé ✓",
        notes=["max_tokens raised to floor 4096", "re-pinned: a → b"],
        key_id=f"key-{i % 4}",
        customer=f"cust-{i % 2}",
        department="search",
        project="summarise ✓",
        tags={"team": "search", "feature": f"f{i % 3}"},
    )
    for k, v in over.items():
        setattr(rec, k, v)
    return rec


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path) -> LedgerStore:
    s: LedgerStore = SQLiteLedgerStore(tmp_path / "ledger.db") if request.param == "sqlite" else MemoryLedgerStore()
    yield s
    s.close()


def test_every_field_round_trips(store: LedgerStore) -> None:
    recs = [make_record(i) for i in range(5)]
    recs.append(make_record(99, tier=None, tier_source=None, ttft_ms=None, error=None, session_id=None,
                            model=None, stream=False, attempts=[], notes=[], status="error", http_status=502))
    store.write_batch([r.as_row() for r in recs])
    got = list(store.iter_rows())
    assert got == [r.as_row() for r in recs]
    assert isinstance(got[0]["stream"], bool) and isinstance(got[0]["input_tokens"], int)
    assert list(got[0]) == list(COLUMN_NAMES)  # stable column order


def test_sqlite_columns_are_typed(tmp_path) -> None:
    store = SQLiteLedgerStore(tmp_path / "l.db")
    store.close()
    conn = sqlite3.connect(tmp_path / "l.db")
    cols = {name: typ for _, name, typ, *_ in conn.execute("PRAGMA table_info(requests)")}
    indexes = {r[1] for r in conn.execute("PRAGMA index_list(requests)")}
    conn.close()
    assert set(cols) == set(COLUMN_NAMES)
    assert cols["ts"] == "REAL" and cols["input_tokens"] == "INTEGER" and cols["attempts"] == "TEXT"
    assert {"requests_ts", "requests_principal", "requests_tier", "requests_model"} <= indexes


def test_same_id_replaces_instead_of_duplicating(store: LedgerStore) -> None:
    store.write_batch([make_record(1).as_row(), make_record(2).as_row()])
    store.write_batch([make_record(1, status="error").as_row()])  # a retried batch / re-imported fallback row
    assert store.count() == 2
    assert {r["id"]: r["status"] for r in store.iter_rows()} == {"req-00001": "error", "req-00002": "ok"}


def test_tail_and_time_window(store: LedgerStore) -> None:
    store.write_batch([make_record(i, ts=1000.0 + i).as_row() for i in (5, 1, 4, 2, 3)])
    assert [r["id"] for r in store.tail(3)] == ["req-00003", "req-00004", "req-00005"]
    assert store.tail(0) == []
    assert [r["ts"] for r in store.iter_rows(since=1002.0, until=1004.0)] == [1002.0, 1003.0]
    assert [r["ts"] for r in store.iter_rows(until=1002.0)] == [1001.0]
    assert store.count() == 5


def test_sqlite_is_wal_and_reopens(tmp_path) -> None:
    path = tmp_path / "sub" / "ledger.db"  # parent directory is created
    store = SQLiteLedgerStore(path)
    assert store.journal_mode() == "wal"
    store.write_batch([make_record(i).as_row() for i in range(10)])
    store.close()
    store.close()  # idempotent
    again = SQLiteLedgerStore(path)
    try:
        assert again.count() == 10
        assert again.tail(1)[0] == make_record(9).as_row()
    finally:
        again.close()


def test_reader_sees_rows_committed_by_writer_thread(tmp_path) -> None:
    store = SQLiteLedgerStore(tmp_path / "l.db")
    t = threading.Thread(target=store.write_batch, args=([make_record(1).as_row()],))
    t.start()
    t.join()
    assert store.count() == 1
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.count()


def test_failed_batch_is_rolled_back(tmp_path) -> None:
    store = SQLiteLedgerStore(tmp_path / "l.db")
    bad = make_record(2).as_row()
    bad["input_tokens"] = object()  # sqlite3 cannot bind this
    with pytest.raises(sqlite3.Error):
        store.write_batch([make_record(1).as_row(), bad])
    assert store.count() == 0  # all or nothing
    store.write_batch([make_record(3).as_row()])  # connection still usable, no transaction left open
    assert store.count() == 1
    store.close()


def test_newer_schema_is_refused_with_a_clear_error(tmp_path) -> None:
    path = tmp_path / "l.db"
    SQLiteLedgerStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(LedgerSchemaError, match=rf"schema version {SCHEMA_VERSION + 1}.*upgrade tierwise"):
        SQLiteLedgerStore(path)


def test_foreign_sqlite_file_is_refused(tmp_path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE requests (x)")
    conn.close()
    with pytest.raises(LedgerSchemaError, match="did not create"):
        SQLiteLedgerStore(path)
    garbage = tmp_path / "notes.txt"
    garbage.write_text("not a database at all " * 100)
    with pytest.raises(LedgerSchemaError, match="not a tierwise ledger"):
        SQLiteLedgerStore(garbage)
    assert garbage.read_text().startswith("not a database")
    with pytest.raises(ValueError):
        SQLiteLedgerStore(":memory:")


def test_open_store_factory(tmp_path) -> None:
    s = open_store(LedgerConfig(backend="sqlite", path=str(tmp_path / "x.db")))
    assert isinstance(s, SQLiteLedgerStore) and isinstance(s, LedgerStore)
    s.close()
    assert isinstance(open_store(LedgerConfig(backend="memory")), MemoryLedgerStore)


def test_memory_store_bounded() -> None:
    s = MemoryLedgerStore(max_rows=3)
    s.write_batch([make_record(i).as_row() for i in range(5)])
    assert [r["id"] for r in s.iter_rows()] == ["req-00002", "req-00003", "req-00004"]
    s.write_batch([make_record(3, status="error").as_row()])
    assert s.count() == 3 and [r["status"] for r in s.tail(3)] == ["ok", "error", "ok"]  # tail is by ts


# -- export -------------------------------------------------------------------------------------------------


def test_export_jsonl_round_trip(store: LedgerStore) -> None:
    rows = [make_record(i).as_row() for i in range(4)]
    store.write_batch(rows)
    out = io.StringIO()
    assert export_rows(store, "jsonl", out, since=rows[1]["ts"]) == 3
    assert [json.loads(line) for line in out.getvalue().splitlines()] == rows[1:]


def test_export_csv_round_trip(store: LedgerStore) -> None:
    rows = [make_record(i).as_row() for i in range(3)]
    rows.append(make_record(3, ttft_ms=None, stream=False, tier=None, attempts=[]).as_row())
    store.write_batch(rows)
    out = io.StringIO()
    assert export_rows(store, "csv", out) == 4
    parsed = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(parsed[0]) == list(COLUMN_NAMES)
    first = parsed[0]
    assert first["attempts"] == "claude-haiku:rate_limit;gpt-4o-mini:ok"
    assert json.loads(first["cost_breakdown"]) == rows[0]["cost_breakdown"]
    assert json.loads(first["notes"]) == rows[0]["notes"]
    assert first["error"] == rows[0]["error"]  # unicode survives
    assert float(first["ts"]) == rows[0]["ts"] and float(first["cost_usd"]) == rows[0]["cost_usd"]
    assert int(first["input_tokens"]) == rows[0]["input_tokens"] and first["stream"] == "true"
    last = parsed[3]
    assert last["ttft_ms"] == "" and last["tier"] == "" and last["stream"] == "false" and last["attempts"] == ""
    with pytest.raises(ValueError):
        export_rows(store, "xml", io.StringIO())  # type: ignore[arg-type]


def test_format_tail_is_an_aligned_table() -> None:
    rows = [
        make_record(1, ts=0.0).as_row(),
        make_record(2, ts=60.0, status="error", http_status=502, ttft_ms=None, latency_ms=12_345.0,
                    model="a-very-long-model-name-that-does-not-fit-anywhere", tier_source=None).as_row(),
    ]
    text = format_tail(rows)
    lines = text.splitlines()
    assert len(lines) == 3
    header = lines[0]
    for col in ("time (UTC)", "id", "principal", "tier(source)", "model", "status", "in/out/cached", "cost $",
                "ttft", "latency", "fb"):
        assert col in header
    assert lines[1].startswith("1970-01-01 00:00:00  req-00001  team-1")
    assert "code(header)" in lines[1] and "101/20/5" in lines[1] and "88ms" in lines[1] and "412ms" in lines[1]
    assert "error 502" in lines[2] and "12.3s" in lines[2] and "a-very-long-model-name-that…" in lines[2]
    assert " code " in lines[2]  # tier without a source
    # fixed width: every column starts at the same offset on every line
    pos = header.index("status")
    assert lines[1][pos:].startswith("ok") and lines[2][pos:].startswith("error 502")
    empty = format_tail([]).splitlines()
    assert len(empty) == 1 and empty[0].startswith("time (UTC)  id  principal")


def test_import_unwritten(tmp_path) -> None:
    store = SQLiteLedgerStore(tmp_path / "l.db")
    path = tmp_path / "l.db.unwritten.jsonl"
    rows = [make_record(i).as_row() for i in range(2500)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n" + '{"id": "cut-sh')  # torn last line
    assert import_unwritten(store, path, batch_size=1000) == 2500
    assert not path.exists() and len(list(tmp_path.glob("*.imported"))) == 1
    assert list(store.iter_rows()) == rows
    assert import_unwritten(store, path) == 0  # nothing left to import
    store.close()
