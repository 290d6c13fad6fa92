"""How much the ledger costs the request path, and how fast it drains to SQLite.

    python bench/ledger_throughput.py [--rows 200000] [--batch 256]

Reports:
- submit() ns/call with the writer thread idle (the pure hand-off cost) and while it is busy writing to SQLite
  (what a request pays under load: the hand-off plus GIL contention with the writer);
- sustained rows/s end to end (submit -> as_row -> SQLite commit, WAL, synchronous=NORMAL), i.e. the request rate
  the ledger can keep up with indefinitely;
- the SQLite store alone (pre-built rows, write_batch of ``--batch`` rows), to show where the time goes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tierwise.ledger import LedgerWriter, SQLiteLedgerStore
from tierwise.types import Attempt, Cost, LedgerRecord, Usage


def make_records(n: int, prefix: str) -> list[LedgerRecord]:
    """Realistic rows: two attempts (one fallback), usage, itemised cost, a note."""
    now = time.time()
    return [
        LedgerRecord(
            id=f"{prefix}-{i:08d}",
            ts=now + i * 1e-4,
            principal=f"team-{i % 7}",
            tier="code",
            tier_source="header",
            requested_model="auto",
            model="gpt-4o-mini",
            attempts=[
                Attempt("claude-3-5-haiku", "rate_limit", status=429, latency_ms=11.0),
                Attempt("gpt-4o-mini", "ok", status=200, latency_ms=420.0, usage=Usage(812, 133, 256), cost_usd=2.1e-4),
            ],
            usage=Usage(812, 133, 256),
            cost=Cost(1.2e-4, 8e-5, 1e-5),
            estimated_cost_usd=2.0e-4,
            ttft_ms=180.0,
            latency_ms=431.0,
            fallbacks=1,
            stream=True,
            notes=["max_tokens raised to floor 4096"],
        )
        for i in range(n)
    ]


def submit_cost_ns(records: list[LedgerRecord], writer: LedgerWriter, chunk: int = 1000) -> tuple[float, float]:
    """Median and p99 ns per submit() over chunks of ``chunk`` calls (per-call timers would dominate)."""
    per_call: list[float] = []
    for start in range(0, len(records), chunk):
        part = records[start : start + chunk]
        t0 = time.perf_counter_ns()
        for r in part:
            writer.submit(r)
        per_call.append((time.perf_counter_ns() - t0) / len(part))
    per_call.sort()
    return statistics.median(per_call), per_call[int(len(per_call) * 0.99) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        # 1. submit() with an idle writer thread: it never wakes during the loop.
        store = SQLiteLedgerStore(Path(tmp) / "idle.db")
        writer = LedgerWriter(store, batch_size=10**9, flush_interval_ms=3_600_000)
        idle_p50, idle_p99 = submit_cost_ns(make_records(100_000, "idle"), writer)
        writer.close()
        store.close()

        # 2. end to end, writer busy: submit as fast as possible, then wait for the last commit.
        store = SQLiteLedgerStore(Path(tmp) / "ledger.db")
        writer = LedgerWriter(store, batch_size=args.batch, flush_interval_ms=200)
        records = make_records(args.rows, "e2e")
        t0 = time.perf_counter()
        busy_p50, busy_p99 = submit_cost_ns(records, writer)
        submitted_s = time.perf_counter() - t0
        writer.flush(timeout_s=600)
        total_s = time.perf_counter() - t0
        assert store.count() == args.rows
        stats = writer.stats()
        writer.close()
        store.close()

        # 3. the store alone, rows already built.
        store = SQLiteLedgerStore(Path(tmp) / "raw.db")
        rows = [r.as_row() for r in make_records(args.rows, "raw")]
        t1 = time.perf_counter()
        for start in range(0, len(rows), args.batch):
            store.write_batch(rows[start : start + args.batch])
        store_s = time.perf_counter() - t1
        store.close()
        t2 = time.perf_counter()
        for r in records[:50_000]:
            r.as_row()
        as_row_us = (time.perf_counter() - t2) / 50_000 * 1e6

    print(f"rows={args.rows} batch={args.batch}")
    print(f"submit(), writer idle : p50 {idle_p50:6.0f} ns/call   p99 {idle_p99:6.0f} ns/call (per 1000-call chunk)")
    print(f"submit(), writer busy : p50 {busy_p50:6.0f} ns/call   p99 {busy_p99:6.0f} ns/call")
    print(f"submit loop           : {args.rows / submitted_s:12,.0f} submits/s")
    print(f"end to end (-> disk)  : {args.rows / total_s:12,.0f} rows/s sustained  ({total_s:.2f}s, {stats})")
    print(f"SQLite store alone    : {args.rows / store_s:12,.0f} rows/s  (write_batch of {args.batch} built rows)")
    print(f"LedgerRecord.as_row() : {as_row_us:12.2f} us/row")


if __name__ == "__main__":
    main()
