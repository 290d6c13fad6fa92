"""How much the ledger costs the request path, and how fast it drains to SQLite — crash journal off and on.

    python bench/ledger_throughput.py [--rows 200000] [--batch 256]

For each journal setting (off; on with fsync ``never``, the default; on with fsync ``interval``) it reports:
- the request path's cost per request: ``begin()`` (the journal's in-flight line, before the upstream call) plus
  ``submit()`` (the final record), with the writer thread idle and while it is busy writing to SQLite (GIL
  contention with the writer included);
- sustained rows/s end to end (submit -> journal -> SQLite commit, WAL, synchronous=NORMAL -> journal segments
  freed), i.e. the request rate the ledger keeps up with indefinitely;
- and once, the SQLite store alone (pre-built rows, write_batch of ``--batch`` rows).

Writes ``bench/results/ledger_throughput.md`` with the machine and its load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tierwise.ledger import Journal, LedgerWriter, SQLiteLedgerStore
from tierwise.types import Attempt, Cost, LedgerRecord, Usage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "overhead"))
import procs  # noqa: E402


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


def request_path_ns(records: list[LedgerRecord], writer: LedgerWriter, chunk: int = 1000) -> tuple[float, float]:
    """Median and p99 ns per request of begin() + submit(), over chunks of ``chunk`` requests (per-call timers
    would dominate)."""
    per_call: list[float] = []
    for start in range(0, len(records), chunk):
        part = records[start : start + chunk]
        t0 = time.perf_counter_ns()
        for r in part:
            writer.begin(r)
            writer.submit(r)
        per_call.append((time.perf_counter_ns() - t0) / len(part))
    per_call.sort()
    return statistics.median(per_call), per_call[int(len(per_call) * 0.99) - 1]


SETTINGS = (("off", None), ("on, fsync never (default)", "never"), ("on, fsync interval", "interval"))


def measure(tmp: Path, name: str, fsync: str | None, rows: int, batch: int) -> dict:
    def journal(sub: str) -> Journal | None:
        return Journal(tmp / f"{sub}.journal", fsync=fsync) if fsync else None  # type: ignore[arg-type]

    # 1. the request path with an idle writer thread: it never wakes during the loop.
    store = SQLiteLedgerStore(tmp / f"idle-{fsync}.db")
    writer = LedgerWriter(store, batch_size=10**9, flush_interval_ms=3_600_000, journal=journal(f"idle-{fsync}"))
    idle_p50, idle_p99 = request_path_ns(make_records(50_000, "idle"), writer)
    writer.close()
    store.close()
    # 2. end to end, writer busy: submit as fast as possible, then wait for the last commit.
    store = SQLiteLedgerStore(tmp / f"e2e-{fsync}.db")
    writer = LedgerWriter(store, batch_size=batch, flush_interval_ms=200, journal=journal(f"e2e-{fsync}"))
    records = make_records(rows, "e2e")
    t0 = time.perf_counter()
    busy_p50, busy_p99 = request_path_ns(records, writer)
    submitted_s = time.perf_counter() - t0
    writer.flush(timeout_s=600)
    total_s = time.perf_counter() - t0
    assert store.count() == rows
    writer.close()
    store.close()
    return {"setting": name, "idle_p50_ns": idle_p50, "idle_p99_ns": idle_p99, "busy_p50_ns": busy_p50,
            "busy_p99_ns": busy_p99, "submit_per_s": rows / submitted_s, "rows_per_s": rows / total_s}


def store_alone(tmp: Path, rows: int, batch: int) -> tuple[float, float]:
    store = SQLiteLedgerStore(tmp / "raw.db")
    records = make_records(rows, "raw")
    built = [r.as_row() for r in records]
    t1 = time.perf_counter()
    for start in range(0, len(built), batch):
        store.write_batch(built[start : start + batch])
    store_s = time.perf_counter() - t1
    store.close()
    t2 = time.perf_counter()
    for r in records[:50_000]:
        r.as_row()
    return rows / store_s, (time.perf_counter() - t2) / 50_000 * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ledger_throughput.md")
    args = ap.parse_args()
    load0, busy0, t_start = procs.loadavg(), procs.machine_busy_s(), time.time()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        results = [measure(tmp, name, fsync, args.rows, args.batch) for name, fsync in SETTINGS]
        store_rps, as_row_us = store_alone(tmp, args.rows, args.batch)
    wall = time.time() - t_start
    other = max(0.0, (procs.machine_busy_s() - busy0) / wall - 1.0)  # this benchmark keeps about one core busy
    m = procs.machine_facts()
    lines = [
        "# Ledger cost on the request path and throughput to SQLite, crash journal off and on",
        "",
        f"Command: `python bench/ledger_throughput.py --rows {args.rows} --batch {args.batch}` — "
        f"{dt.datetime.now().isoformat(timespec='seconds')}, {wall:.0f} s.",
        f"Machine: {m['nproc']} cores, {m['cpu_model']}, {m['mem_total_mb']} MB, Python {m['python']}, "
        f"kernel {m['kernel']}. Load average before {load0}, after {procs.loadavg()}; other processes used about "
        f"{other:.2f} cores beyond this benchmark's one.",
        "",
        "Per request: `begin()` (the in-flight journal line, before the upstream call) + `submit()` (the final "
        "record), ns, median [p99] over 1000-request chunks. Journal lines go to the page cache with one `write()` "
        "each (fsync `never` survives any process crash; `interval` also survives power loss but for the last "
        "flush interval).",
        "",
        "| journal | request path, writer idle | request path, writer busy | submit loop /s | end to end rows/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['setting']} | {r['idle_p50_ns']:,.0f} [{r['idle_p99_ns']:,.0f}] | "
                     f"{r['busy_p50_ns']:,.0f} [{r['busy_p99_ns']:,.0f}] | {r['submit_per_s']:,.0f} | "
                     f"{r['rows_per_s']:,.0f} |")
    lines += ["", f"SQLite store alone: {store_rps:,.0f} rows/s (write_batch of {args.batch} built rows); "
              f"`LedgerRecord.as_row()`: {as_row_us:.2f} µs/row.", ""]
    text = "\n".join(lines)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
