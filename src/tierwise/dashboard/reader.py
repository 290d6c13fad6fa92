"""Read-only access to the ledger for the dashboard, off the event loop.

The dashboard never shares the ledger store's connections (those serve the writer, ``tail`` and ``spend``): it
opens its own, read-only, and runs every query on a small thread pool of its own (``dashboard.query_threads``), so a
slow aggregate over millions of rows can neither block the event loop nor take the threads ``asyncio.to_thread``
gives the rest of the gateway.

- SQLite: a read-only connection per call (opening one costs ~0.1 ms), one ``BEGIN`` .. ``COMMIT`` around all the
  queries of a summary: a WAL snapshot, consistent while the writer appends.
- PostgreSQL: one connection per thread, kept, opened again after it is lost; ``REPEATABLE READ READ ONLY`` with a
  ``statement_timeout``. Failures come back as :class:`LedgerUnavailable` in words that hold no password.
- Memory (tests, throwaway gateways): the window's rows are copied into an in-memory SQLite database and the same
  SQL runs there, so the three backends answer alike.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from tierwise.config.schema import LedgerConfig
from tierwise.dashboard.sql import Dialect, Session, ensure_sqlite_math
from tierwise.ledger.store import COLUMNS, LedgerStore, MemoryLedgerStore

T = TypeVar("T")

STATEMENT_TIMEOUT_MS = 15_000


class LedgerUnavailable(RuntimeError):
    """The ledger cannot be read right now (file gone, database down): a 503 naming the store, never a secret."""


class LedgerReader:
    """Runs ``fn(session)`` in one read transaction on the configured ledger, in a worker thread."""

    def __init__(self, cfg: LedgerConfig, store: LedgerStore, threads: int = 2) -> None:
        self.cfg = cfg
        self.store = store
        self.backend = cfg.backend if not isinstance(store, MemoryLedgerStore) else "memory"
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="tierwise-dashboard")
        self._local = threading.local()
        self._pg_conns: list[Any] = []
        self._lock = threading.Lock()
        if self.backend == "postgres":
            from psycopg import sql as pgsql
            from psycopg.conninfo import conninfo_to_dict

            self._pg_table = pgsql.SQL("{}.{}").format(
                pgsql.Identifier(cfg.pg_schema), pgsql.Identifier("tierwise_ledger"))
            try:
                self._secret = str(conninfo_to_dict(cfg.dsn or "").get("password") or "") or None
            except Exception:  # the store refused such a DSN at start-up already
                self._secret = None
        path = getattr(store, "path", None)
        self._sqlite_path = Path(path) if self.backend == "sqlite" and path is not None else None

    def submit(self, fn: Callable[[Session], T]) -> Any:
        """A concurrent future of ``fn`` run in a read transaction (wrap with ``asyncio.wrap_future``)."""
        return self._pool.submit(self.run, fn)

    def run(self, fn: Callable[[Session], T]) -> T:
        if self.backend == "sqlite":
            return self._run_sqlite(fn)
        if self.backend == "postgres":
            return self._run_postgres(fn)
        return self._run_memory(fn)

    # -- SQLite ----------------------------------------------------------------------------------------------

    def _run_sqlite(self, fn: Callable[[Session], T]) -> T:
        path = self._sqlite_path
        if path is None or not path.exists():
            raise LedgerUnavailable(f"the ledger file {path} does not exist (yet)")
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise LedgerUnavailable(f"cannot open the ledger {path} to read: {exc}") from None
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            ensure_sqlite_math(conn)
            conn.execute("BEGIN")
            try:
                return fn(Session(Dialect("sqlite", "requests", "?"), conn.cursor()))
            finally:
                conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise LedgerUnavailable(f"cannot read the ledger {path}: {exc}") from None
        finally:
            conn.close()

    # -- PostgreSQL ------------------------------------------------------------------------------------------

    def _pg_connect(self) -> Any:
        import psycopg

        from tierwise.pgtext import describe_pg_error

        try:
            conn = psycopg.connect(self.cfg.dsn or "", autocommit=False, application_name="tierwise-dashboard",
                                   connect_timeout=5)
            conn.execute("SET default_transaction_read_only = on")
            conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            conn.commit()
        except psycopg.Error as exc:
            raise LedgerUnavailable(f"cannot connect to the PostgreSQL ledger: {describe_pg_error(exc, self._secret)}") from None
        with self._lock:
            self._pg_conns.append(conn)
        return conn

    def _run_postgres(self, fn: Callable[[Session], T]) -> T:
        import psycopg

        from tierwise.pgtext import describe_pg_error

        table = self._pg_table.as_string(None)
        for attempt in (1, 2):
            conn = getattr(self._local, "pg", None)
            if conn is None or conn.closed or conn.broken:
                conn = self._local.pg = self._pg_connect()
            try:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                try:
                    with conn.cursor() as cur:
                        return fn(Session(Dialect("postgres", table, "%s"), cur))
                finally:
                    if not conn.closed and not conn.broken:
                        conn.rollback()
            except psycopg.OperationalError as exc:
                if attempt == 2 or not conn.broken:
                    raise LedgerUnavailable(f"cannot read the PostgreSQL ledger: {describe_pg_error(exc, self._secret)}") from None
            except psycopg.Error as exc:
                raise LedgerUnavailable(f"cannot read the PostgreSQL ledger: {describe_pg_error(exc, self._secret)}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    # -- memory ----------------------------------------------------------------------------------------------

    def _run_memory(self, fn: Callable[[Session], T]) -> T:
        conn = sqlite3.connect(":memory:")
        try:
            ensure_sqlite_math(conn)
            names = [n for n, _ in COLUMNS]
            conn.execute(f"CREATE TABLE requests ({', '.join(names)})")
            json_cols = {n for n, kind in COLUMNS if kind == "JSON"}
            conn.executemany(
                f"INSERT INTO requests VALUES ({', '.join('?' for _ in names)})",
                ([orjson.dumps(r.get(n)).decode() if n in json_cols else r.get(n) for n in names]
                 for r in self.store.iter_rows(None, None)))
            return fn(Session(Dialect("sqlite", "requests", "?"), conn.cursor()))
        finally:
            conn.close()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            conns, self._pg_conns = self._pg_conns, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
