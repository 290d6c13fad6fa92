"""Where shadow decisions, canary shares and the canary audit log live: the "arms" store, beside the ledger.

SQLite: a file of its own, ``<ledger.path>.arms.db`` (its own layout version and application id, so it never
collides with the ledger's or the rollout store's migrations). PostgreSQL: three tables in ``ledger.pg_schema``,
created if missing. A ledger on the ``memory`` backend gets a throwaway SQLite file in a temporary directory.

Writes are small and rare (a batch of shadow records every flush, a canary change by an operator) and come from
worker threads, never from the event loop. A canary change and its audit row are one transaction: a promotion that
is not in the audit log did not happen.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from tierwise.config.schema import LedgerConfig
from tierwise.sqlite_schema import Layout, Refusal, ensure_layout, rollback

T = TypeVar("T")

SCHEMA_VERSION = 1
APPLICATION_ID = 0x54574152  # "TWAR"


class ArmsStoreError(RuntimeError):
    """The arms store cannot be opened or written (message names the file or schema, never a password)."""


@dataclass(slots=True)
class ShadowRecord:
    """What the candidate policy would have done with one served request (and, when called, what it did)."""

    request_id: str
    ts: float
    name: str
    tier: str | None  # the served request's tier
    served_model: str | None  # the incumbent plan's first model
    served_estimated_usd: float
    shadow_tier: str | None
    shadow_model: str | None  # the candidate plan's first model (a cascade's first rung)
    shadow_plan: list[str]
    shadow_estimated_usd: float
    same: bool  # the candidate's first choice is the incumbent's
    called: bool = False
    call_status: str | None = None  # ok | error | timeout | skipped:<why>
    call_model: str | None = None
    call_cost_usd: float = 0.0
    call_latency_ms: float | None = None
    error: str | None = None


_SHADOW_COLS = tuple(f.name for f in fields(ShadowRecord))
_SHADOW_SQLITE = (
    "request_id TEXT PRIMARY KEY, ts REAL NOT NULL, name TEXT NOT NULL, tier TEXT, served_model TEXT, "
    "served_estimated_usd REAL, shadow_tier TEXT, shadow_model TEXT, shadow_plan TEXT, shadow_estimated_usd REAL, "
    "same INTEGER, called INTEGER, call_status TEXT, call_model TEXT, call_cost_usd REAL, call_latency_ms REAL, "
    "error TEXT"
)
_SHADOW_PG = (
    "request_id text PRIMARY KEY, ts double precision NOT NULL, name text NOT NULL, tier text, served_model text, "
    "served_estimated_usd double precision, shadow_tier text, shadow_model text, shadow_plan jsonb, "
    "shadow_estimated_usd double precision, same boolean, called boolean, call_status text, call_model text, "
    "call_cost_usd double precision, call_latency_ms double precision, error text"
)

# The shadow summary: one GROUP BY in the database (rows are never loaded into Python).
_SUMMARY = (
    "SELECT tier, count(*), sum(CASE WHEN same THEN 1 ELSE 0 END), sum(served_estimated_usd), "
    "sum(shadow_estimated_usd), sum(CASE WHEN called THEN 1 ELSE 0 END), sum(call_cost_usd), "
    "sum(CASE WHEN call_status IN ('error', 'timeout') THEN 1 ELSE 0 END) FROM {shadow} "
    "WHERE name = {p} AND ts >= {p} AND ts < {p} GROUP BY tier ORDER BY tier"
)


@dataclass(slots=True)
class CanaryState:
    name: str
    share: float
    status: str  # running | promoted | rolled_back
    updated_ts: float


class ArmsStore(Protocol):
    def write_shadow(self, rows: Sequence[ShadowRecord]) -> None: ...
    def shadow_summary(self, name: str, since: float, until: float) -> list[tuple[Any, ...]]: ...
    def canary_state(self, name: str) -> CanaryState | None: ...
    def set_canary(self, name: str, share: float, status: str, action: str, actor: str, reason: str,
                   default_share: float | None) -> tuple[float | None, float]: ...
    def audit(self, name: str) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...


class _SQLStore:
    """The SQL both backends share; subclasses give ``_run(doing, fn)`` (a connection, one transaction) and the
    placeholder."""

    P = "?"

    def _run(self, doing: str, fn: Callable[[Any], T]) -> T:  # pragma: no cover - overridden
        raise NotImplementedError

    def _shadow_values(self, r: ShadowRecord) -> tuple[Any, ...]:
        d = asdict(r)
        d["shadow_plan"] = orjson.dumps(d["shadow_plan"]).decode()
        return tuple(d[c] for c in _SHADOW_COLS)

    def write_shadow(self, rows: Sequence[ShadowRecord]) -> None:
        if not rows:
            return
        cols = ", ".join(_SHADOW_COLS)
        ph = ", ".join([self.P] * len(_SHADOW_COLS))
        upd = ", ".join(f"{c} = excluded.{c}" for c in _SHADOW_COLS[1:])
        stmt = (f"INSERT INTO {self._t('shadow')} ({cols}) VALUES ({ph}) "
                f"ON CONFLICT (request_id) DO UPDATE SET {upd}")
        params = [self._shadow_values(r) for r in rows]
        self._run("write shadow records", lambda c: c.executemany(stmt, params))

    def shadow_summary(self, name: str, since: float, until: float) -> list[tuple[Any, ...]]:
        """Per tier: (tier, requests, same choice, served est. USD, shadow est. USD, calls, call USD, call errors)."""
        stmt = _SUMMARY.format(shadow=self._t("shadow"), p=self.P)
        return self._run("read shadow records", lambda c: list(c.execute(stmt, (name, since, until)).fetchall()))

    def canary_state(self, name: str) -> CanaryState | None:
        stmt = f"SELECT name, share, status, updated_ts FROM {self._t('canary_state')} WHERE name = {self.P}"
        row = self._run("read the canary state", lambda c: c.execute(stmt, (name,)).fetchone())
        return CanaryState(str(row[0]), float(row[1]), str(row[2]), float(row[3])) if row else None

    def set_canary(self, name: str, share: float, status: str, action: str, actor: str, reason: str,
                   default_share: float | None) -> tuple[float | None, float]:
        """Set ``name``'s share and status and append the audit row, in one transaction; returns (before, after).
        ``default_share`` is the configured share, recorded as "before" when the store had none yet."""
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"a canary share is a fraction in [0, 1], got {share:g}")
        p, now = self.P, time.time()

        def run(c: Any) -> tuple[float | None, float]:
            row = c.execute(f"SELECT share FROM {self._t('canary_state')} WHERE name = {p}", (name,)).fetchone()
            before = float(row[0]) if row else default_share
            c.execute(f"INSERT INTO {self._t('canary_state')} (name, share, status, updated_ts) VALUES ({p}, {p}, "
                      f"{p}, {p}) ON CONFLICT (name) DO UPDATE SET share = excluded.share, status = excluded.status, "
                      "updated_ts = excluded.updated_ts", (name, share, status, now))
            c.execute(f"INSERT INTO {self._t('canary_audit')} (ts, name, action, share_before, share_after, actor, "
                      f"reason) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p})",
                      (now, name, action, before, share, actor, reason))
            return before, share

        return self._run("record the canary change", run)

    def audit(self, name: str) -> list[dict[str, Any]]:
        stmt = (f"SELECT ts, name, action, share_before, share_after, actor, reason FROM {self._t('canary_audit')} "
                f"WHERE name = {self.P} ORDER BY ts, seq")
        keys = ("ts", "name", "action", "share_before", "share_after", "actor", "reason")
        rows = self._run("read the canary audit log", lambda c: c.execute(stmt, (name,)).fetchall())
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def _t(self, table: str) -> str:
        return table


class SQLiteArmsStore(_SQLStore):
    """The arms store in its own SQLite file (WAL); one connection per call, so any thread may use it."""

    def __init__(self, path: str | Path, *, cleanup_dir: str | None = None) -> None:
        self.path = Path(path)
        self._cleanup_dir = cleanup_dir
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        layout = Layout(SCHEMA_VERSION, APPLICATION_ID, (
            f"CREATE TABLE shadow ({_SHADOW_SQLITE})",
            "CREATE INDEX shadow_name_ts ON shadow (name, ts)",
            "CREATE TABLE canary_state (name TEXT PRIMARY KEY, share REAL NOT NULL, status TEXT NOT NULL, "
            "updated_ts REAL NOT NULL)",
            "CREATE TABLE canary_audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, name TEXT NOT NULL, "
            "action TEXT NOT NULL, share_before REAL, share_after REAL NOT NULL, actor TEXT, reason TEXT)",
        ), {}, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")

        def refuse(why: Refusal, version: int) -> ArmsStoreError:
            if why == "newer_version":
                return ArmsStoreError(f"{self.path} has arms-store version {version}; this tierwise knows up to "
                                      f"{SCHEMA_VERSION}: upgrade tierwise")
            return ArmsStoreError(f"{self.path} is not a tierwise arms store (another application's file)")

        try:
            conn = self._connect()
            try:
                ensure_layout(conn, layout, refuse)
                conn.execute("PRAGMA journal_mode=WAL")
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            raise ArmsStoreError(f"{self.path} cannot be used as the arms store: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _run(self, doing: str, fn: Callable[[Any], T]) -> T:
        with self._lock:
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
                out = fn(conn)
                conn.execute("COMMIT")
                return out
            except sqlite3.Error as exc:
                rollback(conn)
                raise ArmsStoreError(f"arms store {self.path}: cannot {doing}: {exc}") from None
            finally:
                conn.close()

    def close(self) -> None:
        if self._cleanup_dir is not None:
            shutil.rmtree(self._cleanup_dir, ignore_errors=True)
            self._cleanup_dir = None


class PostgresArmsStore(_SQLStore):
    """The arms store as tables ``tierwise_shadow``, ``tierwise_canary_state``, ``tierwise_canary_audit`` in the
    ledger's schema; one short connection per call (these are rare, small operations)."""

    P = "%s"

    def __init__(self, dsn: str, schema: str) -> None:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        from tierwise.pgtext import describe_pg_error, pg_lock_key

        self._psycopg, self._describe = psycopg, describe_pg_error
        try:
            self._secret = str(conninfo_to_dict(dsn).get("password") or "") or None
        except psycopg.Error:
            raise ArmsStoreError("ledger.dsn is not a valid PostgreSQL connection string") from None
        self._dsn, self.schema = dsn, schema

        def create(c: Any) -> None:
            c.execute("SELECT pg_advisory_xact_lock(%s)", (pg_lock_key("arms.schema", schema),))
            c.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            c.execute(f"CREATE TABLE IF NOT EXISTS {self._t('shadow')} ({_SHADOW_PG})")
            c.execute(f"CREATE INDEX IF NOT EXISTS tierwise_shadow_name_ts ON {self._t('shadow')} (name, ts)")
            c.execute(f"CREATE TABLE IF NOT EXISTS {self._t('canary_state')} (name text PRIMARY KEY, share double "
                      "precision NOT NULL, status text NOT NULL, updated_ts double precision NOT NULL)")
            c.execute(f"CREATE TABLE IF NOT EXISTS {self._t('canary_audit')} (seq bigserial PRIMARY KEY, ts double "
                      "precision NOT NULL, name text NOT NULL, action text NOT NULL, share_before double precision, "
                      "share_after double precision NOT NULL, actor text, reason text)")

        self._run("create the arms tables", create)

    def _t(self, table: str) -> str:
        return f'"{self.schema}"."tierwise_{table}"'  # schema name is pattern-checked by LedgerConfig

    def _shadow_values(self, r: ShadowRecord) -> tuple[Any, ...]:
        from psycopg.types.json import Jsonb

        d = asdict(r)
        d["shadow_plan"] = Jsonb(d["shadow_plan"])
        return tuple(d[c] for c in _SHADOW_COLS)

    def _run(self, doing: str, fn: Callable[[Any], T]) -> T:
        psycopg = self._psycopg
        try:
            with (psycopg.connect(self._dsn, application_name="tierwise-arms", connect_timeout=10) as conn,
                  conn.transaction(), conn.cursor() as cur):
                return fn(cur)
        except psycopg.Error as exc:
            raise ArmsStoreError(f"PostgreSQL arms store ({self.schema}): cannot {doing}: "
                                 f"{self._describe(exc, self._secret)}") from None

    def close(self) -> None:
        pass


def open_arms_store(ledger: LedgerConfig) -> ArmsStore:
    """The arms store beside ``ledger`` (see the module docstring)."""
    if ledger.backend == "postgres":
        assert ledger.dsn is not None
        return PostgresArmsStore(ledger.dsn, ledger.pg_schema)
    if ledger.backend == "memory":
        tmp = tempfile.mkdtemp(prefix="tierwise-arms-")
        return SQLiteArmsStore(Path(tmp) / "arms.db", cleanup_dir=tmp)
    return SQLiteArmsStore(arms_path(ledger))


def arms_path(ledger: LedgerConfig) -> Path:
    return Path(ledger.path + ".arms.db")
