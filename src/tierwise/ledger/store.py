"""Where ledger rows live: a deliberately small storage interface and two implementations.

A row is exactly :meth:`tierwise.types.LedgerRecord.as_row` — the same dict the JSONL export writes — so every
store, export and query speaks one shape and a new backend only has to map that dict to its own columns.

The interface is small so a PostgreSQL store (asyncpg/psycopg) can follow without touching the writer or
the exporters. Such a store must:

- ``write_batch(rows)``: insert all rows atomically (one transaction) and idempotently by ``id`` — the writer
  retries a batch whose outcome it could not observe, and re-imports fallback files, so a second insert of the same
  ``id`` must replace, not duplicate. It is called from the writer's own thread, never from the event loop; a
  sync driver (psycopg) fits directly, an async one needs its own loop in that thread.
- ``tail(n)``, ``iter_rows(since, until)``, ``count()``: read from any thread, on a connection other than the
  writer's, and return rows with the same Python types as ``as_row()`` (``stream`` a bool, nested fields decoded).
- ``spend(query)``: sums per group over a window (:mod:`tierwise.ledger.spend`), aggregated by the database
  (``GROUP BY``), never by loading rows into Python, groups and totals from one snapshot.
- ``close()``: idempotent.
"""

from __future__ import annotations

import operator
import sqlite3
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import orjson

from tierwise.ledger.spend import SpendQuery, SpendReport, memory_spend, sqlite_spend
from tierwise.ledger.window import ts_window
from tierwise.sqlite_schema import Layout, Refusal, ensure_layout, rollback

Row = dict[str, Any]

#: Every field of ``LedgerRecord.as_row()``, in its order (also the CSV column order), with its SQLite type.
#: ``JSON`` columns hold nested values as JSON text; ``BOOL`` is stored as 0/1 and decoded back to bool.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "TEXT"),
    ("ts", "REAL"),
    ("principal", "TEXT"),
    ("tier", "TEXT"),
    ("tier_source", "TEXT"),
    ("requested_model", "TEXT"),
    ("model", "TEXT"),
    ("attempts", "JSON"),
    ("input_tokens", "INTEGER"),
    ("output_tokens", "INTEGER"),
    ("cache_read_tokens", "INTEGER"),
    ("cache_write_tokens", "INTEGER"),
    ("reasoning_tokens", "INTEGER"),
    ("cost_usd", "REAL"),
    ("cost_breakdown", "JSON"),
    ("estimated_cost_usd", "REAL"),
    ("ttft_ms", "REAL"),
    ("latency_ms", "REAL"),
    ("fallbacks", "INTEGER"),
    ("escalations", "INTEGER"),
    ("session_id", "TEXT"),
    ("stream", "BOOL"),
    ("status", "TEXT"),
    ("http_status", "INTEGER"),
    ("error", "TEXT"),
    ("notes", "JSON"),
    # schema version 2: attribution. Appended (ALTER TABLE ADD COLUMN puts them last), so the CSV columns of
    # version 1 keep their positions.
    ("key_id", "TEXT"),
    ("customer", "TEXT"),
    ("department", "TEXT"),
    ("project", "TEXT"),
    ("tags", "JSON"),
    # schema version 3: revenue (margin per customer in ``tierwise spend``)
    ("revenue_usd", "REAL"),
    # schema version 4: the canary arm that routed the request ('canary:<name>' / 'control:<name>'; NULL: none)
    ("arm", "TEXT"),
)
COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in COLUMNS)
JSON_COLUMNS: frozenset[str] = frozenset(name for name, kind in COLUMNS if kind == "JSON")

#: Columns added after schema version 1, with the value a row written before them gets: rows in an older ledger file
#: (SQLite and PostgreSQL fill them in as column defaults) and rows in journal segments or fallback files written by
#: an older tierwise (:func:`complete_row` fills them in before they are stored).
ADDED_COLUMNS: dict[str, Any] = {"key_id": None, "customer": None, "department": None, "project": None, "tags": {},
                                 "revenue_usd": None, "arm": None}

SCHEMA_VERSION = 4
#: ``PRAGMA application_id`` of a tierwise ledger ("TWLG"), so a foreign SQLite file is refused, not written into.
APPLICATION_ID = 0x54574C47


class LedgerSchemaError(RuntimeError):
    """The ledger file cannot be used by this version of tierwise (newer schema, or not a ledger at all)."""


@runtime_checkable
class LedgerStore(Protocol):
    """Storage for ledger rows. See the module docstring for the contract a new backend must honour."""

    def write_batch(self, rows: list[Row], *, replace: bool = True) -> None:
        """Insert ``rows`` in one transaction, replacing rows with the same ``id`` (``replace=False``: keeping
        them, for journal replay of interrupted requests). Called from one writer thread."""
        ...

    def tail(self, n: int) -> list[Row]:
        """The ``n`` most recent rows by ``ts``, oldest first (the order a terminal tail prints them)."""
        ...

    def iter_rows(self, since: float | None = None, until: float | None = None) -> Iterator[Row]:
        """Rows with ``since <= ts < until`` (either bound optional), in ``ts`` order, streamed."""
        ...

    def count(self) -> int:
        """Number of rows stored."""
        ...

    def close(self) -> None:
        """Release connections. Idempotent."""
        ...

    def rows_after(self, seq: int | None, limit: int = 1000) -> list[tuple[int, Row]]:
        """Rows stored after insertion sequence number ``seq``, in insertion order, at most ``limit``, each with its
        sequence number; ``seq=None``: the newest ``limit`` rows (where a follower starts). A row replaced by id
        gets a new, higher number. For followers (``tierwise ledger tail -f``): rows are written when requests
        end, so ``ts`` order is not insertion order and a ``ts`` cursor would skip rows."""
        ...

    def spend(self, query: SpendQuery) -> SpendReport:
        """Cost, requests, errors and tokens per group of ``query.by`` over ``query``'s window, and the window's
        totals, aggregated by the database (see :mod:`tierwise.ledger.spend`)."""
        ...


def complete_row(row: Row) -> Row:
    """``row`` with every column added since schema version 1 present (a row journaled or saved to a fallback file
    by an older tierwise lacks them); the row itself when nothing is missing (the common case)."""
    if not isinstance(row, dict) or (
            "arm" in row and "revenue_usd" in row and "tags" in row and "key_id" in row and "customer" in row
            and "department" in row and "project" in row):
        return row
    out = dict(row)
    for name, default in ADDED_COLUMNS.items():
        if name not in out:
            out[name] = dict(default) if isinstance(default, dict) else default
    return out


def _json_text(value: Any) -> str:
    # default=str: an odd object in ``notes`` must not make a whole batch unwritable forever.
    return orjson.dumps(value, default=str).decode()


class MemoryLedgerStore:
    """Rows in a list: for tests, benchmarks and throwaway dev gateways.

    Rows are copied through JSON on write so a reader sees exactly what a SQLite round trip would give (and later
    mutation of the caller's dict cannot change history). ``max_rows`` bounds memory for a long-running dev gateway
    by dropping the oldest rows.
    """

    def __init__(self, max_rows: int | None = None) -> None:
        self._rows: deque[Row] = deque(maxlen=max_rows)
        self._index: dict[str, Row] = {}
        self._lock = threading.Lock()

    def write_batch(self, rows: list[Row], *, replace: bool = True) -> None:
        copies = [orjson.loads(orjson.dumps(row, default=str)) for row in rows]
        with self._lock:
            for row in copies:
                old = self._index.get(row["id"])
                if old is not None:  # same id again (a retried batch): replace, as SQLite does
                    if not replace:
                        continue
                    self._rows.remove(old)
                if self._rows.maxlen is not None and len(self._rows) == self._rows.maxlen:
                    self._index.pop(self._rows[0]["id"], None)
                self._rows.append(row)
                self._index[row["id"]] = row

    def _sorted(self) -> list[Row]:
        with self._lock:
            rows = list(self._rows)
        rows.sort(key=lambda r: r["ts"])  # stable: equal ts keep insertion order, like ORDER BY ts, rowid
        return rows

    def tail(self, n: int) -> list[Row]:
        if n <= 0:
            return []
        return self._sorted()[-n:]

    def iter_rows(self, since: float | None = None, until: float | None = None) -> Iterator[Row]:
        for row in self._sorted():
            if (since is None or row["ts"] >= since) and (until is None or row["ts"] < until):
                yield row

    def count(self) -> int:
        with self._lock:
            return len(self._rows)

    def spend(self, query: SpendQuery) -> SpendReport:
        # in Python: this store is for tests and throwaway gateways (the SQL stores aggregate in the database)
        return memory_spend(self.iter_rows(query.since, query.until), query)

    def close(self) -> None:
        pass

    def rows_after(self, seq: int | None, limit: int = 1000) -> list[tuple[int, Row]]:
        # Sequence numbers are given out here, lazily, in insertion order (the write path stays untouched): rows
        # only ever join at the right end of the deque, so the ones without a number are the run at the right end
        # after the last row that has one. The map holds the numbered rows, so their ids cannot be reused.
        if limit <= 0:
            return []
        with self._lock:
            seqs: dict[int, tuple[Row, int]] = self.__dict__.setdefault("_follow_seqs", {})
            fresh: list[Row] = []
            for row in reversed(self._rows):
                if id(row) in seqs:
                    break
                fresh.append(row)
            n = int(self.__dict__.get("_follow_next", 1))
            for row in reversed(fresh):
                seqs[id(row)] = (row, n)
                n += 1
            self.__dict__["_follow_next"] = n
            if len(seqs) > 2 * len(self._rows) + 64:  # forget rows that have left the store
                live = {id(r) for r in self._rows}
                for key in [k for k in seqs if k not in live]:
                    del seqs[key]
            numbered = [(seqs[id(r)][1], r) for r in self._rows]
        if seq is None:
            return numbered[-limit:]
        return [(s, r) for s, r in numbered if s > seq][:limit]


class SQLiteLedgerStore:
    """The default ledger: one SQLite file in WAL mode, no server.

    WAL lets the gateway's readers (``tierwise ledger tail``, the admin API) query while the writer appends, and
    ``synchronous=NORMAL`` makes a commit one sequential WAL append: a committed batch survives a process crash
    (a power loss may lose the last few batches, an acceptable trade for a ledger written every 200 ms).

    The write connection is used only by :meth:`write_batch`, i.e. only by the writer thread; reads go through a
    separate connection (``tail``/``count``, serialised by a lock) or a short-lived one per ``iter_rows`` call so
    a long export never holds up the others.
    """

    _SELECT = f"SELECT {', '.join(COLUMN_NAMES)} FROM requests"
    _INSERT = (
        f"INSERT OR REPLACE INTO requests ({', '.join(COLUMN_NAMES)}) "
        f"VALUES ({', '.join('?' for _ in COLUMN_NAMES)})"
    )

    _INSERT_NEW = _INSERT.replace("INSERT OR REPLACE", "INSERT OR IGNORE", 1)

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000) -> None:
        if str(path) in ("", ":memory:") or str(path).startswith("file::memory:"):
            raise ValueError("SQLiteLedgerStore needs a file path; use MemoryLedgerStore for an in-memory ledger")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_ms = busy_timeout_ms
        self._write_conn: sqlite3.Connection | None = None
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._closed = False
        try:
            conn = self._connect()
            try:
                _ensure_schema(conn, self.path)  # first: a refused file is left exactly as it was
                conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:  # e.g. OperationalError (locked, no permission): as is
                raise
            raise LedgerSchemaError(f"{self.path} is not a tierwise ledger: {exc}") from exc
        self._read_conn = self._connect(read_only=True)

    def _connect(self, *, read_only: bool = False) -> sqlite3.Connection:
        # check_same_thread=False: the write connection is created here but used by the writer thread, and
        # close() may run on yet another thread once the writer has stopped; the locks keep use serial.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        conn.execute("PRAGMA synchronous=NORMAL")
        if read_only:
            conn.execute("PRAGMA query_only=1")
        return conn

    # -- writes (writer thread) ------------------------------------------------------------------------------

    def write_batch(self, rows: list[Row], *, replace: bool = True) -> None:
        if not rows:
            return
        params = [_encode(row) for row in rows]  # before BEGIN: an encoding error must not leave a transaction open
        with self._write_lock:
            if self._closed:
                raise RuntimeError(f"ledger store {self.path} is closed")
            if self._write_conn is None:
                self._write_conn = self._connect()
            conn = self._write_conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(self._INSERT if replace else self._INSERT_NEW, params)
                conn.execute("COMMIT")
            except BaseException:
                rollback(conn)
                raise

    # -- reads (any thread) ----------------------------------------------------------------------------------

    def tail(self, n: int) -> list[Row]:
        if n <= 0:
            return []
        with self._read_lock:
            self._check_open()
            cur = self._read_conn.execute(f"{self._SELECT} ORDER BY ts DESC, rowid DESC LIMIT ?", (n,))
            rows = [_decode(t) for t in cur.fetchall()]
        rows.reverse()
        return rows

    def iter_rows(self, since: float | None = None, until: float | None = None) -> Iterator[Row]:
        self._check_open()
        where, args = ts_window(since, until)
        sql = self._SELECT + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY ts, rowid"
        conn = self._connect(read_only=True)
        try:
            cur = conn.execute(sql, args)
            while batch := cur.fetchmany(1000):
                for t in batch:
                    yield _decode(t)
        finally:
            conn.close()

    def count(self) -> int:
        with self._read_lock:
            self._check_open()
            return int(self._read_conn.execute("SELECT count(*) FROM requests").fetchone()[0])

    def spend(self, query: SpendQuery) -> SpendReport:
        """One ``GROUP BY`` over the window (indexes on ``ts`` and on (column, ts) serve it), on a connection of its
        own so a long report holds up no other reader."""
        self._check_open()
        conn = self._connect(read_only=True)
        try:
            return sqlite_spend(conn, query)
        finally:
            conn.close()

    def journal_mode(self) -> str:
        """The journal mode the file is in (``wal``); for health checks and tests."""
        with self._read_lock:
            self._check_open()
            return str(self._read_conn.execute("PRAGMA journal_mode").fetchone()[0])

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"ledger store {self.path} is closed")

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            if self._closed:
                return
            self._closed = True
            if self._write_conn is not None:
                self._write_conn.close()
                self._write_conn = None
            self._read_conn.close()

    def __repr__(self) -> str:
        return f"SQLiteLedgerStore({str(self.path)!r})"

    def rows_after(self, seq: int | None, limit: int = 1000) -> list[tuple[int, Row]]:
        """The sequence number is the rowid: ``INSERT OR REPLACE`` gives a replaced row a new, higher one, and ledger
        rows are never deleted otherwise, so rowids are not reused."""
        if limit <= 0:
            return []
        select = "SELECT rowid, " + self._SELECT.removeprefix("SELECT ")
        with self._read_lock:
            self._check_open()
            if seq is None:
                got = self._read_conn.execute(f"{select} ORDER BY rowid DESC LIMIT ?", (limit,)).fetchall()
                got.reverse()
            else:
                got = self._read_conn.execute(f"{select} WHERE rowid > ? ORDER BY rowid LIMIT ?", (seq, limit)).fetchall()
        return [(int(t[0]), _decode(t[1:])) for t in got]


_GET_ALL = operator.itemgetter(*COLUMN_NAMES)
_JSON_POSITIONS = tuple(i for i, name in enumerate(COLUMN_NAMES) if name in JSON_COLUMNS)
_STREAM_POSITION = COLUMN_NAMES.index("stream")


def _encode(row: Row) -> list[Any]:
    """SQLite parameters in column order (itemgetter + patching: this runs once per row on the writer thread)."""
    values = list(_GET_ALL(row))
    for i in _JSON_POSITIONS:
        values[i] = _json_text(values[i])
    values[_STREAM_POSITION] = int(values[_STREAM_POSITION])
    return values


def _decode(values: tuple[Any, ...]) -> Row:
    row = dict(zip(COLUMN_NAMES, values, strict=True))
    for name in JSON_COLUMNS:
        text = row[name]
        row[name] = orjson.loads(text) if text is not None else None
    row["stream"] = bool(row["stream"])
    return row


# Indexes of the attribution columns (schema version 2), for ``tierwise spend`` over a window.
_ATTRIBUTION_INDEXES = (
    "CREATE INDEX requests_customer ON requests (customer, ts)",
    "CREATE INDEX requests_department ON requests (department, ts)",
    "CREATE INDEX requests_project ON requests (project, ts)",
)

# Migrations from version N to N+1, applied in order inside one transaction. Version 1 is the first schema. ADD
# COLUMN only rewrites the schema, not the rows (a row written before reads the column's default), so it is
# instant on any size of file; the indexes are built over the existing rows (seconds for millions).
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE requests ADD COLUMN key_id TEXT",
        "ALTER TABLE requests ADD COLUMN customer TEXT",
        "ALTER TABLE requests ADD COLUMN department TEXT",
        "ALTER TABLE requests ADD COLUMN project TEXT",
        "ALTER TABLE requests ADD COLUMN tags TEXT DEFAULT '{}'",
        *_ATTRIBUTION_INDEXES,
    ),
    2: ("ALTER TABLE requests ADD COLUMN revenue_usd REAL",),
    3: ("ALTER TABLE requests ADD COLUMN arm TEXT", "CREATE INDEX requests_arm ON requests (arm, ts)"),
}

# Column defaults, so a new file has exactly the columns a migrated one has.
_DEFAULTS = {"tags": " DEFAULT '{}'"}


def _create_statements() -> tuple[str, ...]:
    cols = ",\n  ".join(
        f"{name} {'TEXT' if kind == 'JSON' else 'INTEGER' if kind == 'BOOL' else kind}"
        + (" NOT NULL UNIQUE" if name == "id" else "") + _DEFAULTS.get(name, "")
        for name, kind in COLUMNS
    )
    return (
        f"CREATE TABLE requests (\n  {cols}\n)",
        "CREATE INDEX requests_ts ON requests (ts)",
        "CREATE INDEX requests_principal ON requests (principal, ts)",
        "CREATE INDEX requests_tier ON requests (tier, ts)",
        "CREATE INDEX requests_model ON requests (model, ts)",
        *_ATTRIBUTION_INDEXES,
        "CREATE INDEX requests_arm ON requests (arm, ts)",
    )


def _ensure_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema in a new file, migrate an older one, refuse a newer or foreign one."""
    layout = Layout(SCHEMA_VERSION, APPLICATION_ID, _create_statements(), _MIGRATIONS,
                    "SELECT 1 FROM sqlite_master WHERE name = 'requests'")

    def refuse(why: Refusal, version: int) -> LedgerSchemaError:
        if why == "foreign_application":
            return LedgerSchemaError(f"{path} is an SQLite file of another application, not a tierwise ledger")
        if why == "newer_version":
            return LedgerSchemaError(
                f"ledger {path} has schema version {version}, but this tierwise only knows up to version "
                f"{SCHEMA_VERSION}: upgrade tierwise, or point ledger.path at a new file")
        return LedgerSchemaError(f"{path} has a 'requests' table that tierwise did not create")

    ensure_layout(conn, layout, refuse)
