"""The rollout store in an SQLite file beside the ledger (``<ledger>.rollout.db`` by default).

A file of its own rather than tables in the ledger file: captures are large, purged on a schedule and may be kept
on another disk or deleted outright without touching the books. WAL mode, so the gateway's capture writer and a
report reading the file do not block each other.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from tierwise.ledger.window import ts_window
from tierwise.rollout.records import Captured, Feedback
from tierwise.sqlite_schema import Layout, Refusal, ensure_layout, rollback

SCHEMA_VERSION = 1
APPLICATION_ID = 0x5457524F  # "TWRO"

_CREATE = (
    "CREATE TABLE captures (request_id TEXT PRIMARY KEY, ts REAL NOT NULL, tier TEXT, tier_source TEXT, "
    "model TEXT, principal TEXT, session_id TEXT, status TEXT, messages TEXT NOT NULL, params TEXT NOT NULL, "
    "answer TEXT)",
    "CREATE INDEX captures_ts ON captures (ts)",
    "CREATE INDEX captures_tier ON captures (tier, ts)",
    "CREATE TABLE feedback (request_id TEXT NOT NULL, source TEXT NOT NULL, ts REAL NOT NULL, score REAL, "
    "label TEXT, thumbs INTEGER, comment TEXT, PRIMARY KEY (request_id, source))",
    "CREATE INDEX feedback_ts ON feedback (ts)",
)

_CAPTURE_COLS = ("request_id", "ts", "tier", "tier_source", "model", "principal", "session_id", "status",
                 "messages", "params", "answer")
_FEEDBACK_COLS = ("request_id", "source", "ts", "score", "label", "thumbs", "comment")


class RolloutStoreError(RuntimeError):
    """The rollout store cannot be used (foreign or newer file, unreachable database)."""


class RolloutStoreMissing(RolloutStoreError):
    """Opened for reading only, and there is no rollout store yet (nothing was ever captured or rated)."""


class SQLiteRolloutStore:
    """Captures and feedback in one SQLite file. One write connection (under a lock), a new connection per read."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._conn = self._connect()
            layout = Layout(SCHEMA_VERSION, APPLICATION_ID, _CREATE, {},
                            "SELECT 1 FROM sqlite_master WHERE type = 'table'")
            ensure_layout(self._conn, layout, self._refuse)
            self._conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as exc:
            raise RolloutStoreError(f"{self.path} is not a tierwise rollout store: {exc}") from None

    def _refuse(self, why: Refusal, version: int) -> RolloutStoreError:
        if why == "newer_version":
            return RolloutStoreError(f"rollout store {self.path} has schema version {version}; this tierwise knows "
                                     f"up to {SCHEMA_VERSION}: upgrade tierwise")
        return RolloutStoreError(f"{self.path} is not a tierwise rollout store (another application's file)")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _write(self, sql: str, params: list[tuple[Any, ...]]) -> int:
        with self._lock:
            if self._closed:
                raise RolloutStoreError(f"rollout store {self.path} is closed")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cur = self._conn.executemany(sql, params)
                self._conn.execute("COMMIT")
                return cur.rowcount
            except BaseException:
                rollback(self._conn)
                raise

    def write_captures(self, rows: list[Captured]) -> None:
        if not rows:
            return
        self._write(f"INSERT OR REPLACE INTO captures ({', '.join(_CAPTURE_COLS)}) VALUES "
                    f"({', '.join('?' * len(_CAPTURE_COLS))})",
                    [(c.request_id, c.ts, c.tier, c.tier_source, c.model, c.principal, c.session_id, c.status,
                      orjson.dumps(c.messages, default=str).decode(), orjson.dumps(c.params, default=str).decode(),
                      c.answer) for c in rows])

    def _select(self, sql: str, args: list[Any]) -> Iterator[tuple[Any, ...]]:
        conn = self._connect()
        try:
            cur = conn.execute(sql, args)
            while batch := cur.fetchmany(500):
                yield from batch
        finally:
            conn.close()

    def iter_captured(self, since: float | None = None, until: float | None = None,
                      tiers: list[str] | None = None) -> Iterator[Captured]:
        where, args = _window(since, until)
        if tiers is not None:
            where.append(f"tier IN ({', '.join('?' * len(tiers))})")
            args.extend(tiers)
        sql = (f"SELECT {', '.join(_CAPTURE_COLS)} FROM captures"
               + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY ts, request_id")
        for t in self._select(sql, args):
            yield Captured(request_id=t[0], ts=t[1], tier=t[2], tier_source=t[3], model=t[4], principal=t[5],
                           session_id=t[6], status=t[7], messages=orjson.loads(t[8]), params=orjson.loads(t[9]),
                           answer=t[10])

    def count_captured(self, since: float | None = None, until: float | None = None) -> int:
        where, args = _window(since, until)
        sql = "SELECT count(*) FROM captures" + (f" WHERE {' AND '.join(where)}" if where else "")
        return int(next(self._select(sql, args))[0])

    def count_feedback(self, since: float | None = None, until: float | None = None) -> int:
        where, args = _window(since, until)
        sql = "SELECT count(*) FROM feedback" + (f" WHERE {' AND '.join(where)}" if where else "")
        return int(next(self._select(sql, args))[0])

    def purge(self, before: float) -> int:
        return self._write("DELETE FROM captures WHERE ts < ?", [(before,)])

    def put_feedback(self, fb: Feedback) -> bool:
        with self._lock:
            if self._closed:
                raise RolloutStoreError(f"rollout store {self.path} is closed")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                old = self._conn.execute("SELECT 1 FROM feedback WHERE request_id = ? AND source = ?",
                                         (fb.request_id, fb.source)).fetchone()
                self._conn.execute(
                    f"INSERT OR REPLACE INTO feedback ({', '.join(_FEEDBACK_COLS)}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (fb.request_id, fb.source, fb.ts, fb.score, fb.label, fb.thumbs, fb.comment))
                self._conn.execute("COMMIT")
            except BaseException:
                rollback(self._conn)
                raise
        return old is None

    def iter_feedback(self, since: float | None = None, until: float | None = None) -> Iterator[Feedback]:
        where, args = _window(since, until)
        sql = (f"SELECT {', '.join(_FEEDBACK_COLS)} FROM feedback"
               + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY ts, request_id, source")
        for t in self._select(sql, args):
            yield Feedback(*t)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()


def _window(since: float | None, until: float | None) -> tuple[list[str], list[Any]]:
    return ts_window(since, until)
