"""How fast the PostgreSQL ledger store takes batches, and why it writes them the way it does.

    python bench/ledger_postgres.py [--dsn "host=127.0.0.1 user=postgres dbname=test"] [--rows 51200] [--batch 256]

Writes ``--rows`` realistic rows in batches of ``--batch`` (the writer's default, 256) with:
- the store as shipped (``PostgresLedgerStore.write_batch``: binary COPY into a temporary table, then one
  ``INSERT ... SELECT ... ON CONFLICT (id) DO UPDATE`` under the advisory lock that keeps ``seq`` in commit order),
  and the same with ``synchronous_commit=off`` set in the DSN (what waiting for the WAL flush costs);
- the alternatives it was chosen over, on the same table layout: ``executemany`` (psycopg runs it in pipeline mode),
  one ``INSERT ... SELECT FROM unnest(arrays)``, one ``INSERT ... SELECT FROM json_to_recordset``, and COPY without
  the advisory lock (what the lock costs);
- the same batches again (every id already stored: a retried batch, replaced);
- and end to end: ``LedgerWriter.submit`` to committed rows, rows/s.

Methods take turns batch by batch, each into a schema of its own, so load from other processes falls on all of them
alike. The PostgreSQL server runs on the same machine and shares its cores. Writes
``bench/results/ledger_postgres.md`` with the machine, the server's version and settings, and the load average.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tierwise.ledger import LedgerWriter
from tierwise.ledger.postgres import PG_COLUMNS, TABLE, PostgresLedgerStore
from tierwise.ledger.store import COLUMN_NAMES, JSON_COLUMNS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "bench" / "overhead"))
import procs  # noqa: E402
from ledger_throughput import make_records  # noqa: E402

DEFAULT_DSN = os.environ.get("TIERWISE_BENCH_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")
Rows = list[dict[str, Any]]


class Alternative:
    """A write strategy on a table the store created (same columns, indexes and ``seq``), for comparison only."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.store = PostgresLedgerStore(dsn, schema=schema, statement_timeout_s=600)  # creates the layout
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.table = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(TABLE))
        self.cols = sql.SQL(", ").join(sql.Identifier(n) for n in COLUMN_NAMES)
        self.update = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n))
                                         for n in COLUMN_NAMES if n != "id") + sql.SQL(", seq = DEFAULT")

    def close(self) -> None:
        self.conn.close()
        self.store.close()

    @staticmethod
    def params(rows: Rows) -> list[list[Any]]:
        out = []
        for row in rows:
            values = [row[n] for n in COLUMN_NAMES]
            for i, n in enumerate(COLUMN_NAMES):
                if n in JSON_COLUMNS:
                    values[i] = orjson.dumps(values[i]).decode()
            out.append(values)
        return out

    def executemany(self, rows: Rows) -> None:
        q = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (id) DO UPDATE SET {}").format(
            self.table, self.cols, sql.SQL(", ").join(sql.Placeholder() * len(COLUMN_NAMES)), self.update)
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(q, self.params(rows))

    def unnest(self, rows: Rows) -> None:
        arrays = [list(col) for col in zip(*self.params(rows), strict=True)]
        types = {"text": "text[]", "double precision": "float8[]", "bigint": "int8[]", "integer": "int4[]",
                 "boolean": "bool[]", "jsonb": "text[]"}
        names = [sql.Identifier(f"u_{n}") for n in COLUMN_NAMES]
        picked = sql.SQL(", ").join(sql.SQL("{}::jsonb").format(u) if n in JSON_COLUMNS else u
                                    for n, u in zip(COLUMN_NAMES, names, strict=True))
        q = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM unnest({}) WITH ORDINALITY AS u({}, ord) ORDER BY ord "
                    "ON CONFLICT (id) DO UPDATE SET {}").format(
            self.table, self.cols, picked,
            sql.SQL(", ").join(sql.SQL("%s::" + types[pg]) for _, pg in PG_COLUMNS),
            sql.SQL(", ").join(names), self.update)
        with self.conn.transaction():
            self.conn.execute(q, arrays)

    def json_recordset(self, rows: Rows) -> None:
        spec = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(pg)) for n, pg in PG_COLUMNS)
        q = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM json_to_recordset(%s::json) AS r({}) "
                    "ON CONFLICT (id) DO UPDATE SET {}").format(self.table, self.cols, self.cols, spec, self.update)
        with self.conn.transaction():
            self.conn.execute(q, [orjson.dumps(rows).decode()])

    def copy_without_lock(self, rows: Rows) -> None:
        """The store's own path minus the advisory lock (borrowing its statements and connection)."""
        from tierwise.ledger.postgres import _STAGE_TYPES, _encode_batch

        s = self.store
        conn = s._write_conn
        assert conn is not None
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy(s._copy) as copy:
                copy.set_types(list(_STAGE_TYPES))
                for p in _encode_batch(rows, keep_last=True):
                    copy.write_row(p)
            cur.execute(s._upsert)


def run_methods(dsn: str, rows: Rows, batch: int, tag: str) -> dict[str, dict[str, float]]:
    schemas: list[str] = []

    def schema() -> str:
        schemas.append(f"tw_bench_{tag}_{len(schemas)}")
        return schemas[-1]

    # a long statement_timeout: a disk stall of this shared machine should show in p99, not abort the run
    shipped = PostgresLedgerStore(dsn, schema=schema(), statement_timeout_s=600)
    async_commit = PostgresLedgerStore(make_conninfo(dsn, options="-c synchronous_commit=off"), schema=schema(),
                                       statement_timeout_s=600)
    alts = {name: Alternative(dsn, schema()) for name in ("executemany", "unnest", "json", "nolock")}
    methods: dict[str, Callable[[Rows], None]] = {
        "store (COPY + INSERT ON CONFLICT, advisory lock)": shipped.write_batch,
        "store, synchronous_commit=off in the DSN": async_commit.write_batch,
        "store path without the advisory lock": alts["nolock"].copy_without_lock,
        "executemany (pipeline mode)": alts["executemany"].executemany,
        "INSERT ... SELECT FROM unnest(arrays)": alts["unnest"].unnest,
        "INSERT ... SELECT FROM json_to_recordset": alts["json"].json_recordset,
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    replace: dict[str, list[float]] = {name: [] for name in methods}
    batches = [rows[i : i + batch] for i in range(0, len(rows), batch)]
    try:
        for b in batches:
            for name, write in methods.items():
                t0 = time.perf_counter()
                write(b)
                times[name].append(time.perf_counter() - t0)
        for b in batches[: max(1, len(batches) // 4)]:  # the same ids again: every row replaced
            for name, write in methods.items():
                t0 = time.perf_counter()
                write(b)
                replace[name].append(time.perf_counter() - t0)
        assert shipped.count() == len(rows)
    finally:
        shipped.close()
        async_commit.close()
        for a in alts.values():
            a.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            for s in schemas:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(s)))
    out = {}
    for name in methods:
        ts, rs = sorted(times[name]), sorted(replace[name])
        med = statistics.median(ts)
        out[name] = {"ms": med * 1e3, "p99_ms": ts[max(0, int(len(ts) * 0.99) - 1)] * 1e3, "max_ms": ts[-1] * 1e3,
                     "rows_s": batch / med, "replace_rows_s": batch / statistics.median(rs),
                     "total_rows_s": len(rows) / sum(ts)}
    return out


def end_to_end(dsn: str, n: int, batch: int, tag: str) -> float:
    schema = f"tw_bench_{tag}_e2e"
    store = PostgresLedgerStore(dsn, schema=schema, statement_timeout_s=600)
    try:
        writer = LedgerWriter(store, batch_size=batch, flush_interval_ms=200,
                              fallback_path=Path(f"/tmp/{schema}.unwritten.jsonl"))
        records = make_records(n, "e2e")
        t0 = time.perf_counter()
        for r in records:
            writer.submit(r)
        writer.flush(timeout_s=600)
        elapsed = time.perf_counter() - t0
        writer.close()
        assert store.count() == n
        return n / elapsed
    finally:
        store.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def server_facts(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        settings = {k: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(k))).fetchone()[0]  # type: ignore[index]
                    for k in ("synchronous_commit", "fsync", "shared_buffers", "wal_level")}
    return f"PostgreSQL {version} on this machine ({', '.join(f'{k}={v}' for k, v in settings.items())})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", default=DEFAULT_DSN)
    ap.add_argument("--rows", type=int, default=51_200)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ledger_postgres.md")
    args = ap.parse_args()
    tag = uuid.uuid4().hex[:8]
    load0, busy0, t_start = procs.loadavg(), procs.machine_busy_s(), time.time()
    rows = [r.as_row() for r in make_records(args.rows, "bench")]
    results = run_methods(args.dsn, rows, args.batch, tag)
    e2e = end_to_end(args.dsn, args.rows, args.batch, tag)
    wall = time.time() - t_start
    busy = (procs.machine_busy_s() - busy0) / wall
    m = procs.machine_facts()
    shipped = next(iter(results.values()))
    lines = [
        "# PostgreSQL ledger store: write_batch throughput",
        "",
        f"Command: `python bench/ledger_postgres.py --rows {args.rows} --batch {args.batch}` — "
        f"{dt.datetime.now().isoformat(timespec='seconds')}, {wall:.0f} s.",
        f"Machine: {m['nproc']} cores, {m['cpu_model']}, {m['mem_total_mb']} MB, Python {m['python']}, "
        f"kernel {m['kernel']}, psycopg {psycopg.__version__} ({psycopg.pq.__impl__}). {server_facts(args.dsn)}, "
        f"over loopback TCP. Load average before {load0}, after {procs.loadavg()}; the machine was about "
        f"{busy:.2f} cores busy during the run (this benchmark, the server, and whatever else was running).",
        "",
        f"**write_batch of {args.batch} rows: {shipped['rows_s']:,.0f} rows/s** (median batch "
        f"{shipped['ms']:.2f} ms, p99 {shipped['p99_ms']:.2f} ms; every batch a committed transaction). "
        f"End to end through `LedgerWriter` (submit to commit): {e2e:,.0f} rows/s.",
        "",
        f"Strategies, batch by batch in turn, {args.rows:,} new rows each into its own schema (same layout and "
        "indexes), then a quarter of the batches again (ids already stored: replaced):",
        "",
        "| strategy | median ms/batch | p99 ms | max ms | rows/s (median batch) | rows/s (whole run) | "
        "rows/s, replacing |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:,.0f} | {r['rows_s']:,.0f} | "
                     f"{r['total_rows_s']:,.0f} | {r['replace_rows_s']:,.0f} |")
    lines += ["", "The median batch is the steady rate; the whole run includes every stall of this shared machine's "
              "disk (see max ms), which falls on whichever strategy's batch is in flight."]
    lines += ["", "The advisory lock serialises commits of concurrent replicas (so a follower on `seq` never skips "
              "a row): its cost is the store's line against 'without the advisory lock'. `synchronous_commit=off` "
              "(an operator's choice, in the DSN's options) trades the last few hundred ms of commits on a server "
              "crash for not waiting on the WAL flush; the local crash journal does not cover that loss, since the "
              "writer has already released those records.", ""]
    text = "\n".join(lines)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
