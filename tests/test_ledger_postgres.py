"""The PostgreSQL ledger store against a real server: the SQLite store's behaviours, the writer end to end, lost
connections, replicas writing one ledger, and a gateway booking into it.

Every test gets its own freshly created schema (dropped afterwards) and a unique ``application_name``, so runs
never collide and a test only ever terminates its own connections. The server is ``TIERWISE_TEST_PG_DSN``
(default: the local one, trust auth, database ``test``). When it is unreachable or psycopg is missing the tests
skip with the reason; CI sets ``TIERWISE_NO_SKIPS=1``, which turns a skip into a failed run (``conftest.py``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.test_ledger_store import make_record
from tierwise.config.schema import LedgerConfig
from tierwise.ledger import (
    COLUMN_NAMES,
    Journal,
    LedgerSchemaError,
    LedgerStore,
    LedgerWriter,
    SQLiteLedgerStore,
    export_rows,
    open_ledger,
    open_store,
)
from tierwise.types import LedgerRecord

psycopg = pytest.importorskip(
    "psycopg", reason="psycopg is not installed: pip install -e '.[test]' (the 'postgres' extra) for these tests")

from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402

from tierwise.ledger.postgres import (  # noqa: E402
    PG_SCHEMA_VERSION,
    TABLE,
    VERSIONS_TABLE,
    PostgresLedgerError,
    PostgresLedgerStore,
)

BASE_DSN = os.environ.get("TIERWISE_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")


def _unreachable() -> str | None:
    try:
        with psycopg.connect(BASE_DSN, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        where = " ".join(f"{k}={v}" for k, v in conninfo_to_dict(BASE_DSN).items() if k != "password")
        return (f"PostgreSQL not reachable at {where} ({type(exc).__name__}): start it "
                "(pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start) or set TIERWISE_TEST_PG_DSN")


_DOWN = _unreachable()
pytestmark = pytest.mark.skipif(_DOWN is not None, reason=_DOWN or "")


@dataclass
class PG:
    """This test's corner of the server: a schema of its own and an application_name marking its connections."""

    dsn: str
    schema: str
    app: str

    def store(self, **kw: Any) -> PostgresLedgerStore:
        return PostgresLedgerStore(self.dsn, schema=self.schema, **kw)

    def query(self, text: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(BASE_DSN, autocommit=True) as conn:
            cur = conn.execute(text, args)
            return cur.fetchall() if cur.description is not None else []

    def terminate(self) -> int:
        """Kill every server backend of this test's stores (what a restart or failover does to them), waiting until
        they are gone."""
        got = self.query("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE application_name = %s "
                         "AND pid <> pg_backend_pid()", (self.app,))
        return sum(1 for (ok,) in got if ok)

    def table(self) -> str:
        return f'"{self.schema}".{TABLE}'


@pytest.fixture
def pg() -> Iterator[PG]:
    tag = uuid.uuid4().hex[:12]
    app = f"tierwise-test-{tag}"
    env = PG(make_conninfo(BASE_DSN, application_name=app), f"tw_test_{tag}", app)
    try:
        yield env
    finally:
        env.terminate()  # a test that failed half-way may have left a connection open
        env.query(f'DROP SCHEMA IF EXISTS "{env.schema}" CASCADE')


@pytest.fixture
def store(pg: PG) -> Iterator[PostgresLedgerStore]:
    s = pg.store()
    yield s
    s.close()


def rows_of(*recs: LedgerRecord) -> list[dict[str, Any]]:
    return [r.as_row() for r in recs]


# -- the store's contract (as tests/test_ledger_store.py checks it for SQLite) ----------------------------------


def test_every_field_round_trips_with_its_python_type(store: PostgresLedgerStore) -> None:
    recs = [make_record(i) for i in range(5)]
    recs.append(make_record(99, tier=None, tier_source=None, ttft_ms=None, error=None, session_id=None,
                            model=None, stream=False, attempts=[], notes=[], status="error", http_status=502))
    recs.append(make_record(100, ts=1_700_000_500.000001, cost=make_record(0).cost, notes=["x" * 10_000, "ü\t\n"]))
    store.write_batch(rows_of(*recs))
    got = list(store.iter_rows())
    assert got == rows_of(*recs)
    assert isinstance(store, LedgerStore)
    first = got[0]
    assert list(first) == list(COLUMN_NAMES)  # stable column order
    assert type(first["ts"]) is float and type(first["stream"]) is bool and type(first["input_tokens"]) is int
    assert type(first["cost_usd"]) is float and type(first["http_status"]) is int
    assert isinstance(first["attempts"], list) and isinstance(first["cost_breakdown"], dict)
    assert got[5]["ttft_ms"] is None and got[5]["tier"] is None and got[5]["stream"] is False
    assert got[6]["ts"] == 1_700_000_500.000001  # float8 keeps every bit of the row's float
    assert store.tail(1) == rows_of(recs[-1]) and [r for _, r in store.rows_after(None, 2)] == rows_of(*recs[-2:])


def test_columns_are_typed_and_indexed(pg: PG, store: PostgresLedgerStore) -> None:
    cols = dict(pg.query("SELECT column_name, data_type FROM information_schema.columns "
                         "WHERE table_schema = %s AND table_name = %s", (pg.schema, TABLE)))
    assert set(cols) == {*COLUMN_NAMES, "seq"}
    assert cols["id"] == "text" and cols["ts"] == "double precision" and cols["stream"] == "boolean"
    assert cols["attempts"] == cols["cost_breakdown"] == cols["notes"] == "jsonb"
    assert cols["input_tokens"] == "bigint" and cols["seq"] == "bigint" and cols["http_status"] == "integer"
    indexes = {name: d for name, d in pg.query("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s",
                                               (pg.schema,))}
    for name, cols_ in (("ts", "(ts, seq)"), ("principal", "(principal, ts)"), ("tier", "(tier, ts)"),
                        ("model", "(model, ts)"), ("seq", "(seq)")):
        assert indexes[f"{TABLE}_{name}"].endswith(cols_), indexes
    assert "PRIMARY KEY" in str(pg.query("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = "
                                          "%s::regclass AND contype = 'p'", (pg.table(),)))
    assert pg.query(f'SELECT component, version FROM "{pg.schema}".{VERSIONS_TABLE}') == [("ledger", PG_SCHEMA_VERSION)]
    store.write_batch(rows_of(make_record(1)))  # and SQL sees real values, not text
    assert pg.query(f"SELECT attempts->1->>'model', stream, to_timestamp(ts) > '2023-01-01' FROM {pg.table()}") == [
        ("gpt-4o-mini", True, True)]


def test_reopen_keeps_rows_and_close_is_idempotent(pg: PG) -> None:
    s = pg.store()
    s.write_batch(rows_of(*(make_record(i) for i in range(10))))
    s.close()
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.count()
    with pytest.raises(RuntimeError, match="closed"):
        s.write_batch(rows_of(make_record(11)))
    again = pg.store()
    try:
        assert again.count() == 10 and again.tail(1) == rows_of(make_record(9))
    finally:
        again.close()


def _sqlite_and_pg(pg: PG, tmp_path: Path) -> tuple[SQLiteLedgerStore, PostgresLedgerStore]:
    return SQLiteLedgerStore(tmp_path / "parity.db"), pg.store()


@pytest.mark.parametrize("replace", [True, False])
def test_same_id_behaves_exactly_as_in_sqlite(pg: PG, tmp_path: Path, replace: bool) -> None:
    """Replace (retried batch, re-imported fallback) or keep (journal replay), also for an id twice in one batch;
    the order afterwards (tail, follower sequence) as in SQLite, where a replaced row moves to the end."""
    stores = _sqlite_and_pg(pg, tmp_path)
    try:
        for s in stores:
            s.write_batch(rows_of(*(make_record(i, ts=1000.0) for i in range(4))))  # equal ts: insertion order
            s.write_batch(rows_of(make_record(1, ts=1000.0, status="error"), make_record(7, ts=1000.0),
                                  make_record(7, ts=1000.0, status="cancelled")), replace=replace)
        sqlite, postgres = stores
        assert postgres.count() == sqlite.count() == 5
        assert list(postgres.iter_rows()) == list(sqlite.iter_rows())
        assert postgres.tail(5) == sqlite.tail(5)
        assert [r["id"] for _, r in postgres.rows_after(None, 10)] == [r["id"] for _, r in sqlite.rows_after(None, 10)]
        statuses = {r["id"]: r["status"] for r in postgres.iter_rows()}
        assert statuses["req-00001"] == ("error" if replace else "ok")
        assert statuses["req-00007"] == ("cancelled" if replace else "ok")
    finally:
        for s in stores:
            s.close()


def test_tail_time_window_and_count(store: PostgresLedgerStore) -> None:
    store.write_batch(rows_of(*(make_record(i, ts=1000.0 + i) for i in (5, 1, 4, 2, 3))))
    assert [r["id"] for r in store.tail(3)] == ["req-00003", "req-00004", "req-00005"]
    assert store.tail(0) == [] and store.tail(-1) == []
    assert [r["ts"] for r in store.iter_rows(since=1002.0, until=1004.0)] == [1002.0, 1003.0]
    assert [r["ts"] for r in store.iter_rows(until=1002.0)] == [1001.0]
    assert [r["ts"] for r in store.iter_rows(since=1004.5)] == [1005.0]
    assert list(store.iter_rows(since=2000.0)) == []
    assert store.count() == 5


def test_rows_after_follows_insertion_order_and_replacements(store: PostgresLedgerStore) -> None:
    assert store.rows_after(None) == [] and store.rows_after(0) == []
    store.write_batch(rows_of(*(make_record(i, ts=2000.0 - i) for i in range(5))))  # ts order != insertion order
    got = store.rows_after(0, 3)
    assert [r["id"] for _, r in got] == ["req-00000", "req-00001", "req-00002"]
    seqs = [s for s, _ in got]
    assert seqs == sorted(seqs)
    rest = store.rows_after(seqs[-1])
    assert [r["id"] for _, r in rest] == ["req-00003", "req-00004"]
    store.write_batch(rows_of(make_record(0, ts=2000.0, status="error")))  # replaced: a new, higher number
    newer = store.rows_after(rest[-1][0])
    assert [(r["id"], r["status"]) for _, r in newer] == [("req-00000", "error")]
    assert [r["id"] for _, r in store.rows_after(None, 2)] == ["req-00004", "req-00000"]
    assert store.rows_after(None, 0) == []


def test_iter_rows_streams_through_a_server_side_cursor(pg: PG, store: PostgresLedgerStore) -> None:
    rows = rows_of(*(make_record(i) for i in range(2500)))
    for start in range(0, len(rows), 500):
        store.write_batch(rows[start:start + 500])
    it = store.iter_rows()
    assert next(it) == rows[0]
    active = pg.query("SELECT query, state FROM pg_stat_activity WHERE application_name = %s "
                      "AND query ILIKE 'FETCH%%'", (pg.app,))
    assert active and active[0][1] == "idle in transaction", active  # a cursor, fetched from in batches
    assert [r["id"] for r in it] == [r["id"] for r in rows[1:]]
    assert not pg.query("SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND query ILIKE 'FETCH%%'",
                        (pg.app,))  # its connection is closed once read to the end
    out = io.StringIO()
    assert export_rows(store, "jsonl", out, since=rows[2000]["ts"]) == 500


def test_failed_batch_is_rolled_back_and_names_no_row_contents(store: PostgresLedgerStore) -> None:
    secret = "SECRET-PROMPT-TEXT"
    bad = [make_record(2, error=f"{secret}\x00").as_row(),  # NUL: PostgreSQL text refuses it
           make_record(3, notes=[f"{secret}\x00"]).as_row(),  # ... and jsonb too
           make_record(4, principal=f"{secret}\udc80").as_row(),  # a lone surrogate: not UTF-8 at all
           {**make_record(5).as_row(), "input_tokens": secret}]  # not a number
    for row in bad:
        with pytest.raises(PostgresLedgerError) as err:
            store.write_batch([make_record(1).as_row(), row])
        assert secret not in str(err.value) and secret not in repr(err.value)
        assert err.value.__cause__ is None and err.value.__suppress_context__
        assert store.count() == 0  # all or nothing
    store.write_batch(rows_of(make_record(6)))  # the connection is still usable, no transaction left open
    assert store.count() == 1
    with pytest.raises(PostgresLedgerError, match="without a usable id"):
        store.write_batch([{"ts": 1.0}])


def test_server_data_errors_are_described_without_the_value(pg: PG) -> None:
    """PostgreSQL's data-error messages quote the offending value (and a JSON error's context quotes more): only the
    SQLSTATE and class survive; other server errors keep their message."""
    from tierwise.ledger.postgres import _describe

    with psycopg.connect(pg.dsn) as conn:
        for bad in ("SELECT 'SECRET-VALUE'::int", "SELECT '{\"a\": \"SECRET-VALUE\\u0000\"}'::jsonb ->> 'a'"):
            with pytest.raises(psycopg.DataError) as err:
                conn.execute(bad)
            conn.rollback()
            assert "SECRET-VALUE" in str(err.value)  # what psycopg says...
            text = _describe(err.value)
            assert "SECRET-VALUE" not in text and "SQLSTATE 22" in text  # ...and what the ledger says
        with pytest.raises(psycopg.errors.UndefinedTable) as err:
            conn.execute("SELECT * FROM no_such_table_here")
        assert "no_such_table_here" in _describe(err.value) and "42P01" in _describe(err.value)
    assert _describe(psycopg.OperationalError("lost pw-123"), secret="pw-123") == "OperationalError: lost ***"


def test_dsn_password_never_appears_in_errors(pg: PG) -> None:
    password = "pw-Zq8x-do-not-print"
    refused = make_conninfo(BASE_DSN, port="1", password=password)  # nothing listens on port 1
    with pytest.raises(PostgresLedgerError, match="cannot connect") as err:
        PostgresLedgerStore(refused, schema=pg.schema)
    assert password not in str(err.value)
    for broken in (f"host=127.0.0.1 password={password} {password}", f"postgresql://u:{password}@h:notaport/db"):
        with pytest.raises(PostgresLedgerError) as err:
            PostgresLedgerStore(broken, schema=pg.schema)
        assert password not in str(err.value), str(err.value)
    s = PostgresLedgerStore(make_conninfo(pg.dsn, password=password), schema=pg.schema)  # trust auth ignores it
    try:
        assert password not in repr(s) and password not in s.where
    finally:
        s.close()


def test_newer_schema_is_refused_with_a_clear_error(pg: PG) -> None:
    pg.store().close()
    pg.query(f'UPDATE "{pg.schema}".{VERSIONS_TABLE} SET version = %s', (PG_SCHEMA_VERSION + 1,))
    with pytest.raises(LedgerSchemaError, match=rf"schema version {PG_SCHEMA_VERSION + 1}.*upgrade tierwise"):
        pg.store()


def test_foreign_table_is_refused_and_left_alone(pg: PG) -> None:
    pg.query(f'CREATE SCHEMA "{pg.schema}"')
    pg.query(f"CREATE TABLE {pg.table()} (x int)")
    with pytest.raises(LedgerSchemaError, match="did not create"):
        pg.store()
    assert pg.query("SELECT count(*) FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                    (pg.schema, TABLE)) == [(1,)]


def test_replicas_starting_together_create_the_schema_once(pg: PG) -> None:
    stores: list[PostgresLedgerStore] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            stores.append(pg.store())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert not errors and len(stores) == 4


def test_open_store_and_config(pg: PG, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs ledger.dsn"):
        LedgerConfig(backend="postgres")
    cfg = LedgerConfig(backend="postgres", dsn=pg.dsn, pg_schema=pg.schema, path=str(tmp_path / "gw"))
    s = open_store(cfg)
    try:
        assert isinstance(s, PostgresLedgerStore) and isinstance(s, LedgerStore) and s.schema == pg.schema
        assert s.path == tmp_path / "gw"  # the local base: the writer's fallback file goes next to it
    finally:
        s.close()


# -- connection loss ----------------------------------------------------------------------------------------


def test_lost_connection_raises_then_the_next_call_reconnects(pg: PG, store: PostgresLedgerStore) -> None:
    store.write_batch(rows_of(make_record(1)))
    assert store.count() == 1  # opens the read connection too
    assert pg.terminate() >= 2
    with pytest.raises(PostgresLedgerError):
        store.write_batch(rows_of(make_record(2)))  # the writer keeps these rows queued and retries
    store.write_batch(rows_of(make_record(2)))
    assert pg.terminate() >= 1
    assert store.count() == 2  # reads retry once on a fresh connection
    assert [r["id"] for r in store.tail(5)] == ["req-00001", "req-00002"]


def test_writer_survives_connections_killed_mid_traffic_without_loss_or_duplicates(
        pg: PG, store: PostgresLedgerStore, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = 3000
    writer = LedgerWriter(store, batch_size=64, flush_interval_ms=5, fallback_path=tmp_path / "fb.jsonl",
                          retry_delay_s=0.01, journal=Journal(tmp_path / "journal"))
    done = threading.Event()

    def produce() -> None:
        for i in range(n):
            writer.submit(make_record(i))
            if i % 50 == 0:
                time.sleep(0.002)
        done.set()

    caplog.set_level(logging.WARNING, logger="tierwise.ledger")
    t = threading.Thread(target=produce)
    t.start()
    killed = 0
    while not done.is_set() or killed < 3:
        time.sleep(0.03)
        killed += pg.terminate()
    t.join()
    writer.flush(timeout_s=60)
    stats = writer.stats()
    writer.close()
    assert killed >= 3
    assert any("ledger write of" in r.getMessage() for r in caplog.records)  # the kills were felt...
    assert stats.written == n and stats.spilled == stats.dropped == stats.quarantined == 0  # ...and cost nothing
    assert pg.query(f"SELECT count(*), count(DISTINCT id) FROM {pg.table()}") == [(n, n)]
    assert not (tmp_path / "fb.jsonl").exists()
    assert list(store.iter_rows()) == rows_of(*(make_record(i) for i in range(n)))


# -- the writer end to end ----------------------------------------------------------------------------------


def test_writer_with_journal_stores_everything(pg: PG, tmp_path: Path) -> None:
    cfg = LedgerConfig(backend="postgres", dsn=pg.dsn, pg_schema=pg.schema, path=str(tmp_path / "replica-a"),
                       flush_interval_ms=10)
    writer = open_ledger(cfg)
    try:
        assert writer.journal is not None and writer.journal.directory == tmp_path / "replica-a.journal"
        recs = [make_record(i) for i in range(700)]
        for r in recs:
            writer.begin(r)
            writer.submit(r)
        writer.flush(timeout_s=30)
        assert writer.store.count() == 700
        assert list(writer.store.iter_rows()) == rows_of(*recs)
        assert writer.stats().healthy
    finally:
        writer.close()
        writer.store.close()
    assert not list((tmp_path / "replica-a.journal").glob("*.jsonl"))  # every record stored: segments freed


def test_poison_characters_are_stored_cleaned_through_the_writer(pg: PG, store: PostgresLedgerStore,
                                                                 tmp_path: Path) -> None:
    writer = LedgerWriter(store, batch_size=50, flush_interval_ms=10, fallback_path=tmp_path / "fb.jsonl",
                          retry_delay_s=0.001)
    try:
        recs = [make_record(i) for i in range(20)]
        recs[5] = make_record(5, error="nul \x00 in the error", notes=["nul \x00 in a note"])
        recs[9] = make_record(9, principal="lone \udc80 surrogate")
        for r in recs:
            writer.submit(r)
        writer.flush(timeout_s=30)
        stats = writer.stats()
    finally:
        writer.close()
    assert stats.written == 20 and stats.quarantined == stats.spilled == 0
    got = {r["id"]: r for r in store.iter_rows()}
    assert len(got) == 20
    assert got["req-00005"]["error"] == "nul \ufffd in the error" and got["req-00005"]["notes"] == ["nul \ufffd in a note"]
    assert got["req-00009"]["principal"] == "lone \ufffd surrogate"
    assert got["req-00004"] == recs[4].as_row()  # the rest untouched
    assert not (tmp_path / "fb.jsonl").exists() and not list(tmp_path.glob("*.rejected.jsonl"))


def test_two_replicas_write_one_ledger_and_a_follower_misses_nothing(pg: PG, tmp_path: Path) -> None:
    """Two stores (two gateway replicas) write concurrently; a follower polling rows_after sees every row exactly
    once: seq values become visible in the order they are given out."""
    replicas = [pg.store(), pg.store()]
    follower = pg.store()
    seen: list[str] = []
    stop = threading.Event()

    def follow() -> None:
        cursor = 0
        while True:
            last_round = stop.is_set()
            for seq, row in follower.rows_after(cursor, 500):
                seen.append(row["id"])
                cursor = seq
            if last_round:
                return

    def write(k: int) -> None:
        for b in range(40):
            replicas[k].write_batch(rows_of(*(make_record(k * 100_000 + b * 25 + i) for i in range(25))))

    f = threading.Thread(target=follow)
    f.start()
    writers = [threading.Thread(target=write, args=(k,)) for k in (0, 1)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    f.join()
    for s in [*replicas, follower]:
        s.close()
    assert len(seen) == len(set(seen)) == 2000


# -- a gateway booking into PostgreSQL ----------------------------------------------------------------------


def test_gateway_books_requests_into_postgres(pg: PG, upstream: Any, tmp_path: Path) -> None:
    import openai

    from tests.harness import GatewayServer, config_for

    cfg = config_for(upstream.base_url, tmp_path)
    cfg.ledger = LedgerConfig(backend="postgres", dsn=pg.dsn, pg_schema=pg.schema, path=str(tmp_path / "gw"),
                              flush_interval_ms=20)
    gw = GatewayServer(cfg).start()
    try:
        client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=20)
        ids = []
        for tier in ("label", "chat", "cheap"):
            resp = client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": f"hello {tier}"}], extra_headers={"X-Task": tier})
            assert resp.http_response.status_code == 200
            ids.append(resp.headers["x-tierwise-request-id"])
        stream = client.chat.completions.create(model="auto", stream=True, messages=[{"role": "user", "content": "s"}])
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        client.close()
        rows = gw.rows()  # flushes, then reads back through the store
    finally:
        gw.stop()
    assert len(rows) == 4 and [r["id"] for r in rows[:3]] == ids
    assert [r["tier"] for r in rows[:3]] == ["label", "chat", "cheap"] and rows[3]["stream"] is True
    in_pg = pg.query(f"SELECT id, model, status, input_tokens > 0, cost_usd > 0 FROM {pg.table()} ORDER BY seq")
    assert [r[0] for r in in_pg] == [r["id"] for r in rows]
    assert all(status == "ok" and tokens and cost for _, _, status, tokens, cost in in_pg), in_pg
    assert (tmp_path / "gw.journal").is_dir()  # the crash journal stays local


def _pg_config(tmp_path: Path, dsn: str, schema: str) -> Path:
    cfg = tmp_path / "tierwise.yaml"
    cfg.write_text(f"""
ledger: {{backend: postgres, dsn: "{dsn}", pg_schema: {schema}, path: "{tmp_path / 'gw'}"}}
providers: {{up: {{format: openai, base_url: "http://127.0.0.1:9/v1", api_key: k}}}}
models: {{m: {{provider: up, price: {{input: 1, output: 1}}}}}}
tiers: {{chat: {{models: [m]}}}}
default_tier: chat
fallback_model: m
""")
    return cfg


def test_check_config_reports_an_unreachable_postgres_without_its_password(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = _pg_config(tmp_path, f"postgresql://postgres:pw-s3cret@127.0.0.1:{port}/test", "tw_unreachable")
    for cmd in (["check-config", str(cfg)], ["serve", "--config", str(cfg)]):
        r = subprocess.run([sys.executable, "-m", "tierwise.cli", *cmd], capture_output=True, text=True, timeout=60)
        assert r.returncode in (1, 2), r.stderr
        assert "cannot connect to the PostgreSQL ledger" in r.stderr and "pw-s3cret" not in r.stderr + r.stdout
        assert "Traceback" not in r.stderr and "serving on" not in r.stderr


def test_ledger_tail_and_export_read_postgres(pg: PG, store: PostgresLedgerStore, tmp_path: Path) -> None:
    import subprocess
    import sys

    store.write_batch(rows_of(*(LedgerRecord(id=f"t-{i}", ts=1_700_000_000.0 + i) for i in range(3))))
    cfg = _pg_config(tmp_path, pg.dsn, pg.schema)
    tail = subprocess.run([sys.executable, "-m", "tierwise.cli", "ledger", "tail", "-c", str(cfg), "-n", "2"],
                          capture_output=True, text=True, timeout=60)
    assert tail.returncode == 0, tail.stderr
    assert "t-1" in tail.stdout and "t-2" in tail.stdout and "t-0" not in tail.stdout
    export = subprocess.run([sys.executable, "-m", "tierwise.cli", "ledger", "export", "-c", str(cfg)],
                            capture_output=True, text=True, timeout=60)
    assert [json.loads(line)["id"] for line in export.stdout.splitlines()] == ["t-0", "t-1", "t-2"]
