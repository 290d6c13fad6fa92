"""Principals and keys in PostgreSQL (psycopg 3), shared by every replica, beside the ledger's tables."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

from tierwise.governance.records import Conflict, GovernanceError, GovernanceStoreError, NotFound, T
from tierwise.governance.sql_store import Query, _SQLStore
from tierwise.pgtext import describe_pg_error, pg_lock_key

# -- PostgreSQL -----------------------------------------------------------------------------------------------

PG_SCHEMA_VERSION = 1
PG_COMPONENT = "governance"
PG_PRINCIPALS, PG_KEYS, PG_META = "tierwise_gov_principals", "tierwise_gov_keys", "tierwise_gov_meta"
_PG_MIGRATIONS: dict[int, tuple[str, ...]] = {}  # version N -> N+1 ({P}, {K}, {M} placeholders)


def schema_lock_key(schema: str) -> int:
    """The advisory lock the PostgreSQL ledger takes around its DDL in ``schema``: taking the same one means the
    ledger and the governance store never create the schema or the versions table at the same time."""
    return pg_lock_key("ledger.schema", schema)


_describe = describe_pg_error


class PostgresGovernanceStore(_SQLStore):
    """Principals and keys in PostgreSQL (psycopg 3), shared by every replica; see the module docstring.

    One connection, serialised by a lock, opened again after it is lost; a read (and a write whose first
    statement failed because the connection was gone, so nothing was sent) is retried once on a fresh one.
    ``statement_timeout`` bounds every statement. Errors never hold a key, a hash or the DSN's password.
    """

    def __init__(self, dsn: str, *, schema: str = "tierwise", statement_timeout_s: float = 10.0) -> None:
        try:
            import psycopg
            from psycopg import sql
            from psycopg.conninfo import conninfo_to_dict
        except ImportError:
            raise GovernanceStoreError("governance on PostgreSQL needs psycopg 3: pip install 'tierwise[postgres]'") \
                from None
        self._psycopg = psycopg
        if not dsn or not dsn.strip():
            raise GovernanceStoreError("the PostgreSQL governance store needs a DSN (governance.dsn or ledger.dsn)")
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error:
            raise GovernanceStoreError("governance.dsn is not a valid PostgreSQL connection string or URI") from None
        self._dsn = dsn
        self._secret = str(params.get("password") or "") or None
        self.where = " ".join(f"{k}={params[k]}" for k in ("host", "port", "dbname", "user") if params.get(k)) \
            or "(libpq defaults)"
        self.schema = schema
        self._kwargs: dict[str, Any] = {}
        if "application_name" not in params:
            self._kwargs["application_name"] = "tierwise-governance"
        if "connect_timeout" not in params:
            self._kwargs["connect_timeout"] = 10
        self._timeout_ms = int(statement_timeout_s * 1000)
        self._schema_lock = schema_lock_key(schema)  # the ledger's DDL lock: one DDL at a time per schema
        self._lock = threading.Lock()
        self._closed = False
        ident = sql.Identifier
        self._conn: Any = None
        conn = self._connect()
        try:
            self._P = sql.SQL("{}.{}").format(ident(schema), ident(PG_PRINCIPALS)).as_string(conn)
            self._K = sql.SQL("{}.{}").format(ident(schema), ident(PG_KEYS)).as_string(conn)
            self._M = sql.SQL("{}.{}").format(ident(schema), ident(PG_META)).as_string(conn)
            self._versions = sql.SQL("{}.{}").format(ident(schema), ident("tierwise_schema_versions")).as_string(conn)
            self._schema_ident = ident(schema).as_string(conn)
            self._ensure_schema(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _error(self, doing: str, exc: BaseException) -> GovernanceStoreError:
        return GovernanceStoreError(
            f"PostgreSQL governance store {self.schema} ({self.where}): {doing}: {_describe(exc, self._secret)}")

    def _connect(self) -> Any:
        psycopg = self._psycopg
        try:
            conn = psycopg.connect(self._dsn, autocommit=True, **self._kwargs)
        except psycopg.Error as exc:
            raise GovernanceStoreError(f"cannot connect to the PostgreSQL governance store ({self.where}): "
                                       f"{_describe(exc, self._secret)}") from None
        try:
            conn.execute("SELECT set_config('statement_timeout', %s, false), "
                         "set_config('idle_in_transaction_session_timeout', %s, false)",
                         (f"{self._timeout_ms}ms", f"{self._timeout_ms * 3}ms"))
        except psycopg.Error as exc:
            conn.close()
            raise self._error("cannot set up a connection", exc) from None
        return conn

    def _ensure_schema(self, conn: Any) -> None:
        psycopg = self._psycopg
        try:
            with conn.transaction():
                conn.execute("SET LOCAL statement_timeout = 0")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._schema_lock,))
                if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone() is None:
                    conn.execute(f"CREATE SCHEMA {self._schema_ident}")
                # the same layout the ledger creates (tierwise.ledger.postgres), whoever comes first
                conn.execute(f"CREATE TABLE IF NOT EXISTS {self._versions} (component text PRIMARY KEY, version "
                             "integer NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())")
                got = conn.execute(f"SELECT version FROM {self._versions} WHERE component = %s",
                                   (PG_COMPONENT,)).fetchone()
                version = int(got[0]) if got else 0
                if version > PG_SCHEMA_VERSION:
                    raise GovernanceStoreError(
                        f"the PostgreSQL governance store in schema {self.schema} ({self.where}) has schema version "
                        f"{version}, but this tierwise only knows up to {PG_SCHEMA_VERSION}: upgrade tierwise")
                if version == 0:
                    exists = conn.execute(
                        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
                        "AND c.relname = ANY(%s)", (self.schema, [PG_PRINCIPALS, PG_KEYS, PG_META])).fetchone()
                    if exists:
                        raise GovernanceStoreError(
                            f"schema {self.schema} ({self.where}) has governance tables tierwise did not create; set "
                            "governance.pg_schema to another schema")
                    for stmt in self._create_statements():
                        conn.execute(stmt)
                else:
                    for v in range(version, PG_SCHEMA_VERSION):
                        for stmt in _PG_MIGRATIONS[v]:
                            conn.execute(self._sql(stmt))
                if version != PG_SCHEMA_VERSION:
                    conn.execute(f"INSERT INTO {self._versions} (component, version) VALUES (%s, %s) ON CONFLICT "
                                 "(component) DO UPDATE SET version = EXCLUDED.version, updated_at = now()",
                                 (PG_COMPONENT, PG_SCHEMA_VERSION))
        except psycopg.Error as exc:
            raise self._error("cannot create or check the governance tables", exc) from None

    def _create_statements(self) -> list[str]:
        return [self._sql(s) for s in (
            "CREATE TABLE {P} (name text PRIMARY KEY, customer text, department text, project text, value_tier text, "
            "allowed_tiers text, allowed_models text, daily_budget_usd double precision, monthly_budget_usd double "
            "precision, rpm bigint, tpm bigint, revenue_per_request_usd double precision, created_at double precision "
            "NOT NULL, updated_at double precision NOT NULL, disabled boolean NOT NULL DEFAULT false)",
            "CREATE TABLE {K} (id text PRIMARY KEY, name text UNIQUE, principal text NOT NULL REFERENCES {P} (name), "
            "hash text NOT NULL UNIQUE, prefix text NOT NULL, created_at double precision NOT NULL, expires_at double "
            "precision, revoked_at double precision, replaced_by text, allowed_tiers text, allowed_models text, "
            "daily_budget_usd double precision, monthly_budget_usd double precision, rpm bigint, tpm bigint)",
            f"CREATE INDEX {PG_KEYS}_principal ON {{K}} (principal)",
            "CREATE TABLE {M} (id integer PRIMARY KEY CHECK (id = 1), generation bigint NOT NULL)",
            "INSERT INTO {M} (id, generation) VALUES (1, 0)",
            "COMMENT ON TABLE {K} IS 'tierwise API keys: SHA-256 hashes only (tierwise.governance.store)'",
        )]

    def _usable(self, conn: Any) -> bool:
        from psycopg.pq import TransactionStatus

        return conn is not None and not conn.closed and not conn.broken \
            and conn.info.transaction_status == TransactionStatus.IDLE

    def _run(self, write: bool, fn: Callable[[Query], T]) -> T:
        psycopg = self._psycopg
        with self._lock:
            if self._closed:
                raise GovernanceStoreError(f"governance store {self!r} is closed")
            for attempt in (1, 2):
                if not self._usable(self._conn):
                    if self._conn is not None:
                        with contextlib.suppress(Exception):
                            self._conn.close()
                    self._conn = None
                    self._conn = self._connect()
                conn = self._conn
                sent = 0

                def q(text: str, args: Sequence[Any], conn: Any = conn) -> list[tuple[Any, ...]]:
                    nonlocal sent
                    cur = conn.execute(self._sql(text).replace("?", "%s"), tuple(args))
                    sent += 1
                    return cur.fetchall() if cur.description is not None else []

                try:
                    with conn.transaction():
                        return fn(q)
                except GovernanceError:
                    raise
                except psycopg.errors.UniqueViolation:
                    raise Conflict("already exists (a concurrent change made the same name)") from None
                except psycopg.errors.ForeignKeyViolation:
                    raise NotFound("the principal was deleted meanwhile", param="principal") from None
                except psycopg.OperationalError as exc:
                    # a lost connection: reads again on a fresh one; writes only when nothing reached the server
                    if attempt == 2 or self._usable(conn) or (write and sent > 0):
                        raise self._error("write failed" if write else "read failed", exc) from None
                except psycopg.Error as exc:
                    raise self._error("write failed" if write else "read failed", exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        self._conn.close()
                    self._conn = None

    def __repr__(self) -> str:
        return f"PostgresGovernanceStore({self.where!r}, schema={self.schema!r})"
