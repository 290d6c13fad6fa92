"""Attribution in the PostgreSQL ledger: layout version 2 migrated in place from version 1 with its rows kept, and
``tierwise spend`` aggregated by the server (GROUP BY, jsonb_each_text, UTC buckets) equal to the rows' plain sums,
to its totals and to the SQLite store's answer.

Same server and per-test schema as tests/test_ledger_postgres.py (skipped when the server is unreachable, a failure
under ``TIERWISE_NO_SKIPS=1``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.spend_data import MIDNIGHT, MONTH_END
from tests.test_ledger_attribution import V1_COLUMNS, unattributed, v1_row
from tests.test_ledger_postgres import _DOWN, PG, _pg_config, pg  # noqa: F401 - the fixture
from tests.test_ledger_store import make_record
from tests.test_spend import BYS, ROWS, approx, check
from tierwise.ledger import COLUMN_NAMES, SQLiteLedgerStore
from tierwise.ledger.spend import METRICS, SpendQuery

psycopg = pytest.importorskip("psycopg")
from psycopg.types.json import Jsonb  # noqa: E402

from tierwise.ledger.postgres import PG_SCHEMA_VERSION, TABLE, VERSIONS_TABLE  # noqa: E402

pytestmark = pytest.mark.skipif(_DOWN is not None, reason=_DOWN or "")

# Layout version 1 exactly as tierwise created it (frozen).
V1_DDL = """
CREATE SCHEMA "{s}";
CREATE TABLE "{s}".tierwise_schema_versions (component text PRIMARY KEY, version integer NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now());
INSERT INTO "{s}".tierwise_schema_versions (component, version) VALUES ('ledger', 1);
CREATE TABLE "{s}".tierwise_ledger (
  id text PRIMARY KEY, ts double precision, principal text, tier text, tier_source text, requested_model text,
  model text, attempts jsonb, input_tokens bigint, output_tokens bigint, cache_read_tokens bigint,
  cache_write_tokens bigint, reasoning_tokens bigint, cost_usd double precision, cost_breakdown jsonb,
  estimated_cost_usd double precision, ttft_ms double precision, latency_ms double precision, fallbacks integer,
  escalations integer, session_id text, stream boolean, status text, http_status integer, error text, notes jsonb,
  seq bigserial NOT NULL
);
CREATE UNIQUE INDEX tierwise_ledger_seq ON "{s}".tierwise_ledger (seq);
CREATE INDEX tierwise_ledger_ts ON "{s}".tierwise_ledger (ts, seq);
CREATE INDEX tierwise_ledger_principal ON "{s}".tierwise_ledger (principal, ts);
CREATE INDEX tierwise_ledger_tier ON "{s}".tierwise_ledger (tier, ts);
CREATE INDEX tierwise_ledger_model ON "{s}".tierwise_ledger (model, ts);
"""


def make_v1_schema(env: PG, n: int) -> None:
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute(V1_DDL.format(s=env.schema))
        with conn.cursor() as cur:
            cur.executemany(
                f'INSERT INTO "{env.schema}".{TABLE} ({", ".join(V1_COLUMNS)}) '
                f'VALUES ({", ".join(["%s"] * len(V1_COLUMNS))})',
                [[Jsonb(v) if isinstance(v, list | dict) else v for v in v1_row(i).values()] for i in range(n)])


def layout(env: PG, schema: str) -> tuple[set, set]:
    cols = set(env.query("SELECT column_name, data_type, column_default FROM information_schema.columns "
                         "WHERE table_schema = %s AND table_name = %s AND column_name <> 'seq'", (schema, TABLE)))
    idx = {(name, d.replace(f'"{schema}".', "").replace(f"{schema}.", "")) for name, d in env.query(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s", (schema,))}
    return cols, idx


def test_a_version_1_ledger_is_migrated_in_place_with_its_rows_kept(pg: PG, tmp_path: Path) -> None:  # noqa: F811
    make_v1_schema(pg, 40)
    store = pg.store()
    try:
        assert list(store.iter_rows()) == [unattributed(i) for i in range(40)]
        store.write_batch([make_record(40).as_row()])
        assert store.tail(1) == [make_record(40).as_row()]
        assert [r for _, r in store.rows_after(None, 2)][-1] == make_record(40).as_row()
    finally:
        store.close()
    assert pg.query(f'SELECT version FROM "{pg.schema}".{VERSIONS_TABLE}') == [(PG_SCHEMA_VERSION,)] == [(4,)]
    assert pg.query(f"SELECT count(*) FROM {pg.table()} WHERE tags = '{{}}'::jsonb AND customer IS NULL") == [(40,)]
    fresh = PG(pg.dsn, pg.schema + "_fresh", pg.app)
    try:
        fresh.store().close()
        assert layout(pg, pg.schema) == layout(pg, fresh.schema)  # same columns, types, defaults and indexes
    finally:
        pg.query(f'DROP SCHEMA IF EXISTS "{fresh.schema}" CASCADE')
    cols = dict(pg.query("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s "
                         "AND table_name = %s", (pg.schema, TABLE)))
    assert set(cols) == {*COLUMN_NAMES, "seq"} and cols["tags"] == "jsonb" and cols["customer"] == "text"
    pg.store().close()  # opening a migrated ledger again changes nothing
    assert pg.query(f'SELECT version FROM "{pg.schema}".{VERSIONS_TABLE}') == [(4,)]


def test_spend_is_aggregated_by_the_server_and_equals_the_rows_and_sqlite(pg: PG, tmp_path: Path) -> None:  # noqa: F811
    store = pg.store()
    lite = SQLiteLedgerStore(tmp_path / "l.db")
    try:
        store.write_batch(ROWS)
        lite.write_batch(ROWS)
        for by, tag_key in BYS:
            for since, until in ((None, None), (MIDNIGHT, MONTH_END), (MONTH_END - 0.0004, MONTH_END + 0.5)):
                q = SpendQuery(by, since, until, tag_key)
                report = store.spend(q)
                check(report, by, since, until, tag_key)
                other = lite.spend(q)
                assert [g.group for g in report.groups] == [g.group for g in other.groups]  # same order too
                assert [g.metrics() for g in report.groups] == [approx(g.metrics()) for g in other.groups]
        edge = store.spend(SpendQuery(("day",), MONTH_END - 0.0004, MONTH_END + 0.5))
        assert [(g.group, g.requests) for g in edge.groups] == [(("2026-11-30",), 8), (("2026-12-01",), 8)]
    finally:
        store.close()
        lite.close()


def test_spend_cli_reads_postgres(pg: PG, tmp_path: Path) -> None:  # noqa: F811
    store = pg.store()
    store.write_batch(ROWS)
    store.close()
    cfg = _pg_config(tmp_path, pg.dsn, pg.schema)
    r = subprocess.run([sys.executable, "-m", "tierwise.cli", "spend", "-c", str(cfg), "--by", "customer",
                        "--by", "month", "--since", "2026-11", "--until", "2027-01", "--format", "json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["total"]["requests"] == len(ROWS)
    for name in METRICS:
        assert sum(g[name] for g in doc["groups"]) == pytest.approx(doc["total"][name], rel=1e-9)
    assert doc["total"]["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in ROWS), rel=1e-12)
    r = subprocess.run([sys.executable, "-m", "tierwise.cli", "spend", "-c", str(cfg), "--by", "tag", "--tag",
                        "team", "--since", "2026-11-01", "--format", "csv"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("kind,since,until,tag,requests,") and lines[-1].startswith("total,")
    assert any(",search," in line for line in lines) and any('"x=y, z"' in line for line in lines)
