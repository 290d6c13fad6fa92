"""LedgerWriter: batching, flush/close semantics, failure handling and shutdown, on real SQLite files."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tierwise.ledger import (
    LedgerWriteError,
    LedgerWriter,
    SQLiteLedgerStore,
    fallback_path_for,
    import_unwritten,
)
from tierwise.types import Attempt, Cost, LedgerRecord, Usage

SRC = Path(__file__).resolve().parents[1] / "src"


def make_record(i: int) -> LedgerRecord:
    return LedgerRecord(
        id=f"req-{i:06d}",
        ts=1_700_000_000.0 + i / 1000,
        principal="team-a",
        tier="chat",
        tier_source="default",
        model="m1",
        attempts=[Attempt("m0", "timeout", latency_ms=5.0), Attempt("m1", "ok", usage=Usage(10, 5), cost_usd=2e-6)],
        usage=Usage(10 + i, 5, 2),
        cost=Cost(1e-6, 1e-6),
        ttft_ms=12.5,
        latency_ms=40.0,
        fallbacks=1,
        notes=[f"note {i}"],
    )


class SpyStore:
    """Wraps a real store: counts write_batch calls, records the calling thread, fails on demand."""

    def __init__(self, inner: SQLiteLedgerStore, fail_first: int = 0, fail_always: bool = False,
                 delay_s: float = 0.0) -> None:
        self.inner = inner
        self.path = inner.path
        self.calls: list[int] = []
        self.threads: set[int] = set()
        self.fail_first = fail_first
        self.fail_always = fail_always
        self.delay_s = delay_s
        self.failures = 0

    def write_batch(self, rows: list[dict]) -> None:
        self.threads.add(threading.get_ident())
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_always or self.failures < self.fail_first:
            self.failures += 1
            raise OSError("disk I/O error (injected)")
        self.calls.append(len(rows))
        self.inner.write_batch(rows)

    def tail(self, n: int) -> list[dict]:
        return self.inner.tail(n)

    def iter_rows(self, since=None, until=None):
        return self.inner.iter_rows(since, until)

    def count(self) -> int:
        return self.inner.count()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def db(tmp_path: Path):
    store = SQLiteLedgerStore(tmp_path / "ledger.db")
    yield store
    store.close()


def ids(store) -> list[str]:
    return [r["id"] for r in store.iter_rows()]


def test_many_submits_become_few_full_batches(db: SQLiteLedgerStore) -> None:
    spy = SpyStore(db)
    w = LedgerWriter(spy, batch_size=100, flush_interval_ms=60_000)  # only size (or flush) can trigger a write
    for chunk in range(8):  # 1.5 batches at a time, with pauses: a greedy writer would write 100, 50, 100, 50...
        for i in range(chunk * 150, (chunk + 1) * 150):
            w.submit(make_record(i))
        time.sleep(0.03)
    deadline = time.monotonic() + 10
    while db.count() < 1200 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert spy.calls == [100] * 12  # full batches only, no small leftovers
    assert spy.threads and threading.get_ident() not in spy.threads  # I/O on the writer thread only
    w.close()
    assert ids(db) == [f"req-{i:06d}" for i in range(1200)]  # order kept


def test_interval_writes_a_partial_batch(db: SQLiteLedgerStore) -> None:
    spy = SpyStore(db)
    w = LedgerWriter(spy, batch_size=1000, flush_interval_ms=50)
    for i in range(7):
        w.submit(make_record(i))
    deadline = time.monotonic() + 5
    while db.count() < 7 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert spy.calls == [7]
    w.close()


def test_flush_waits_for_everything_submitted_before(db: SQLiteLedgerStore) -> None:
    w = LedgerWriter(db, batch_size=10_000, flush_interval_ms=60_000)
    for i in range(123):
        w.submit(make_record(i))
    t0 = time.monotonic()
    w.flush(timeout_s=5)
    assert time.monotonic() - t0 < 2  # did not wait for the 60 s interval
    assert db.count() == 123
    s = w.stats()
    assert (s.submitted, s.written, s.queue_depth, s.failed_batches, s.healthy) == (123, 123, 0, 0, True)
    w.flush()  # nothing pending: returns at once
    w.close()


def test_flush_times_out_while_store_is_down(db: SQLiteLedgerStore, tmp_path: Path) -> None:
    spy = SpyStore(db, fail_always=True)
    w = LedgerWriter(spy, flush_interval_ms=20, retry_delay_s=0.001)
    w.submit(make_record(1))
    with pytest.raises(TimeoutError):
        w.flush(timeout_s=0.3)
    assert not w.stats().healthy and w.failed_batches >= 1 and w.queue_depth == 1
    w.close()


def test_close_drains_and_is_idempotent(db: SQLiteLedgerStore) -> None:
    w = LedgerWriter(db, batch_size=10_000, flush_interval_ms=60_000)
    for i in range(2000):
        w.submit(make_record(i))
    w.close()
    assert db.count() == 2000
    assert not w._thread.is_alive()
    w.close()
    w.flush()  # no-op once closed
    assert not fallback_path_for(db).exists()


def test_submissions_from_many_threads(db: SQLiteLedgerStore) -> None:
    w = LedgerWriter(db, batch_size=64, flush_interval_ms=10)
    n_threads, per_thread = 8, 1500
    start = threading.Barrier(n_threads)

    def produce(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            w.submit(make_record(t * per_thread + i))

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.flush(timeout_s=20)
    total = n_threads * per_thread
    assert db.count() == total
    assert sorted(ids(db)) == [f"req-{i:06d}" for i in range(total)]
    s = w.stats()
    assert s.submitted == s.written == total and s.queue_depth == 0
    w.close()


async def test_submit_from_event_loop_never_waits_for_the_store(db: SQLiteLedgerStore) -> None:
    gate = threading.Event()
    entered = threading.Event()

    class StalledStore(SpyStore):
        def write_batch(self, rows: list[dict]) -> None:
            entered.set()
            assert gate.wait(30)  # a disk that does not answer until the test says so
            super().write_batch(rows)

    spy = StalledStore(db)
    w = LedgerWriter(spy, batch_size=50, flush_interval_ms=10)
    for i in range(60):
        w.submit(make_record(i))
    assert await asyncio.to_thread(entered.wait, 10)
    for i in range(60, 5000):  # all of these return while the store is stuck in write_batch
        w.submit(make_record(i))
    assert not gate.is_set() and spy.calls == [] and w.queue_depth == 5000
    assert threading.get_ident() not in spy.threads
    gate.set()
    await asyncio.to_thread(w.flush, 30)
    assert db.count() == 5000
    w.close()


def test_transient_failures_are_retried_without_loss(db: SQLiteLedgerStore, caplog) -> None:
    spy = SpyStore(db, fail_first=2)  # within one batch's retry budget
    w = LedgerWriter(spy, batch_size=50, flush_interval_ms=10, retries=3, retry_delay_s=0.001)
    with caplog.at_level(logging.WARNING, logger="tierwise.ledger"):
        for i in range(120):
            w.submit(make_record(i))
        w.flush(timeout_s=10)
    assert ids(db) == [f"req-{i:06d}" for i in range(120)]
    assert spy.failures == 2 and w.failed_batches == 0
    assert "disk I/O error (injected)" in caplog.text
    assert "note " not in caplog.text  # row content never logged
    w.close()


def test_outage_keeps_records_queued_until_the_store_recovers(db: SQLiteLedgerStore) -> None:
    spy = SpyStore(db, fail_always=True)
    w = LedgerWriter(spy, batch_size=20, flush_interval_ms=10, retries=2, retry_delay_s=0.001)
    for i in range(100):
        w.submit(make_record(i))
    deadline = time.monotonic() + 5
    while w.failed_batches < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert w.failed_batches >= 2 and db.count() == 0 and w.queue_depth == 100
    spy.fail_always = False  # the disk comes back
    w.flush(timeout_s=15)
    assert ids(db) == [f"req-{i:06d}" for i in range(100)]
    assert w.stats().healthy and w.stats().spilled == 0
    w.close()
    assert not fallback_path_for(db).exists()


def test_permanent_failure_dumps_every_row_to_the_fallback_file(db: SQLiteLedgerStore, caplog) -> None:
    spy = SpyStore(db, fail_always=True)
    w = LedgerWriter(spy, batch_size=16, flush_interval_ms=10, retries=2, retry_delay_s=0.001)
    records = [make_record(i) for i in range(300)]
    for r in records:
        w.submit(r)
    with caplog.at_level(logging.ERROR, logger="tierwise.ledger"):
        w.close(timeout_s=10)
    fallback = fallback_path_for(db)
    assert fallback == Path(f"{db.path}.unwritten.jsonl")
    assert str(fallback) in caplog.text
    lines = fallback.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [r.as_row() for r in records]
    assert w.stats().spilled == 300 and db.count() == 0
    # late submit after close: straight to the fallback file, not lost
    w.submit(make_record(300))
    assert len(fallback.read_text().splitlines()) == 301
    # next start-up loads it back
    assert import_unwritten(db, fallback) == 301
    assert db.count() == 301


def test_long_outage_bounds_memory_and_flush_reports_the_spill(db: SQLiteLedgerStore) -> None:
    spy = SpyStore(db, fail_always=True)
    w = LedgerWriter(spy, batch_size=10, flush_interval_ms=5, retries=1, retry_delay_s=0.0, max_pending=50)
    for i in range(200):
        w.submit(make_record(i))
    deadline = time.monotonic() + 5
    while w.stats().spilled == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    spilled = w.stats().spilled
    assert spilled >= 140  # 200 queued, at most 50 (+ the held batch) kept in memory
    spy.fail_always = False
    with pytest.raises(LedgerWriteError, match="did not reach the store"):
        w.flush(timeout_s=15)
    w.flush(timeout_s=5)  # nothing new was lost since: a clean flush
    kept = ids(db)
    saved = [json.loads(line)["id"] for line in fallback_path_for(db).read_text().splitlines()]
    assert sorted(kept + saved) == [f"req-{i:06d}" for i in range(200)]
    w.close()


def test_close_does_not_hang_on_a_locked_database(tmp_path: Path) -> None:
    store = SQLiteLedgerStore(tmp_path / "ledger.db", busy_timeout_ms=1500)
    locker = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    w = LedgerWriter(store, flush_interval_ms=10, retries=1)
    for i in range(50):
        w.submit(make_record(i))
    time.sleep(0.1)  # the writer is now inside write_batch, waiting on the lock
    t0 = time.monotonic()
    w.close(timeout_s=0.3)
    assert time.monotonic() - t0 < 1.0
    saved = [json.loads(line)["id"] for line in fallback_path_for(store).read_text().splitlines()]
    assert saved == [f"req-{i:06d}" for i in range(50)]
    locker.execute("ROLLBACK")
    locker.close()
    w._thread.join(10)  # the stuck batch may still land: the re-import below must not duplicate it
    assert not w._thread.is_alive()
    import_unwritten(store, fallback_path_for(store))
    assert store.count() == 50
    store.close()


def test_a_record_that_cannot_become_a_row_is_dropped_loudly(db: SQLiteLedgerStore, caplog) -> None:
    w = LedgerWriter(db, flush_interval_ms=10)
    bad = make_record(1)
    bad.usage = None  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR, logger="tierwise.ledger"):
        w.submit(make_record(0))
        w.submit(bad)
        w.submit(make_record(2))
        with pytest.raises(LedgerWriteError):
            w.flush()
    assert ids(db) == ["req-000000", "req-000002"]
    assert w.stats().dropped == 1 and "req-000001" in caplog.text
    w.close()


CHILD = textwrap.dedent(
    """
    import signal, sys, time
    sys.path.insert(0, {src!r})
    from tierwise.ledger import LedgerWriter, SQLiteLedgerStore
    from tierwise.types import LedgerRecord, Usage

    store = SQLiteLedgerStore({db!r})
    # Nothing but close() can write: the batch never fills and the interval never passes.
    writer = LedgerWriter(store, batch_size=10**6, flush_interval_ms=3_600_000)

    def on_term(signum, frame):
        writer.close()
        store.close()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    for i in range({n}):
        writer.submit(LedgerRecord(id=f"c-{{i}}", ts=time.time(), usage=Usage(i, 1)))
    print("submitted", flush=True)
    while True:
        time.sleep(1)
    """
)


def test_sigterm_shutdown_path_writes_every_record(tmp_path: Path) -> None:
    db_path = tmp_path / "ledger.db"
    n = 5000
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(src=str(SRC), db=str(db_path), n=n))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "submitted"
        store = SQLiteLedgerStore(db_path)
        assert store.count() == 0  # nothing written yet: only the shutdown path can save them
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert store.count() == n
        assert {r["id"] for r in store.iter_rows()} == {f"c-{i}" for i in range(n)}
        store.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not Path(f"{db_path}.unwritten.jsonl").exists()
