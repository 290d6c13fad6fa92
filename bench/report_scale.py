"""``tierwise report`` / ``reprice`` / ``advise`` over a million-row ledger: wall time and peak RSS.

    python bench/report_scale.py [--rows 1000000] [--pg] [--dsn "host=127.0.0.1 user=postgres dbname=test"]

Builds ``--rows`` synthetic ledger rows (``tests/rollout_data.py``: 30 days, tiers chat/label/cheap/think and direct
model names, 50 principals, every status, 3 % escalated cascade requests, 1 % booked at estimates) in an SQLite
ledger (and, with ``--pg``, in a PostgreSQL schema of its own, dropped afterwards). Each command runs as the CLI in a
fresh process, end to end (start-up, the SQL aggregate, the report, JSON out), ``--repeat`` times; the table gives
the median wall time and the process's peak RSS (``ru_maxrss``). The same commands on a 10,000-row ledger give the
RSS floor: memory must not grow with the ledger (aggregation happens in SQL).

Writes ``bench/results/report_scale.md`` with the machine and its load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench" / "overhead"))
import procs  # noqa: E402

from tests.rollout_data import rows  # noqa: E402
from tierwise.ledger import SQLiteLedgerStore  # noqa: E402

DEFAULT_DSN = os.environ.get("TIERWISE_BENCH_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")
CONFIG = """
ledger: {{backend: {backend}, path: "{path}"{pg}}}
providers: {{fake: {{format: openai, base_url: "http://127.0.0.1:9/v1", api_key: k}}}}
models:
  small: {{provider: fake, price: {{input: 0.1, output: 0.4, cache_read: 0.025}}}}
  large: {{provider: fake, price: {{input: 2.5, output: 10, cache_read: 1.25}}}}
  thinker: {{provider: fake, price: {{input: 1.1, output: 4.4}}}}
  fb: {{provider: fake, price: {{input: 0.05, output: 0.2}}}}
tiers:
  label: {{models: [small]}}
  chat: {{models: [large, small]}}
  cheap: {{models: [large, small], policy: cheapest}}
  think: {{models: [thinker]}}
default_tier: chat
fallback_model: fb
"""
# peak RSS of the command itself, printed by the wrapper on exit (KiB on Linux)
WRAP = ("import resource, sys; from tierwise.cli import main; rc = main(sys.argv[1:]); "
        "u = resource.getrusage(resource.RUSAGE_SELF); "
        "print('MAXRSS', u.ru_maxrss, u.ru_utime + u.ru_stime, file=sys.stderr); sys.exit(rc)")


def fill(store: object, n: int, batch: int) -> float:
    t0 = time.perf_counter()
    buf = []
    for r in rows(n):
        buf.append(r)
        if len(buf) == batch:
            store.write_batch(buf)  # type: ignore[attr-defined]
            buf = []
    if buf:
        store.write_batch(buf)  # type: ignore[attr-defined]
    return time.perf_counter() - t0


COMMANDS = [
    ("report (table)", ["report"]),
    ("report --format json --compare small", ["report", "--format", "json", "--compare", "small"]),
    ("reprice --prices FILE", ["reprice", "--prices", "{prices}"]),
    ("advise", ["advise", "--since", "0"]),
]


def run(cfg: Path, prices: Path, repeat: int) -> list[tuple[str, float, float, float]]:
    out = []
    for label, argv in COMMANDS:
        times, rss, cpu = [], [], []
        for _ in range(repeat):
            cmd = [sys.executable, "-c", WRAP, *[a.replace("{prices}", str(prices)) for a in argv], "-c", str(cfg)]
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
            if p.returncode != 0:
                raise SystemExit(f"{label} failed: {p.stderr[-2000:]}")
            kib, secs = p.stderr.rsplit("MAXRSS", 1)[1].split()[:2]
            rss.append(int(kib) / 1024)
            cpu.append(float(secs))
        out.append((label, statistics.median(times), statistics.median(cpu), max(rss)))
        print(f"  {label}: {out[-1][1]:.2f} s wall, {out[-1][2]:.2f} s CPU, {out[-1][3]:.0f} MB", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pg", action="store_true")
    ap.add_argument("--dsn", default=DEFAULT_DSN)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "report_scale.md")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: drop the schema, the files

    load0, busy0, t_start = procs.loadavg(), procs.machine_busy_s(), time.time()
    tmp = Path(tempfile.mkdtemp(prefix="tw-report-"))
    try:
        _run_all(args, tmp, load0, busy0, t_start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_all(args: argparse.Namespace, tmp: Path, load0: object, busy0: float, t_start: float) -> None:
    prices = tmp / "prices.yaml"
    prices.write_text("small: {input: 0.2, output: 0.8}\nlarge: {input: 2.0, output: 8.0}\n")
    results: list[tuple[str, str, float, float, float]] = []
    fills = []
    for n in (10_000, args.rows):
        db = tmp / f"ledger-{n}.db"
        store = SQLiteLedgerStore(db)
        print(f"SQLite: filling {n:,} rows …", flush=True)
        took = fill(store, n, 20_000)
        store.close()
        fills.append(f"SQLite {n:,} rows: {db.stat().st_size / 2**20:,.0f} MB, filled in {took:.0f} s")
        cfg = tmp / f"sqlite-{n}.yaml"
        cfg.write_text(CONFIG.format(backend="sqlite", path=db, pg=""))
        results += [(f"SQLite, {n:,} rows", *r) for r in run(cfg, prices, args.repeat)]
    if args.pg:
        from psycopg import connect

        from tierwise.ledger.postgres import PostgresLedgerStore

        schema = f"tw_bench_report_{uuid.uuid4().hex[:8]}"
        pg = PostgresLedgerStore(args.dsn, schema=schema, statement_timeout_s=600)
        try:
            print(f"PostgreSQL: filling {args.rows:,} rows …", flush=True)
            took = fill(pg, args.rows, 5_000)
            with connect(args.dsn, autocommit=True) as conn:
                conn.execute(f'VACUUM ANALYZE "{schema}".tierwise_ledger')
                version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            fills.append(f"PostgreSQL {version} (local, default settings) {args.rows:,} rows, filled in {took:.0f} s")
            cfg = tmp / "pg.yaml"
            cfg.write_text(CONFIG.format(backend="postgres", path=tmp / "pg",
                                         pg=f', dsn: "{args.dsn}", pg_schema: {schema}'))
            results += [(f"PostgreSQL, {args.rows:,} rows", *r) for r in run(cfg, prices, args.repeat)]
        finally:
            pg.close()
            with connect(args.dsn, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    floor = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tierwise.cli", "report", "--help"], capture_output=True, check=True)
        floor.append(time.perf_counter() - t0)
    wall = time.time() - t_start
    busy = (procs.machine_busy_s() - busy0) / wall
    m = procs.machine_facts()
    lines = [
        "# `tierwise report` over a million-row ledger",
        "",
        f"Command: `python bench/report_scale.py --rows {args.rows}{' --pg' if args.pg else ''}` — "
        f"{dt.datetime.now().isoformat(timespec='seconds')}, {wall:.0f} s.",
        f"Machine: {m['nproc']} cores, {m['cpu_model']}, {m['mem_total_mb']} MB, Python {m['python']}, SQLite "
        f"{sqlite3.sqlite_version}. Load average before {load0}, after {procs.loadavg()}; about {busy:.2f} cores "
        "busy during the run (this benchmark and whatever else ran: the machine is shared).",
        "",
        "Ledgers (tests/rollout_data.py, 30 days): " + "; ".join(fills) + ".",
        "",
        f"Each command is the CLI in a fresh process, end to end; median wall time and median CPU time (user + "
        f"system of that process; the database server's work is not in it) of {args.repeat} warm runs, and "
        "the largest peak RSS (ru_maxrss) among them. On a loaded machine wall time is mostly waiting for a core: "
        "CPU time is the cost. The 10,000-row ledger gives the floor to compare the million-row ledger's RSS with: "
        "aggregation runs in SQL and Python sees a few hundred groups, so memory must not grow with the rows. Of each wall "
        f"time, {statistics.median(floor):.2f} s is the CLI's own start-up (`tierwise report --help`, median).",
        "",
        "| ledger | command | wall s | CPU s | peak RSS MB |",
        "|---|---|---:|---:|---:|",
        *(f"| {ledger} | `tierwise {label}` | {t:.2f} | {c:.2f} | {r:.0f} |" for ledger, label, t, c, r in results),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
