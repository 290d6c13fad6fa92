"""How long ``tierwise spend`` takes on a big ledger (a performance check, not a timed test).

    python bench/spend_query.py [--rows 1000000] [--pg] [--dsn "host=127.0.0.1 user=postgres dbname=test"]

Builds ``--rows`` synthetic ledger rows (90 days, 200 customers, 12 departments, 60 projects, 40 keys, 8 models,
0-3 tags, every status, 2% booked at estimates) in an SQLite ledger (and, with ``--pg``, in a PostgreSQL schema of
its own, dropped afterwards), then times:

- ``tierwise spend --by customer`` and ``--by day`` over the whole 90 days and over the last 7, plus ``--by tag
  --tag team`` and ``--by customer --by model``, each as the CLI end to end (a fresh process: Python start-up,
  imports, opening the ledger, the query, JSON output) and as the store's ``spend()`` call alone;
- median of ``--repeat`` runs, warm (the file in the page cache after the first run, as on a gateway host).

Writes ``bench/results/spend_query.md`` with the machine, SQLite/PostgreSQL versions and the load average.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "overhead"))
import procs  # noqa: E402

from tierwise.ledger import SQLiteLedgerStore  # noqa: E402
from tierwise.ledger.spend import SpendQuery  # noqa: E402
from tierwise.types import Attempt, Cost, LedgerRecord, Usage  # noqa: E402

DEFAULT_DSN = os.environ.get("TIERWISE_BENCH_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")
END = 1_796_083_200.0  # 2026-12-01T00:00Z: the synthetic ledger's last 90 days end here
DAYS = 90

QUERIES: list[tuple[str, tuple[str, ...], str | None, int]] = [  # (label, by, tag key, window in days)
    ("--by customer, 90 days", ("customer",), None, 90),
    ("--by customer, last 7 days", ("customer",), None, 7),
    ("--by day, 90 days", ("day",), None, 90),
    ("--by day, last 7 days", ("day",), None, 7),
    ("--by tag --tag team, 90 days", ("tag",), "team", 90),
    ("--by customer --by model, 90 days", ("customer", "model"), None, 90),
]


def synthetic_rows(start: int, count: int, total: int) -> list[dict[str, Any]]:
    """Rows ``start`` .. ``start + count`` of a ``total``-row ledger spread evenly over the last ``DAYS`` days."""
    rng = random.Random(start)
    customers = [f"cust-{i:03d}" for i in range(200)]
    departments = [f"dept-{i}" for i in range(12)]
    projects = [f"proj-{i:02d}" for i in range(60)]
    keys = [f"key-{i:02d}" for i in range(40)]
    models = ["gpt-4o", "gpt-4o-mini", "claude-haiku", "claude-sonnet", "qwen-local", "llama-local", "o3-mini", "fb"]
    tag_values = {"team": ["search", "ads", "support", "growth"], "feature": ["summarise", "chat", "classify"],
                  "env": ["prod", "staging"]}
    rows = []
    step = DAYS * 86400 / total
    for i in range(start, start + count):
        status = rng.choices(["ok", "error", "rejected", "client_cancelled", "interrupted"], [94, 2, 2, 1.5, 0.5])[0]
        usage = Usage(rng.randint(50, 4000), rng.randint(10, 800), rng.randint(0, 500), 0, rng.randint(0, 50))
        cost = Cost(usage.input_tokens * 2.5e-6, usage.output_tokens * 1e-5, usage.cache_read_tokens * 1.25e-6)
        if status in ("client_cancelled", "interrupted"):
            cost = Cost(estimated_usd=rng.random() / 100)
        elif status == "rejected":
            usage, cost = Usage(), Cost()
        k = rng.randrange(len(keys))
        tags = {t: rng.choice(v) for t, v in tag_values.items() if rng.random() < 0.6}
        model = rng.choice(models)
        rec = LedgerRecord(
            id=f"bench-{i:08d}", ts=END - DAYS * 86400 + i * step, principal=f"principal-{k % 20:02d}",
            tier=rng.choice(["chat", "code", "label"]), tier_source="model", requested_model="auto", model=model,
            attempts=[Attempt(model, "ok", status=200, latency_ms=300.0, usage=usage, cost_usd=cost.total_usd)],
            usage=usage, cost=cost, estimated_cost_usd=cost.total_usd * 1.1, latency_ms=320.0, status=status,
            http_status=200, key_id=keys[k], customer=customers[k * 5 % 200 + rng.randrange(5)],
            department=departments[k % 12], project=projects[k * 3 % 60 + rng.randrange(3)], tags=tags)
        rows.append(rec.as_row())
    return rows


def fill(store: Any, n: int, batch: int = 20_000) -> float:
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        store.write_batch(synthetic_rows(start, min(batch, n - start), n))
    return time.perf_counter() - t0


def cli_args(by: tuple[str, ...], tag: str | None, days: int) -> list[str]:
    args = ["spend", "--since", str(END - days * 86400), "--until", str(END), "--format", "json"]
    for key in by:
        args += ["--by", key]
    if tag:
        args += ["--tag", tag]
    return args


def time_cli(source: list[str], args: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "tierwise.cli", *args, *source], capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise SystemExit(f"tierwise {' '.join(args)} failed: {r.stderr}")
    return statistics.median(times)


def time_call(store: Any, q: SpendQuery, repeat: int) -> tuple[float, int]:
    times, groups = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        groups = len(store.spend(q).groups)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), groups


def run_backend(name: str, store: Any, source: list[str], repeat: int) -> list[dict[str, Any]]:
    out = []
    for label, by, tag, days in QUERIES:
        q = SpendQuery(by, END - days * 86400, END, tag)
        store.spend(q)  # warm
        call_s, groups = time_call(store, q, repeat)
        cli_s = time_cli(source, cli_args(by, tag, days), repeat)
        out.append({"backend": name, "query": label, "groups": groups, "call_s": call_s, "cli_s": cli_s})
        print(f"{name:<10} {label:<36} groups={groups:<6} spend() {call_s:7.3f} s   CLI {cli_s:7.3f} s", flush=True)
    return out


def cli_floor(repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tierwise.cli", "spend", "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--db", type=Path, help="SQLite ledger to fill (kept; reused when it already has --rows rows)")
    ap.add_argument("--pg", action="store_true", help="also PostgreSQL (a schema of its own, dropped afterwards)")
    ap.add_argument("--dsn", default=DEFAULT_DSN)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "spend_query.md")
    args = ap.parse_args()

    load0, busy0, t_start = procs.loadavg(), procs.machine_busy_s(), time.time()
    tmp = tempfile.TemporaryDirectory(prefix="tw-spend-")
    db = args.db or Path(tmp.name) / "ledger.db"
    store = SQLiteLedgerStore(db)
    fill_s = None
    if store.count() != args.rows:
        print(f"filling {db} with {args.rows:,} rows …", flush=True)
        fill_s = fill(store, args.rows)
    size_mb = db.stat().st_size / 2**20
    results = run_backend("SQLite", store, ["--db", str(db)], args.repeat)
    store.close()

    pg_note = ""
    if args.pg:
        from psycopg import connect
        from psycopg.conninfo import make_conninfo

        from tierwise.ledger.postgres import PostgresLedgerStore

        schema = f"tw_bench_spend_{uuid.uuid4().hex[:8]}"
        pg = PostgresLedgerStore(args.dsn, schema=schema, statement_timeout_s=600)
        try:
            print(f"filling PostgreSQL schema {schema} with {args.rows:,} rows …", flush=True)
            pg_fill = fill(pg, args.rows, batch=5_000)
            with connect(args.dsn, autocommit=True) as conn:
                conn.execute(f'VACUUM ANALYZE "{schema}".tierwise_ledger')
                version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
                buffers = conn.execute("SHOW shared_buffers").fetchone()[0]  # type: ignore[index]
                work_mem = conn.execute("SHOW work_mem").fetchone()[0]  # type: ignore[index]
                size = conn.execute("SELECT pg_total_relation_size(%s)",  # type: ignore[index]
                                    (f'"{schema}".tierwise_ledger',)).fetchone()[0]
            cfg = Path(tmp.name) / "pg.yaml"
            dsn = make_conninfo(args.dsn)
            cfg.write_text(f"""
ledger: {{backend: postgres, dsn: "{dsn}", pg_schema: {schema}, path: "{Path(tmp.name) / 'pg'}"}}
providers: {{up: {{format: openai, base_url: "http://127.0.0.1:9/v1", api_key: k}}}}
models: {{m: {{provider: up, price: {{input: 1, output: 1}}}}}}
tiers: {{chat: {{models: [m]}}}}
default_tier: chat
fallback_model: m
""")
            results += run_backend("PostgreSQL", pg, ["-c", str(cfg)], args.repeat)
            pg_note = (f" PostgreSQL {version} on this machine (shared_buffers={buffers}, work_mem={work_mem}, "
                       f"default settings otherwise), over loopback TCP; table + indexes {size / 2**20:,.0f} MB, "
                       f"filled in {pg_fill:.0f} s through `write_batch` (5,000-row batches), then `VACUUM ANALYZE`.")
        finally:
            pg.close()
            with connect(args.dsn, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    floor = cli_floor(args.repeat)
    wall = time.time() - t_start
    busy = (procs.machine_busy_s() - busy0) / wall
    m = procs.machine_facts()
    lines = [
        "# `tierwise spend` on a big ledger",
        "",
        f"Command: `python bench/spend_query.py --rows {args.rows}{' --pg' if args.pg else ''}` — "
        f"{dt.datetime.now().isoformat(timespec='seconds')}, {wall:.0f} s.",
        f"Machine: {m['nproc']} cores, {m['cpu_model']}, {m['mem_total_mb']} MB, Python {m['python']}, kernel "
        f"{m['kernel']}, SQLite {sqlite3.sqlite_version}. Load average before {load0}, after {procs.loadavg()}; "
        f"the machine was about {busy:.2f} cores busy during the run (this benchmark, the database, and whatever "
        "else was running).",
        "",
        f"Ledger: {args.rows:,} synthetic rows over {DAYS} days (200 customers, 12 departments, 60 projects, "
        "40 keys, 8 models, 0-3 tags per row, 2% booked at estimates); SQLite file "
        f"{size_mb:,.0f} MB{f', filled in {fill_s:.0f} s' if fill_s else ''}.{pg_note}",
        "",
        "Median of " + str(args.repeat) + " warm runs. *spend()*: the store's query alone (one GROUP BY; the totals are "
        "the sum of its groups). *CLI*: `tierwise spend … --format json` in a fresh process, end to end; "
        f"of which {floor:.2f} s is the CLI's own start-up (`tierwise spend --help`).",
        "",
        "| backend | query | groups | spend() s | CLI s |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['backend']} | `{r['query']}` | {r['groups']:,} | {r['call_s']:.3f} | {r['cli_s']:.3f} |")
    lines += [
        "",
        "Every query reads each row of its window once, so its time is linear in the window's rows (the 7-day "
        "window holds 7.8% of them). SQLite walks the `ts` index and groups through a sort (it has no hash "
        "aggregate): about 1.1-1.4 s per million rows here, a good part of it the sort; the CLI adds its start-up. "
        "PostgreSQL runs a (parallel) sequential scan and a hash aggregate. Tags cost a JSON lookup per row "
        "(`json_each` / `->>`); `cost_breakdown.estimated` is read only on cancelled and interrupted rows. The "
        "machine is shared: the load average above says how much else ran.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
