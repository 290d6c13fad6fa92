"""Principals and keys in their own SQLite file (WAL, versioned, stamped like the ledger file)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tierwise.governance.records import Conflict, GovernanceError, GovernanceStoreError, T
from tierwise.governance.sql_store import Query, _SQLStore
from tierwise.sqlite_schema import Layout, Refusal, ensure_layout, rollback

# -- SQLite ---------------------------------------------------------------------------------------------------

SQLITE_SCHEMA_VERSION = 1
#: ``PRAGMA application_id`` of a tierwise governance file ("TWGV").
APPLICATION_ID = 0x54574756
_SQLITE_MIGRATIONS: dict[int, tuple[str, ...]] = {}  # version N -> N+1; version 1 is the first layout
_SQLITE_CREATE = (
    "CREATE TABLE principals (name TEXT PRIMARY KEY, customer TEXT, department TEXT, project TEXT, value_tier TEXT, "
    "allowed_tiers TEXT, allowed_models TEXT, daily_budget_usd REAL, monthly_budget_usd REAL, rpm INTEGER, "
    "tpm INTEGER, revenue_per_request_usd REAL, created_at REAL NOT NULL, updated_at REAL NOT NULL, "
    "disabled INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE keys (id TEXT PRIMARY KEY, name TEXT UNIQUE, principal TEXT NOT NULL REFERENCES principals(name), "
    "hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL, revoked_at REAL, "
    "replaced_by TEXT, allowed_tiers TEXT, allowed_models TEXT, daily_budget_usd REAL, monthly_budget_usd REAL, "
    "rpm INTEGER, tpm INTEGER)",
    "CREATE INDEX keys_principal ON keys (principal)",
    "CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), generation INTEGER NOT NULL)",
    "INSERT INTO meta (id, generation) VALUES (1, 0)",
)


_LAYOUT = Layout(SQLITE_SCHEMA_VERSION, APPLICATION_ID, _SQLITE_CREATE, _SQLITE_MIGRATIONS,
                 "SELECT 1 FROM sqlite_master WHERE type = 'table'")


class SQLiteGovernanceStore(_SQLStore):
    """Principals and keys in their own SQLite file (WAL). One connection, serialised by a lock: governance
    traffic is a refresh every few seconds, rare lookups and admin calls."""

    _P, _K, _M = "principals", "keys", "meta"

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000) -> None:
        if str(path) in ("", ":memory:") or str(path).startswith("file::memory:"):
            raise ValueError("SQLiteGovernanceStore needs a file path")
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise GovernanceStoreError(f"cannot open the governance store {self.path}: {_sqlite_why(exc)}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._ensure_schema(conn)
            conn.execute("PRAGMA journal_mode=WAL")
        except GovernanceError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise GovernanceStoreError(f"cannot open the governance store {self.path}: {_sqlite_why(exc)}") from None
        self._conn = conn

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        fix = "point governance.path at another file"

        def refuse(why: Refusal, version: int) -> GovernanceStoreError:
            if why == "foreign_application":
                return GovernanceStoreError(f"{self.path} is an SQLite file of another application, not a tierwise "
                                            f"governance store; {fix}")
            if why == "newer_version":
                return GovernanceStoreError(
                    f"governance store {self.path} has schema version {version}, but this tierwise only knows up to "
                    f"{SQLITE_SCHEMA_VERSION}: upgrade tierwise")
            return GovernanceStoreError(f"{self.path} has tables tierwise did not create; {fix}")

        ensure_layout(conn, _LAYOUT, refuse)

    def _bool(self, value: bool) -> Any:
        return int(value)

    def _run(self, write: bool, fn: Callable[[Query], T]) -> T:
        with self._lock:
            if self._closed:
                raise GovernanceStoreError(f"governance store {self.path} is closed")
            conn = self._conn

            def q(text: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
                return conn.execute(self._sql(text), tuple(args)).fetchall()

            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                result = fn(q)
                conn.execute("COMMIT")
                return result
            except BaseException as exc:
                rollback(conn)
                if isinstance(exc, sqlite3.IntegrityError):
                    raise Conflict("already exists (a concurrent change made the same name)") from None
                if isinstance(exc, sqlite3.Error):
                    raise GovernanceStoreError(
                        f"governance store {self.path}: {_sqlite_why(exc)}") from None
                raise

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def journal_mode(self) -> str:
        with self._lock:
            return str(self._conn.execute("PRAGMA journal_mode").fetchone()[0])

    def __repr__(self) -> str:
        return f"SQLiteGovernanceStore({str(self.path)!r})"


def _sqlite_why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"
