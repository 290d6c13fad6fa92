"""The ledger in PostgreSQL: one ledger that several gateway replicas write (``ledger.backend: postgres``).

Same contract as :class:`~tierwise.ledger.store.SQLiteLedgerStore` (see :mod:`tierwise.ledger.store`): rows in and
out are exactly ``LedgerRecord.as_row()``, ``write_batch`` is atomic and idempotent by ``id``, reads run on other
connections than the writer's. Needs psycopg 3 (``pip install 'tierwise[postgres]'``); the sync API fits the
writer's own thread.

Layout, in the schema ``ledger.pg_schema`` (``tierwise`` by default; created when missing):

- ``tierwise_ledger``: one row per request. ``id`` is the primary key; ``ts`` (unix seconds, the row shape's float)
  is ``double precision`` — ``to_timestamp(ts)`` gives a ``timestamptz`` in SQL; nested fields (``attempts``,
  ``cost_breakdown``, ``notes``) are ``jsonb`` (so key order inside them is PostgreSQL's, not the writer's: the
  decoded values are equal); ``stream`` is ``boolean``; tokens are ``bigint``. ``seq`` (``bigserial``) is the
  insertion sequence: it orders rows with equal ``ts`` (as SQLite's rowid does) and is what
  :meth:`PostgresLedgerStore.rows_after` follows; a row replaced by ``id`` gets a new, higher one. Attribution
  (layout 2): ``key_id``, ``customer``, ``department``, ``project`` (text) and ``tags`` (jsonb, ``{}`` by
  default). Indexes: ``(ts, seq)``, ``(principal, ts)``, ``(tier, ts)``, ``(model, ts)``, ``(customer, ts)``,
  ``(department, ts)``, ``(project, ts)`` for the spend queries, and ``seq`` (unique).
- ``tierwise_schema_versions``: ``(component, version)``; this module owns ``component = 'ledger'``. A newer version
  than this tierwise knows is refused with a clear message, an older one migrated at start, under an advisory lock
  so that replicas starting together do not race.

Writes: a batch is ``COPY``-ed (binary) into a per-connection temporary table, then moved with one ``INSERT ...
SELECT ... ON CONFLICT (id) DO UPDATE`` (``DO NOTHING`` for ``replace=False``), all in one transaction. On
256-row batches against a local server (``bench/results/ledger_postgres.md``): about 34,000 rows/s (7.5 ms a
batch, commit included), against 24,000 for ``executemany`` in pipeline mode and 13,000 for one statement over
``unnest`` arrays; one statement over ``json_to_recordset`` came out level with it, never ahead. The temporary table
needs a session of its own: put a pooler in front in *session* mode, not transaction mode. The ``INSERT`` runs
under a transaction-scoped advisory lock so that ``seq`` values become visible in the order they are given out,
across replicas too: a follower reading ``seq > N`` can then never skip a row that commits later with a smaller
number. The lock is held for the ``INSERT`` and the commit only, not for the ``COPY``; it cost about 2% of a
batch's time in the benchmark (one writer: replicas' batches queue behind each other for those few ms).

Failures: any error rolls the batch back and is raised as :class:`PostgresLedgerError`, whose message never holds
row contents (PostgreSQL's data-error messages quote values, so only their SQLSTATE and class are kept) nor the
DSN's password. What text and jsonb cannot hold — NUL characters, lone surrogates — is refused before anything is
sent, so it never reaches the server's log either; the writer then stores that row cleaned
(:func:`tierwise.sanitize.clean_json`). A lost connection (server restart, failover, ``pg_terminate_backend``)
makes the call raise (the writer keeps the rows queued and retries with backoff); the next call connects again.
The write session has ``statement_timeout`` and ``idle_in_transaction_session_timeout`` (30 s by default), so
neither a stalled server nor a replica frozen while holding the advisory lock can hold up the others for long.

Durability is the server's: a committed batch is as safe as ``synchronous_commit`` makes it. The crash journal and
the fallback file stay on local disk, next to ``ledger.path`` (see :func:`tierwise.ledger.journal_dir`).
"""

from __future__ import annotations

import contextlib
import operator
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson

try:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.pq import TransactionStatus
    from psycopg.types.json import set_json_loads
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "ledger.backend 'postgres' needs psycopg 3: pip install 'tierwise[postgres]' (or 'psycopg[binary]>=3.1')"
    ) from exc

from tierwise.ledger.spend import (
    ESTIMATE_STATUSES,
    SPEND_KEYS,
    STATUS_COUNTS,
    TOKEN_METRICS,
    SpendQuery,
    SpendReport,
    SpendRow,
    named_groups,
    ordered,
    total_of,
)
from tierwise.ledger.store import COLUMN_NAMES, COLUMNS, JSON_COLUMNS, LedgerSchemaError, Row
from tierwise.pgtext import connection_problem as _connection_problem
from tierwise.pgtext import describe_pg_error, pg_lock_key

T = TypeVar("T")

#: Version of the PostgreSQL layout (independent of the SQLite file's ``SCHEMA_VERSION``). 2: attribution columns
#: (key_id, customer, department, project, tags) and their indexes. 3: ``revenue_usd``. 4: ``arm`` (canary arm) and its index.
PG_SCHEMA_VERSION = 4
TABLE = "tierwise_ledger"
VERSIONS_TABLE = "tierwise_schema_versions"
COMPONENT = "ledger"
_STAGE = "tierwise_ledger_stage"  # the per-connection temporary table batches are COPY-ed into

_INT4_COLUMNS = frozenset({"fallbacks", "escalations", "http_status"})


def _pg_type(name: str, kind: str) -> str:
    if kind == "INTEGER":
        return "integer" if name in _INT4_COLUMNS else "bigint"
    return {"TEXT": "text", "REAL": "double precision", "JSON": "jsonb", "BOOL": "boolean"}[kind]


#: The column types of the ledger table, in ``COLUMN_NAMES`` order.
PG_COLUMNS: tuple[tuple[str, str], ...] = tuple((name, _pg_type(name, kind)) for name, kind in COLUMNS)
# Types of the staging table's columns for the binary COPY (JSON travels as text and is cast to jsonb on INSERT).
_STAGE_TYPES: tuple[str, ...] = ("int4", *(
    "text" if kind == "JSON" else
    {"text": "text", "double precision": "float8", "bigint": "int8", "integer": "int4", "boolean": "bool"}[pg]
    for (_, kind), (_, pg) in zip(COLUMNS, PG_COLUMNS, strict=True)
))

# Indexes on the attribution columns (layout version 2), for the spend queries: (suffix, columns).
_ATTRIBUTION_INDEXES = (("customer", "customer, ts"), ("department", "department, ts"), ("project", "project, ts"))

# Column defaults, so that a new table has exactly the columns a migrated one has.
_DEFAULTS = {"tags": " DEFAULT '{}'::jsonb"}

# Migrations from version N to N+1 (statements with ``{schema}``/``{table}`` placeholders), applied in order in one
# transaction, under the schema lock (replicas starting meanwhile wait). Version 1 is the first layout. ADD COLUMN
# with a constant default changes only the catalogue (PostgreSQL >= 11), whatever the table's size; the indexes are
# built over the existing rows and block writes to the table while they are (seconds per million rows).
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE {schema}.{table} ADD COLUMN key_id text, ADD COLUMN customer text, ADD COLUMN department text, "
        "ADD COLUMN project text, ADD COLUMN tags jsonb DEFAULT '{{}}'::jsonb",
        *(f"CREATE INDEX {TABLE}_{suffix} ON {{schema}}.{{table}} ({cols})" for suffix, cols in _ATTRIBUTION_INDEXES),
    ),
    2: ("ALTER TABLE {schema}.{table} ADD COLUMN revenue_usd double precision",),
    3: ("ALTER TABLE {schema}.{table} ADD COLUMN arm text",
        f"CREATE INDEX {TABLE}_arm ON {{schema}}.{{table}} (arm, ts)"),
}


class PostgresLedgerError(RuntimeError):
    """A PostgreSQL ledger operation failed. The message names the SQLSTATE and the error class, never a row's
    contents nor the DSN's password; ``sqlstate`` is None for errors raised before the server saw anything."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


_lock_key = pg_lock_key
_describe = describe_pg_error


def connection_problem(dsn: str, timeout_s: int = 5) -> str | None:
    """Why ``dsn`` cannot be connected to, or None; changes nothing in the database (for ``check-config``)."""
    return _connection_problem(dsn, "PostgreSQL ledger", timeout_s)


class PostgresLedgerStore:
    """Ledger rows in PostgreSQL; see the module docstring.

    ``dsn`` is a libpq connection string or URI; ``application_name`` and ``connect_timeout`` are set unless it
    names them, and TCP keepalives are on so a dead peer is noticed. ``local_path`` is where this process's local
    files go (the writer's fallback file ``<local_path>.unwritten.jsonl``); it is exposed as ``path``.

    The write connection is used only by :meth:`write_batch` (the writer thread), under a lock; ``tail``,
    ``count`` and ``rows_after`` share one read-only connection under another lock; each ``iter_rows`` call streams
    through a server-side cursor on a short-lived connection of its own so a long export holds up nothing else.
    Every connection is opened again after it is lost; reads are retried once on a fresh connection.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "tierwise",
        local_path: str | Path | None = None,
        statement_timeout_s: float = 30.0,
    ) -> None:
        if not dsn or not dsn.strip():
            raise ValueError("PostgresLedgerStore needs a DSN (ledger.dsn)")
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error:
            # libpq's parse errors quote the string around the fault, which may be the password
            raise PostgresLedgerError("ledger.dsn is not a valid PostgreSQL connection string or URI") from None
        self._dsn = dsn
        self._secret = str(params.get("password") or "") or None
        self.where = " ".join(f"{k}={params[k]}" for k in ("host", "port", "dbname", "user") if params.get(k)) \
            or "(libpq defaults)"
        self.schema = schema
        self.path = Path(local_path) if local_path is not None else None
        self._statement_timeout_ms = int(statement_timeout_s * 1000)
        self._conn_kwargs: dict[str, Any] = {}
        if "application_name" not in params:
            self._conn_kwargs["application_name"] = "tierwise-ledger"
        if "connect_timeout" not in params:
            self._conn_kwargs["connect_timeout"] = 10
        if "keepalives" not in params:
            self._conn_kwargs.update(keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3)

        s, t = sql.Identifier(schema), sql.Identifier(TABLE)
        self._table = sql.SQL("{}.{}").format(s, t)
        cols = sql.SQL(", ").join(sql.Identifier(n) for n in COLUMN_NAMES)
        self._select = sql.SQL("SELECT {} FROM {}").format(cols, self._table)
        self._select_seq = sql.SQL("SELECT seq, {} FROM {}").format(cols, self._table)
        stage = sql.Identifier(_STAGE)
        self._create_stage = sql.SQL(
            "CREATE TEMPORARY TABLE IF NOT EXISTS {} (ord integer, {}) ON COMMIT DELETE ROWS"
        ).format(stage, sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL("text" if n in JSON_COLUMNS else pg))
            for n, pg in PG_COLUMNS))
        self._copy = sql.SQL("COPY {} (ord, {}) FROM STDIN (FORMAT BINARY)").format(stage, cols)
        moved = sql.SQL(", ").join(
            sql.SQL("{}::jsonb").format(sql.Identifier(n)) if n in JSON_COLUMNS else sql.Identifier(n)
            for n in COLUMN_NAMES)
        insert = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM pg_temp.{} ORDER BY ord ON CONFLICT (id) DO ").format(
            self._table, cols, moved, stage)
        self._upsert = insert + sql.SQL("UPDATE SET {}, seq = DEFAULT").format(sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in COLUMN_NAMES if n != "id"))
        self._insert_new = insert + sql.SQL("NOTHING")
        self._write_lock_key = _lock_key("ledger.write", schema)

        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._closed = False
        self._read_conn: psycopg.Connection[Any] | None = None
        conn = self._connect()
        try:
            self._ensure_schema(conn)
            self._prepare_writer(conn)
        except BaseException:
            conn.close()
            raise
        self._write_conn: psycopg.Connection[Any] | None = conn

    # -- connections -------------------------------------------------------------------------------------------

    def _connect(self, *, read_only: bool = False, autocommit: bool = True) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self._dsn, autocommit=autocommit, **self._conn_kwargs)
        except psycopg.Error as exc:
            raise PostgresLedgerError(
                f"cannot connect to the PostgreSQL ledger ({self.where}): {_describe(exc, self._secret)}",
                exc.sqlstate) from None
        try:
            set_json_loads(orjson.loads, conn)
            if read_only:
                conn.execute("SET default_transaction_read_only = on")
            else:
                # statement_timeout: a write stuck on a lock or a stalled disk fails (the writer retries) instead of
                # hanging the writer thread; idle_in_transaction_session_timeout: a replica frozen mid-transaction
                # (SIGSTOP, partition) loses its session, and with it the advisory lock the others wait for.
                conn.execute("SELECT set_config('statement_timeout', %s, false), "
                             "set_config('idle_in_transaction_session_timeout', %s, false)",
                             (f"{self._statement_timeout_ms}ms", f"{self._statement_timeout_ms}ms"))
            if not autocommit:
                conn.commit()
        except psycopg.Error as exc:
            conn.close()
            raise self._error("cannot set up a connection", exc) from None
        return conn

    def _error(self, doing: str, exc: BaseException) -> PostgresLedgerError:
        return PostgresLedgerError(
            f"PostgreSQL ledger {self.schema} ({self.where}): {doing}: {_describe(exc, self._secret)}",
            getattr(exc, "sqlstate", None))

    @staticmethod
    def _usable(conn: psycopg.Connection[Any] | None) -> bool:
        return conn is not None and not conn.closed and not conn.broken \
            and conn.info.transaction_status == TransactionStatus.IDLE

    def _check_open(self) -> None:
        if self._closed:
            raise PostgresLedgerError(f"ledger store {self!r} is closed")

    # -- schema ------------------------------------------------------------------------------------------------

    def _ensure_schema(self, conn: psycopg.Connection[Any]) -> None:
        """Create the layout in a new schema, migrate an older one, refuse a newer or foreign one."""
        s = sql.Identifier(self.schema)
        versions = sql.SQL("{}.{}").format(s, sql.Identifier(VERSIONS_TABLE))
        try:
            with conn.transaction():
                conn.execute("SET LOCAL statement_timeout = 0")  # a migration of a big table takes what it takes
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key("ledger.schema", self.schema),))
                if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone() is None:
                    conn.execute(sql.SQL("CREATE SCHEMA {}").format(s))
                has_versions = self._exists(conn, VERSIONS_TABLE)
                version = 0
                if has_versions:
                    got = conn.execute(sql.SQL("SELECT version FROM {} WHERE component = %s").format(versions),
                                       (COMPONENT,)).fetchone()
                    version = int(got[0]) if got else 0
                if version > PG_SCHEMA_VERSION:
                    raise LedgerSchemaError(
                        f"the PostgreSQL ledger in schema {self.schema} ({self.where}) has schema version {version}, "
                        f"but this tierwise only knows up to version {PG_SCHEMA_VERSION}: upgrade tierwise, or set "
                        "ledger.pg_schema to a new schema")
                if not has_versions:
                    conn.execute(sql.SQL(
                        "CREATE TABLE {} (component text PRIMARY KEY, version integer NOT NULL, "
                        "updated_at timestamptz NOT NULL DEFAULT now())").format(versions))
                if version == 0:
                    if self._exists(conn, TABLE):
                        raise LedgerSchemaError(
                            f"schema {self.schema} ({self.where}) has a table {TABLE} that tierwise did not create; "
                            "set ledger.pg_schema to another schema")
                    for stmt in self._create_statements():
                        conn.execute(stmt)
                else:
                    for v in range(version, PG_SCHEMA_VERSION):
                        for text in _MIGRATIONS[v]:
                            conn.execute(sql.SQL(text).format(schema=s, table=sql.Identifier(TABLE)))
                if version != PG_SCHEMA_VERSION:
                    conn.execute(sql.SQL(
                        "INSERT INTO {} (component, version) VALUES (%s, %s) ON CONFLICT (component) "
                        "DO UPDATE SET version = EXCLUDED.version, updated_at = now()").format(versions),
                        (COMPONENT, PG_SCHEMA_VERSION))
        except psycopg.Error as exc:
            raise self._error("cannot create or check the ledger tables", exc) from None

    def _exists(self, conn: psycopg.Connection[Any], table: str) -> bool:
        return conn.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
            "AND c.relname = %s", (self.schema, table)).fetchone() is not None

    def _create_statements(self) -> list[sql.Composed]:
        t = self._table
        cols = sql.SQL(",\n  ").join(
            sql.SQL("{} {}{}{}").format(sql.Identifier(n), sql.SQL(pg), sql.SQL(" PRIMARY KEY" if n == "id" else ""),
                                        sql.SQL(_DEFAULTS.get(n, "")))
            for n, pg in PG_COLUMNS)

        def index(suffix: str, columns: str, unique: bool = False) -> sql.Composed:
            return sql.SQL("CREATE {}INDEX {} ON {} ({})").format(
                sql.SQL("UNIQUE " if unique else ""), sql.Identifier(f"{TABLE}_{suffix}"), t, sql.SQL(columns))

        return [
            sql.SQL("CREATE TABLE {} (\n  {},\n  seq bigserial NOT NULL\n)").format(t, cols),
            index("seq", "seq", unique=True),
            index("ts", "ts, seq"),
            index("principal", "principal, ts"),
            index("tier", "tier, ts"),
            index("model", "model, ts"),
            *(index(suffix, cols) for suffix, cols in _ATTRIBUTION_INDEXES),
            index("arm", "arm, ts"),
            sql.SQL("COMMENT ON TABLE {} IS {}").format(t, sql.Literal(
                "tierwise request ledger: one row per request (tierwise.ledger.postgres)")),
        ]

    # -- writes (writer thread) --------------------------------------------------------------------------------

    def write_batch(self, rows: list[Row], *, replace: bool = True) -> None:
        if not rows:
            return
        params = _encode_batch(rows, keep_last=replace)  # before BEGIN: a bad row must not leave a transaction open
        with self._write_lock:
            self._check_open()
            conn = self._write_conn
            try:
                if not self._usable(conn):
                    self._discard_writer()
                    conn = self._connect()
                    self._prepare_writer(conn)
                    self._write_conn = conn
                assert conn is not None
                with conn.transaction(), conn.cursor() as cur:
                    with cur.copy(self._copy) as copy:
                        copy.set_types(list(_STAGE_TYPES))
                        for p in params:
                            copy.write_row(p)
                    # seq values must become visible in the order they are given out (see the module docstring)
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (self._write_lock_key,))
                    cur.execute(self._upsert if replace else self._insert_new)
            except BaseException as exc:
                if not self._usable(self._write_conn):  # lost, or left mid-transaction: connect again next time
                    self._discard_writer()
                if isinstance(exc, psycopg.Error | UnicodeError):  # UnicodeError: a lone surrogate in a text value
                    raise self._error(f"writing {len(params)} rows failed", exc) from None
                raise

    def _prepare_writer(self, conn: psycopg.Connection[Any]) -> None:
        """The session's staging table (temporary: gone with the connection, so made again on every connect)."""
        try:
            conn.execute(self._create_stage)
        except psycopg.Error as exc:
            conn.close()
            raise self._error("cannot create the staging table", exc) from None

    def _discard_writer(self) -> None:
        conn, self._write_conn = self._write_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # -- reads (any thread) ------------------------------------------------------------------------------------

    def _read(self, doing: str, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``fn`` on the shared read connection; once more on a new connection if the old one was lost."""
        with self._read_lock:
            self._check_open()
            for attempt in (1, 2):
                if not self._usable(self._read_conn):
                    if self._read_conn is not None:
                        with contextlib.suppress(Exception):
                            self._read_conn.close()
                    self._read_conn = None
                    self._read_conn = self._connect(read_only=True)
                conn = self._read_conn
                assert conn is not None
                try:
                    return fn(conn)
                except psycopg.OperationalError as exc:
                    if attempt == 2 or self._usable(conn):
                        raise self._error(doing, exc) from None
                except psycopg.Error as exc:
                    raise self._error(doing, exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def tail(self, n: int) -> list[Row]:
        if n <= 0:
            return []
        query = self._select + sql.SQL(" ORDER BY ts DESC, seq DESC LIMIT %s")
        got = self._read("tail", lambda c: c.execute(query, (n,)).fetchall())
        rows = [_decode(t) for t in got]
        rows.reverse()
        return rows

    def iter_rows(self, since: float | None = None, until: float | None = None) -> Iterator[Row]:
        self._check_open()
        where: list[sql.Composable] = []
        args: list[float] = []
        if since is not None:
            where.append(sql.SQL("ts >= %s"))
            args.append(float(since))
        if until is not None:
            where.append(sql.SQL("ts < %s"))
            args.append(float(until))
        query = self._select
        if where:
            query += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where)
        query += sql.SQL(" ORDER BY ts, seq")
        conn = self._connect(read_only=True, autocommit=False)  # a server-side cursor lives in a transaction
        try:
            with conn.cursor(name="tierwise_ledger_rows") as cur:
                cur.itersize = 1000
                cur.execute(query, args)
                while batch := cur.fetchmany(1000):
                    for t in batch:
                        yield _decode(t)
        except psycopg.Error as exc:
            raise self._error("reading rows", exc) from None
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def count(self) -> int:
        query = sql.SQL("SELECT count(*) FROM {}").format(self._table)

        def run(c: psycopg.Connection[Any]) -> int:
            got = c.execute(query).fetchone()
            return int(got[0]) if got else 0

        return self._read("count", run)

    def rows_after(self, seq: int | None, limit: int = 1000) -> list[tuple[int, Row]]:
        """``seq`` is the table's ``seq`` column: given out in commit order under the write lock, a new one on
        replace, never reused."""
        if limit <= 0:
            return []
        if seq is None:
            query = self._select_seq + sql.SQL(" ORDER BY seq DESC LIMIT %s")
            got = self._read("rows_after", lambda c: c.execute(query, (limit,)).fetchall())
            got.reverse()
        else:
            query = self._select_seq + sql.SQL(" WHERE seq > %s ORDER BY seq LIMIT %s")
            got = self._read("rows_after", lambda c: c.execute(query, (int(seq), limit)).fetchall())
        return [(int(t[0]), _decode(t[1:])) for t in got]

    def spend(self, query: SpendQuery) -> SpendReport:
        """One ``GROUP BY`` over the window (and, when the groups do not partition the rows, the totals in the same
        ``REPEATABLE READ`` read-only transaction: one snapshot) on a connection of its own; tags through ``tags ->> key`` or ``jsonb_each_text``, days and months
        in UTC (see :mod:`tierwise.ledger.spend`)."""
        self._check_open()
        where: list[sql.Composable] = []
        args: list[Any] = []
        if query.since is not None:
            where.append(sql.SQL("ts >= %s"))
            args.append(float(query.since))
        if query.until is not None:
            where.append(sql.SQL("ts < %s"))
            args.append(float(query.until))
        where_sql = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL("")
        exprs: list[sql.Composable] = []
        group_args: list[Any] = []
        join = sql.SQL("")
        for key in query.by:
            if key == "day":  # the UTC day number, floored to the second as in SQLite and Python
                exprs.append(sql.SQL("floor(ts)::bigint / 86400"))
            elif key == "month":
                exprs.append(sql.SQL("to_char(to_timestamp(floor(ts)) AT TIME ZONE 'UTC', 'YYYY-MM')"))
            elif key == "tag" and query.tag_key is not None:
                exprs.append(sql.SQL("tags ->> %s"))
                group_args.append(query.tag_key)
            elif key == "tag":
                join = sql.SQL(" LEFT JOIN LATERAL jsonb_each_text(tags) AS t(key, value) ON true")
                exprs.append(sql.SQL("t.key || '=' || t.value"))
            else:
                exprs.append(sql.Identifier(str(SPEND_KEYS[key])))
        grouped = sql.SQL("SELECT {}, {} FROM {}{}{} GROUP BY {}").format(
            sql.SQL(", ").join(exprs), _PG_METRICS, self._table, join, where_sql,
            sql.SQL(", ").join(sql.SQL(str(i + 1)) for i in range(len(exprs))))
        totals = sql.SQL("SELECT {} FROM {}{}").format(_PG_METRICS, self._table, where_sql)
        conn = self._connect(read_only=True, autocommit=False)
        try:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            got = conn.execute(grouped, [*group_args, *args]).fetchall()
            total = None if query.partitions else conn.execute(totals, args).fetchone()
            conn.rollback()
        except psycopg.Error as exc:
            raise self._error("spend", exc) from None
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        groups = named_groups(query, got)
        return SpendReport(query, ordered(query, groups),
                           total_of(groups) if total is None else SpendRow.from_values((), total))

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            if self._closed:
                return
            self._closed = True
            self._discard_writer()
            if self._read_conn is not None:
                with contextlib.suppress(Exception):
                    self._read_conn.close()
                self._read_conn = None

    def __repr__(self) -> str:
        return f"PostgresLedgerStore({self.where!r}, schema={self.schema!r})"


# The metrics of tierwise.ledger.spend.METRICS, in its order.
_PG_METRICS = sql.SQL(", ").join([
    sql.SQL("count(*)"),
    *(sql.SQL("count(*) FILTER (WHERE status = {})").format(sql.Literal(status))
      for status in STATUS_COUNTS.values()),
    *(sql.SQL("coalesce(sum({}), 0)::bigint").format(sql.Identifier(name))
      for name in TOKEN_METRICS),
    sql.SQL("coalesce(sum(cost_usd), 0)::float8"),
    sql.SQL("coalesce(sum((cost_breakdown ->> 'estimated')::float8) FILTER (WHERE status IN ({})), 0)::float8")
    .format(sql.SQL(", ").join(sql.Literal(s) for s in ESTIMATE_STATUSES)),
    sql.SQL("count(*) FILTER (WHERE status IN ({}) AND (cost_breakdown ->> 'estimated')::float8 > 0)")
    .format(sql.SQL(", ").join(sql.Literal(s) for s in ESTIMATE_STATUSES)),
    sql.SQL("coalesce(sum(revenue_usd), 0)::float8"),
    sql.SQL("(coalesce(sum(revenue_usd), 0) - coalesce(sum(cost_usd), 0))::float8"),
])


# -- row encoding ----------------------------------------------------------------------------------------------

_GET_ALL = operator.itemgetter(*COLUMN_NAMES)
_JSON_POS = tuple(i for i, n in enumerate(COLUMN_NAMES) if n in JSON_COLUMNS)
_TEXT_POS = tuple(i for i, (_, k) in enumerate(COLUMNS) if k == "TEXT")
_REAL_POS = tuple(i for i, (_, k) in enumerate(COLUMNS) if k == "REAL")
_INT_POS = tuple(i for i, (_, k) in enumerate(COLUMNS) if k == "INTEGER")
_BOOL_POS = tuple(i for i, (_, k) in enumerate(COLUMNS) if k == "BOOL")


# What PostgreSQL cannot store in text or jsonb: NUL (as such, or as the JSON escape \u0000 not itself escaped)
# and lone surrogates (not UTF-8). Refused here, before the server sees the row, so that neither the error nor the
# server log quotes it; the writer then stores the row cleaned (tierwise.sanitize.clean_json).
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class _Unstorable(ValueError):
    def __init__(self, column: str) -> None:
        super().__init__(column)
        self.column = column


def _as_int(value: Any) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("not an integer")
    return int(value)


def _encode(row: Row, ordinal: int) -> list[Any]:
    """COPY values in stage-column order (ordinal first), each coerced to its column's Python type; this runs once
    per row on the writer thread, so the common case (already the right type) costs one type check per column."""
    values = list(_GET_ALL(row))
    for i in _JSON_POS:
        v = values[i]
        if v is not None:
            # default=str: an odd object in ``notes`` must not make a whole batch unwritable forever (as in SQLite)
            text = orjson.dumps(v, default=str).decode()  # refuses lone surrogates itself
            if "\\u0000" in text and _JSON_NUL.search(text):
                raise _Unstorable(COLUMN_NAMES[i])
            values[i] = text
    for i in _TEXT_POS:
        v = values[i]
        if v is not None:
            if type(v) is not str:
                v = values[i] = str(v)
            if "\x00" in v or (not v.isascii() and _SURROGATE.search(v)):
                raise _Unstorable(COLUMN_NAMES[i])
    for i in _REAL_POS:
        v = values[i]
        if v is not None and type(v) is not float:
            values[i] = float(v)
    for i in _INT_POS:
        v = values[i]
        if v is not None and type(v) is not int:
            values[i] = _as_int(v)
    for i in _BOOL_POS:
        v = values[i]
        if v is not None and type(v) is not bool:
            values[i] = bool(v)
    values.insert(0, ordinal)
    return values


def _encode_batch(rows: list[Row], *, keep_last: bool) -> list[list[Any]]:
    """COPY values for ``rows``, one entry per distinct id, in order. A statement may not touch a row twice, so of a
    repeated id only the last (``replace``), at its position, or the first (``replace=False``) is kept: what SQLite's
    ``INSERT OR REPLACE``/``OR IGNORE`` of the same rows leaves behind."""
    try:
        if keep_last:
            last = {row["id"]: i for i, row in enumerate(rows)}
            picked = rows if len(last) == len(rows) else [r for i, r in enumerate(rows) if last[r["id"]] == i]
        else:
            first: dict[Any, Row] = {}
            for row in rows:
                first.setdefault(row["id"], row)
            picked = list(first.values())
    except (KeyError, TypeError) as exc:
        raise PostgresLedgerError(f"a ledger row without a usable id ({type(exc).__name__})") from None
    out = []
    for ordinal, row in enumerate(picked):
        try:
            out.append(_encode(row, ordinal))
        except _Unstorable as exc:
            raise PostgresLedgerError(
                f"ledger row {_safe_id(row)} cannot be stored in PostgreSQL: column {exc.column} holds a NUL "
                "character or a lone surrogate") from None
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise PostgresLedgerError(
                f"ledger row {_safe_id(row)} cannot be stored in PostgreSQL: {_bad_column(row)} ({type(exc).__name__})"
            ) from None
    return out


def _safe_id(row: Row) -> str:
    rid = row.get("id") if isinstance(row, dict) else None
    return repr(rid[:80]) if isinstance(rid, str) and rid.isprintable() else "(unprintable id)"


def _bad_column(row: Row) -> str:
    if not isinstance(row, dict):
        return "not a dict"
    missing = [n for n in COLUMN_NAMES if n not in row]
    if missing:
        return f"missing column {missing[0]}"
    for name in COLUMN_NAMES:
        try:
            _encode({**{n: None for n in COLUMN_NAMES}, "id": "x", name: row[name]}, 0)
        except (TypeError, ValueError, OverflowError):
            return f"column {name} holds a value it cannot store"
    return "a value it cannot store"


def _decode(values: tuple[Any, ...]) -> Row:
    # jsonb arrives decoded (orjson, set per connection); float8, bigint and boolean arrive as float, int and bool
    return dict(zip(COLUMN_NAMES, values, strict=True))
