"""The crash journal, its replay, and poison-row isolation, on real files, real SQLite and real processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tierwise.config.schema import LedgerConfig
from tierwise.ledger import (
    Journal,
    LedgerWriteError,
    LedgerWriter,
    SQLiteLedgerStore,
    open_ledger,
    replay_orphans,
)
from tierwise.types import LedgerRecord, Usage

SRC = Path(__file__).resolve().parents[1] / "src"


def rec(i: int, **kw) -> LedgerRecord:
    r = LedgerRecord(id=f"r-{i:05d}", ts=1_700_000_000.0 + i, principal="p", tier="chat", model="m",
                     usage=Usage(10, 5), estimated_cost_usd=0.25)
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def segment_lines(directory: Path) -> list[dict]:
    out = []
    for p in sorted(directory.glob("seg-*.jsonl")):
        out += [json.loads(line) for line in p.read_bytes().splitlines() if line.strip()]
    return out


@pytest.fixture
def db(tmp_path: Path):
    store = SQLiteLedgerStore(tmp_path / "ledger.db")
    yield store
    store.close()


class RefusingStore:
    """A real SQLite store that refuses any batch containing one given id (even cleaned): a poison row the
    sanitiser cannot fix, e.g. a constraint of a future schema."""

    def __init__(self, inner: SQLiteLedgerStore, poison_id: str) -> None:
        self.inner, self.path, self.poison_id = inner, inner.path, poison_id
        self.calls = 0

    def write_batch(self, rows: list[dict], *, replace: bool = True) -> None:
        self.calls += 1
        if any(r["id"] == self.poison_id for r in rows):
            raise ValueError("CHECK constraint failed (injected)")
        self.inner.write_batch(rows, replace=replace)

    def iter_rows(self, since=None, until=None):
        return self.inner.iter_rows(since, until)

    def count(self) -> int:
        return self.inner.count()

    def tail(self, n: int):
        return self.inner.tail(n)

    def close(self) -> None:
        self.inner.close()


# -- one bad row never wedges the ledger -----------------------------------------------------------------------

@pytest.mark.parametrize("journaled", [False, True])
def test_a_record_with_a_lone_surrogate_is_stored_cleaned_and_blocks_nothing(
        db: SQLiteLedgerStore, tmp_path: Path, journaled: bool) -> None:
    journal = Journal(tmp_path / "j") if journaled else None
    w = LedgerWriter(db, flush_interval_ms=10, journal=journal)
    w.submit(rec(0, session_id="caf\udce9", notes=["x-task \udcff"]))  # what surrogateescape makes of b"caf\xe9"
    for i in range(1, 11):
        w.submit(rec(i))
    w.flush()
    rows = {r["id"]: r for r in db.iter_rows()}
    assert len(rows) == 11 and w.stats().healthy
    assert rows["r-00000"]["session_id"] == "caf\ufffd" and rows["r-00000"]["notes"] == ["x-task \ufffd"]
    assert w.stats().quarantined == 0 and w.stats().dropped == 0
    w.close()


def test_a_poison_row_is_bisected_out_and_quarantined_with_the_error(db: SQLiteLedgerStore, caplog) -> None:
    store = RefusingStore(db, poison_id="r-00013")
    w = LedgerWriter(store, batch_size=64, flush_interval_ms=10, retries=1)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="tierwise.ledger"):
        for i in range(40):
            w.submit(rec(i))
        with pytest.raises(LedgerWriteError):  # the flush says one row did not reach the store
            w.flush()
        for i in range(40, 50):  # the queue behind it flows
            w.submit(rec(i))
        w.flush()
    assert db.count() == 49 and "r-00013" not in {r["id"] for r in db.iter_rows()}
    lines = [json.loads(x) for x in w.quarantine_path.read_text().splitlines()]
    assert [x["row"]["id"] for x in lines] == ["r-00013"] and "CHECK constraint" in lines[0]["error"]
    assert w.stats().quarantined == 1 and w.stats().healthy
    assert store.calls < 20  # bisection, not one write per row
    w.close()


def test_a_store_that_is_down_is_not_mistaken_for_a_poison_row(db: SQLiteLedgerStore) -> None:
    class Down(RefusingStore):
        def write_batch(self, rows, *, replace=True):
            raise OSError("disk I/O error (injected)")

    w = LedgerWriter(Down(db, ""), flush_interval_ms=10, retries=1)  # type: ignore[arg-type]
    for i in range(8):
        w.submit(rec(i))
    with pytest.raises(TimeoutError):
        w.flush(timeout_s=0.5)
    assert w.stats().quarantined == 0 and w.stats().queue_depth == 8 and not w.quarantine_path.exists()
    w.close()  # to the fallback file, as before


def test_a_store_that_goes_down_mid_bisection_sends_no_healthy_row_to_quarantine(db: SQLiteLedgerStore,
                                                                                   tmp_path: Path) -> None:
    """The store refuses a batch for a poison row, takes the first half, then goes down: the healthy rows of the
    second half fail alone too, but the store no longer answers even a no-op write, so they stay queued — and reach
    the ledger once it is back. Only the poison row is quarantined, and ``tierwise ledger recover`` gives it (and any
    row that slipped there) another try."""
    state = {"down_after": None, "writes": 0}

    class Flaky(RefusingStore):
        def write_batch(self, rows, *, replace=True):
            state["writes"] += 1
            if state["down_after"] is not None and state["writes"] > state["down_after"]:
                raise OSError("disk I/O error (injected)")
            super().write_batch(rows, replace=replace)

    store = Flaky(db, poison_id="r-00006")
    w = LedgerWriter(store, batch_size=64, flush_interval_ms=10, retries=1)  # type: ignore[arg-type]
    state["down_after"] = 2  # write 1: the whole batch (refused), write 2: first half (stored), then down
    for i in range(8):
        w.submit(rec(i))
    with pytest.raises(TimeoutError):
        w.flush(timeout_s=0.5)
    assert {r["id"] for r in db.iter_rows()} == {f"r-{i:05d}" for i in range(4)}
    assert w.stats().quarantined == 0 and not w.quarantine_path.exists()
    state["down_after"] = None  # back up: the held rows go in, the poison row alone is quarantined
    with pytest.raises(LedgerWriteError):
        w.flush(timeout_s=10)
    assert db.count() == 7 and w.stats().quarantined == 1
    w.close()
    store.poison_id = ""  # say the refusal was transient after all: recovery stores the row and empties the file
    from tierwise.ledger.recover import retry_quarantined
    assert retry_quarantined(store, w.quarantine_path) == (1, 0)  # type: ignore[arg-type]
    assert db.count() == 8 and not w.quarantine_path.exists()


def test_recovery_keeps_rows_the_store_still_refuses_in_the_quarantine_file(db: SQLiteLedgerStore,
                                                                           tmp_path: Path) -> None:
    from tierwise.ledger.isolate import append_quarantine
    from tierwise.ledger.recover import retry_quarantined

    path = tmp_path / "ledger.rejected.jsonl"
    assert append_quarantine(path, rec(1).as_row(), "ValueError: transient")
    assert append_quarantine(path, rec(2).as_row(), "ValueError: CHECK constraint failed")
    with open(path, "ab") as f:
        f.write(b'{"error": "cut short by a crash", "row": {"id"')  # a torn last line is kept, not lost
    store = RefusingStore(db, poison_id="r-00002")
    assert retry_quarantined(store, path) == (1, 2)  # type: ignore[arg-type]
    assert [r["id"] for r in db.iter_rows()] == ["r-00001"]
    left = path.read_bytes().splitlines()
    assert json.loads(left[0])["row"]["id"] == "r-00002" and left[1].startswith(b'{"error": "cut short')
    assert retry_quarantined(store, path) == (0, 2)  # idempotent: nothing new, the file as it was  # type: ignore[arg-type]


# -- the journal -------------------------------------------------------------------------------------------------

def test_every_submitted_record_is_on_disk_before_submit_returns(db: SQLiteLedgerStore, tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    w = LedgerWriter(db, batch_size=10**6, flush_interval_ms=3_600_000, journal=journal)
    r = rec(1)
    w.begin(r)
    assert [x["status"] for x in segment_lines(tmp_path / "j")] == ["in_flight"]
    w.submit(r)
    assert [x["status"] for x in segment_lines(tmp_path / "j")] == ["in_flight", "ok"]
    assert db.count() == 0  # nothing in the store yet: only the journal has it
    w.close()
    assert db.count() == 1 and not list((tmp_path / "j").glob("seg-*"))  # stored: the journal is cleared


def test_segments_are_freed_once_stored_but_not_while_a_request_they_began_is_in_flight(
        db: SQLiteLedgerStore, tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", segment_bytes=4096)
    w = LedgerWriter(db, flush_interval_ms=10, journal=journal)
    long_running = rec(0)
    w.begin(long_running)  # begins in the first segment
    for i in range(1, 60):  # ~1 kB per record: several rotations
        w.submit(rec(i, notes=["n" * 700]))
    w.flush()
    segs = journal.segment_paths()
    assert len(segs) > 3 and segs[0].name.endswith("000000.jsonl")  # held by the request in flight
    w.submit(long_running)
    w.flush()
    w.submit(rec(99))  # the next wake-up frees everything up to the active segment
    w.flush()
    assert len(journal.segment_paths()) == 1
    w.close()
    assert db.count() == 61


CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {src!r})
    from tierwise.config.schema import LedgerConfig
    from tierwise.ledger import open_ledger
    from tierwise.types import LedgerRecord, Usage

    w = open_ledger(LedgerConfig(path={db!r}, batch_size=10**6, flush_interval_ms=3_600_000))
    for i in range(5):
        r = LedgerRecord(id=f"c-{{i}}", ts=1.0 + i, model="m", usage=Usage(3, 4), estimated_cost_usd=0.5)
        w.begin(r)
        if i < 3:  # three finish; two are still in flight when the process dies
            w.submit(r)
    for i in range(4):  # refused before any upstream call: no begin line
        w.submit(LedgerRecord(id=f"x-{{i}}", ts=10.0 + i, status="rejected", http_status=400))
    print("ready", flush=True)
    time.sleep(60)
    """
)


def _child(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    db_path = tmp_path / "ledger.db"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(src=str(SRC), db=str(db_path)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc, db_path


def test_sigkill_loses_nothing_and_books_requests_cut_off_mid_flight(tmp_path: Path) -> None:
    proc, db_path = _child(tmp_path)
    try:
        # alive: its segments are locked, nobody else replays them
        assert replay_orphans(Path(f"{db_path}.journal"), SQLiteLedgerStore(db_path)).segments == 0
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    w = open_ledger(LedgerConfig(path=str(db_path)))  # the next start replays the dead process's journal
    rows = {r["id"]: r for r in w.store.iter_rows()}
    assert set(rows) == {"c-0", "c-1", "c-2", "c-3", "c-4", "x-0", "x-1", "x-2", "x-3"}
    assert [rows[f"c-{i}"]["status"] for i in range(5)] == ["ok"] * 3 + ["interrupted"] * 2
    cut = rows["c-4"]
    assert cut["cost_usd"] == 0.5 and cut["cost_breakdown"]["estimated"] == 0.5 and cut["http_status"] is None
    assert "estimate" in cut["notes"][-1]
    assert rows["x-2"]["status"] == "rejected"
    w.close()
    w.store.close()
    assert not list(Path(f"{db_path}.journal").glob("seg-*"))


def test_replay_is_idempotent_and_never_overwrites_a_stored_record(tmp_path: Path, db: SQLiteLedgerStore) -> None:
    jdir = tmp_path / "j"
    jdir.mkdir()
    final = rec(1, status="ok").as_row()
    begin_only = {**rec(1).as_row(), "status": "in_flight"}
    db.write_batch([final])
    (jdir / "seg-1-1-000000.jsonl").write_bytes(
        json.dumps(begin_only).encode() + b"\n" + json.dumps(rec(2).as_row()).encode() + b"\n" + b'{"id": "r-0')
    report = replay_orphans(jdir, db)
    assert (report.segments, report.records, report.interrupted, report.torn_lines) == (1, 1, 1, 1)
    assert {r["id"]: r["status"] for r in db.iter_rows()} == {"r-00001": "ok", "r-00002": "ok"}


def test_ledger_recover_stores_a_dead_gateways_journal_without_serving(tmp_path: Path) -> None:
    proc, db_path = _child(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    cfg = tmp_path / "tierwise.yaml"
    cfg.write_text(f"""
ledger: {{path: "{db_path}"}}
providers: {{up: {{format: openai, base_url: "http://127.0.0.1:9/v1", api_key: k}}}}
models: {{m: {{provider: up, price: {{input: 1, output: 1}}}}}}
tiers: {{chat: {{models: [m]}}}}
default_tier: chat
fallback_model: m
""")
    run = subprocess.run([sys.executable, "-m", "tierwise.cli", "ledger", "recover", "-c", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "journal: 7 record(s) from 1 segment(s)" in run.stdout and "2 interrupted" in run.stdout
    store = SQLiteLedgerStore(db_path)
    assert store.count() == 9
    store.close()
    again = subprocess.run([sys.executable, "-m", "tierwise.cli", "ledger", "recover", "-c", str(cfg)],
                           capture_output=True, text=True, timeout=60)
    assert "journal: 0 record(s) from 0 segment(s)" in again.stdout  # idempotent: nothing left to replay


def test_rows_stored_while_a_poison_row_cannot_be_quarantined_are_counted_and_freed(
        db: SQLiteLedgerStore, tmp_path: Path) -> None:
    """The quarantine file cannot be written: the poison row stays held, the rows the bisection did store are
    counted as written and their journal lines are released."""
    store = RefusingStore(db, poison_id="r-00003")
    journal = Journal(tmp_path / "j", segment_bytes=4096)
    w = LedgerWriter(store, batch_size=64, flush_interval_ms=10, retries=1, journal=journal)  # type: ignore[arg-type]
    w.quarantine_path = tmp_path / "no-such-dir" / "rejected.jsonl"
    for i in range(8):
        w.submit(rec(i, notes=["n" * 700]))
    deadline = time.monotonic() + 5
    while w.stats().written < 7 and time.monotonic() < deadline:
        time.sleep(0.02)
    s = w.stats()
    assert (s.written, s.queue_depth, s.quarantined) == (7, 1, 0) and db.count() == 7
    assert w._durable_seq == 3  # rows 1-3 are contiguous with the watermark; 5-8 wait behind the held row 4
    w.close()
