"""The rollout store in PostgreSQL, when the ledger is there: tables ``tierwise_capture`` and
``tierwise_feedback`` in the ledger's schema, so that every replica's captures and feedback land in one place.

Connections: one for writes (capture writer thread, feedback handler thread) under a lock, opened again after it
is lost; reads stream through a server-side cursor on a connection of their own. Errors never quote row contents
nor the DSN's password (:func:`tierwise.pgtext.describe_pg_error`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import orjson

try:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.types.json import Jsonb
except ImportError as exc:  # pragma: no cover - only without the extra
    raise ImportError("a PostgreSQL rollout store needs psycopg 3: pip install 'tierwise[postgres]'") from exc

from tierwise.pgtext import describe_pg_error, pg_lock_key
from tierwise.rollout.records import Captured, Feedback
from tierwise.rollout.store_sqlite import RolloutStoreError, RolloutStoreMissing

T = TypeVar("T")
CAPTURE_TABLE = "tierwise_capture"
FEEDBACK_TABLE = "tierwise_feedback"
_CAPTURE_COLS = ("request_id", "ts", "tier", "tier_source", "model", "principal", "session_id", "status",
                 "messages", "params", "answer")
_FEEDBACK_COLS = ("request_id", "source", "ts", "score", "label", "thumbs", "comment")


class PostgresRolloutStore:
    def __init__(self, dsn: str, schema: str = "tierwise", *, create: bool = True) -> None:
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error:
            raise RolloutStoreError("ledger.dsn is not a valid PostgreSQL connection string") from None
        self._dsn, self.schema = dsn, schema
        self._secret = str(params.get("password") or "") or None
        self._lock = threading.Lock()
        self._closed = False
        s = sql.Identifier(schema)
        self._cap = sql.SQL("{}.{}").format(s, sql.Identifier(CAPTURE_TABLE))
        self._fb = sql.SQL("{}.{}").format(s, sql.Identifier(FEEDBACK_TABLE))
        self._conn: psycopg.Connection[Any] | None = None
        if create:
            self._with_conn("create the rollout tables", self._create)
        elif not self._with_conn("look for the rollout tables", self._exists):
            self.close()
            raise RolloutStoreMissing(f"no rollout tables in schema {schema}")

    def _exists(self, conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
                           (f'"{self.schema}".{CAPTURE_TABLE}', f'"{self.schema}".{FEEDBACK_TABLE}')).fetchone()
        return bool(row and row[0])

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self._dsn, autocommit=True, application_name="tierwise-rollout", connect_timeout=10)

    def _error(self, doing: str, exc: BaseException) -> RolloutStoreError:
        return RolloutStoreError(f"PostgreSQL rollout store ({self.schema}): cannot {doing}: "
                                 f"{describe_pg_error(exc, self._secret)}")

    def _with_conn(self, doing: str, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``fn`` on the write connection, reconnecting once if it was lost."""
        with self._lock:
            if self._closed:
                raise RolloutStoreError("rollout store is closed")
            for attempt in (0, 1):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = self._connect()
                    return fn(self._conn)
                except psycopg.OperationalError as exc:
                    if self._conn is not None:
                        self._conn.close()
                    self._conn = None
                    if attempt:
                        raise self._error(doing, exc) from None
                except psycopg.Error as exc:
                    raise self._error(doing, exc) from None
        raise AssertionError("unreachable")

    def _create(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (pg_lock_key("rollout.schema", self.schema),))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            conn.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (request_id text PRIMARY KEY, ts double precision NOT NULL, "
                "tier text, tier_source text, model text, principal text, session_id text, status text, "
                "messages jsonb NOT NULL, params jsonb NOT NULL, answer text)").format(self._cap))
            conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (ts)").format(
                sql.Identifier(f"{CAPTURE_TABLE}_ts"), self._cap))
            conn.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (request_id text NOT NULL, source text NOT NULL, "
                "ts double precision NOT NULL, score double precision, label text, thumbs integer, comment text, "
                "PRIMARY KEY (request_id, source))").format(self._fb))

    def write_captures(self, rows: list[Captured]) -> None:
        if not rows:
            return
        cols = sql.SQL(", ").join(map(sql.Identifier, _CAPTURE_COLS))
        stmt = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (request_id) DO UPDATE SET {}").format(
            self._cap, cols, sql.SQL(", ").join(sql.Placeholder() * len(_CAPTURE_COLS)),
            sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in _CAPTURE_COLS[1:]))
        params = [(c.request_id, c.ts, c.tier, c.tier_source, c.model, c.principal, c.session_id, c.status,
                   Jsonb(c.messages, dumps=_dumps), Jsonb(c.params, dumps=_dumps), c.answer) for c in rows]

        def run(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(stmt, params)

        self._with_conn("write captures", run)

    def _stream(self, doing: str, query: sql.Composed, args: list[Any]) -> Iterator[tuple[Any, ...]]:
        try:
            conn = self._connect()
        except psycopg.Error as exc:
            raise self._error(doing, exc) from None
        try:
            with conn.transaction(), conn.cursor(name="tierwise_rollout_read") as cur:
                cur.itersize = 500
                cur.execute(query, args)
                yield from cur
        except psycopg.Error as exc:
            raise self._error(doing, exc) from None
        finally:
            conn.close()

    def iter_captured(self, since: float | None = None, until: float | None = None,
                      tiers: list[str] | None = None) -> Iterator[Captured]:
        where, args = _window(since, until)
        if tiers is not None:
            where.append(sql.SQL("tier = ANY(%s)"))
            args.append(list(tiers))
        q = sql.SQL("SELECT {} FROM {}{} ORDER BY ts, request_id").format(
            sql.SQL(", ").join(map(sql.Identifier, _CAPTURE_COLS)), self._cap, _where(where))
        for t in self._stream("read captures", q, args):
            yield Captured(request_id=t[0], ts=t[1], tier=t[2], tier_source=t[3], model=t[4], principal=t[5],
                           session_id=t[6], status=t[7], messages=t[8], params=t[9], answer=t[10])

    def count_captured(self, since: float | None = None, until: float | None = None) -> int:
        where, args = _window(since, until)
        q = sql.SQL("SELECT count(*) FROM {}{}").format(self._cap, _where(where))
        return int(self._with_conn("count captures", lambda c: c.execute(q, args).fetchone())[0])  # type: ignore[index]

    def count_feedback(self, since: float | None = None, until: float | None = None) -> int:
        where, args = _window(since, until)
        q = sql.SQL("SELECT count(*) FROM {}{}").format(self._fb, _where(where))
        return int(self._with_conn("count feedback", lambda c: c.execute(q, args).fetchone())[0])  # type: ignore[index]

    def purge(self, before: float) -> int:
        q = sql.SQL("DELETE FROM {} WHERE ts < %s").format(self._cap)
        return int(self._with_conn("purge captures", lambda c: c.execute(q, (before,)).rowcount))

    def put_feedback(self, fb: Feedback) -> bool:
        q = sql.SQL(
            "INSERT INTO {} ({}) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (request_id, source) DO UPDATE "
            "SET ts = EXCLUDED.ts, score = EXCLUDED.score, label = EXCLUDED.label, thumbs = EXCLUDED.thumbs, "
            "comment = EXCLUDED.comment RETURNING (xmax = 0)").format(
            self._fb, sql.SQL(", ").join(map(sql.Identifier, _FEEDBACK_COLS)))
        args = (fb.request_id, fb.source, fb.ts, fb.score, fb.label, fb.thumbs, fb.comment)
        row = self._with_conn("store feedback", lambda c: c.execute(q, args).fetchone())
        return bool(row and row[0])

    def iter_feedback(self, since: float | None = None, until: float | None = None) -> Iterator[Feedback]:
        where, args = _window(since, until)
        q = sql.SQL("SELECT {} FROM {}{} ORDER BY ts, request_id, source").format(
            sql.SQL(", ").join(map(sql.Identifier, _FEEDBACK_COLS)), self._fb, _where(where))
        for t in self._stream("read feedback", q, args):
            yield Feedback(*t)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._conn is not None:
                    self._conn.close()


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _window(since: float | None, until: float | None) -> tuple[list[sql.Composable], list[Any]]:
    where: list[sql.Composable] = []
    args: list[Any] = []
    if since is not None:
        where.append(sql.SQL("ts >= %s"))
        args.append(since)
    if until is not None:
        where.append(sql.SQL("ts < %s"))
        args.append(until)
    return where, args


def _where(parts: list[sql.Composable]) -> sql.Composable:
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(parts) if parts else sql.SQL("")
