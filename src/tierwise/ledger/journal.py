"""The crash journal: every ledger record on disk with one ``write()`` before the client gets its answer.

The writer batches records into the store every ``flush_interval_ms``; a process killed in between (SIGKILL, OOM,
a segfault in a native extension) would lose up to a batch of records the upstream already billed. The journal
closes that gap at a few microseconds per request:

- Each process appends to its own segment files in ``<ledger>.journal/`` (``O_APPEND``, one ``os.write`` per
  line). A ``write()`` that returned is in the kernel's page cache and survives the death of the process; only a
  power loss or kernel crash can lose it, which ``fsync`` (``always`` per record, ``interval`` once per writer
  wake-up) covers at a price the operator chooses.
- Two lines per request: a *begin* line (status ``in_flight``, the pre-call cost estimate) before any upstream
  call, and the *final* record when the request ends. A request whose process died between the two still gets
  a row on replay — status ``interrupted``, cost booked at the estimate — because the upstream may have billed it.
- The writer reports how far the store has durably taken the final records (a watermark over their sequence
  numbers); a rotated segment whose records are all stored and whose begun requests have all ended is deleted.
- At start, segments no live process holds (an exclusive ``flock`` on each file marks its owner alive, so
  ``--workers`` processes never replay each other's) are replayed into the store, idempotently by request id,
  then deleted.

If a journal write fails (disk full, read-only file system), the caller learns it at once: the service then
refuses new requests (``ledger.on_unwritable: refuse``, the default) rather than serve traffic it cannot book.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson

from tierwise.ledger.store import LedgerStore, Row, complete_row
from tierwise.sanitize import clean_json
from tierwise.types import LedgerRecord

log = logging.getLogger("tierwise.ledger")

FsyncPolicy = Literal["never", "interval", "always"]

IN_FLIGHT = "in_flight"
INTERRUPTED = "interrupted"
_SUFFIX = ".jsonl"


class JournalError(OSError):
    """A journal write failed: the record is not crash-safe (the message says why, e.g. the disk is full)."""


def encode_row(row: Row) -> tuple[Row, bytes]:
    """The row as one journal/fallback line. A value orjson refuses (a lone surrogate that slipped past ingress,
    an odd object in notes) is cleaned instead of failing, and the cleaned row is returned for the store too: no
    record may be impossible to write."""
    try:
        return row, orjson.dumps(row, default=str) + b"\n"
    except (TypeError, ValueError):
        row = clean_json(row)
        return row, orjson.dumps(row) + b"\n"


@dataclass(slots=True)
class _Segment:
    path: Path
    fd: int
    size: int = 0
    open_begins: int = 0  # requests begun in this segment that have not ended yet
    last_seq: int = 0  # sequence number of the last final record appended here (0: none)


class Journal:
    """Per-process append-only journal of ledger records; see the module docstring.

    Thread-safe: ``begin``/``final`` run on the event loop (or any thread), ``release``/``sync`` on the writer's.
    """

    def __init__(self, directory: str | Path, *, fsync: FsyncPolicy = "never",
                 segment_bytes: int = 8 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.fsync = fsync
        self.segment_bytes = max(4096, segment_bytes)
        self._lock = threading.Lock()
        self._segments: deque[_Segment] = deque()
        self._by_id: dict[str, _Segment] = {}
        self._seq = 0
        self._n = itertools.count()
        self._prefix = f"seg-{os.getpid()}-{time.time_ns()}"
        self._dirty = False
        self.failures = 0  # appends that failed (each one logged)
        self.last_error: str | None = None
        self._closed = False
        self.directory.mkdir(parents=True, exist_ok=True)
        self._segments.append(self._new_segment())

    # -- appends (request path) -----------------------------------------------------------------------------------

    def begin(self, request_id: str, data: bytes) -> None:
        """Journal a request about to call upstream (``data``: its line, from :func:`encode_row`). Raises
        :class:`JournalError` if it cannot be written."""
        with self._lock:
            seg = self._append(data)
            seg.open_begins += 1
            self._by_id[request_id] = seg

    def final(self, request_id: str, data: bytes) -> int:
        """Journal a finished request's record; returns its sequence number for :meth:`release`.

        Raises :class:`JournalError` if it cannot be written (the record then lives only in memory until the store
        has it). The request's begin line is closed either way, so its segment can still be reclaimed.
        """
        with self._lock:
            begun = self._by_id.pop(request_id, None)
            if begun is not None:
                begun.open_begins -= 1
            seg = self._append(data)
            self._seq += 1
            seg.last_seq = self._seq
            return self._seq

    def _append(self, data: bytes) -> _Segment:
        if self._closed:
            raise JournalError(errno.EBADF, "journal is closed")
        seg = self._segments[-1]
        if seg.size >= self.segment_bytes:
            seg = self._rotate()
        try:
            written = os.write(seg.fd, data)
            if written != len(data):  # a short write (the disk filled mid-line): undo it, report it
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
            if self.fsync == "always":
                os.fdatasync(seg.fd)
        except OSError as exc:
            self._undo(seg)
            self.failures += 1
            self.last_error = f"{exc.strerror or exc} ({seg.path})"
            raise JournalError(exc.errno or errno.EIO, f"ledger journal write failed: {self.last_error}") from None
        seg.size += len(data)
        self._dirty = True
        if self.last_error is not None:
            log.warning("ledger journal writable again (%s)", seg.path)
            self.last_error = None
        return seg

    def _undo(self, seg: _Segment) -> None:
        """Cut a partly written line off, so the next line does not glue onto it."""
        with contextlib.suppress(OSError):  # replay skips a torn line anyway
            os.ftruncate(seg.fd, seg.size)

    @property
    def healthy(self) -> bool:
        return self.last_error is None

    # -- the writer's side ---------------------------------------------------------------------------------------

    def sync(self) -> None:
        """fsync the active segment if anything was written since the last call (``fsync: interval``)."""
        if self.fsync != "interval" or not self._dirty:
            return
        with self._lock:
            self._dirty = False
            fd = self._segments[-1].fd
            try:
                os.fdatasync(fd)
            except OSError as exc:
                log.error("ledger journal fsync failed: %s", exc)

    def release(self, durable_seq: int) -> int:
        """The store durably holds every final record up to ``durable_seq``: delete the segments that only held
        those (oldest first, never the active one, never one with a request still in flight). Returns how many."""
        removed = 0
        with self._lock:
            while len(self._segments) > 1:
                seg = self._segments[0]
                if seg.open_begins > 0 or seg.last_seq > durable_seq:
                    break
                self._segments.popleft()
                self._drop(seg)
                removed += 1
        return removed

    def close(self, durable_seq: int | None) -> None:
        """Close the files; delete them when everything is stored (``durable_seq`` covers the last final and no
        request is in flight), else keep them for the next start to replay."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            complete = durable_seq is not None and durable_seq >= self._seq and not self._by_id
            kept = []
            for seg in self._segments:
                if complete:
                    self._drop(seg)
                else:
                    kept.append(seg.path.name)
                    os.close(seg.fd)
            self._segments.clear()
        if kept:
            log.error("ledger: journal segments kept for replay at the next start: %s in %s",
                      ", ".join(kept), self.directory)

    def _new_segment(self) -> _Segment:
        path = self.directory / f"{self._prefix}-{next(self._n):06d}{_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # marks the segment's owner alive (see replay_orphans)
        return _Segment(path, fd)

    def _rotate(self) -> _Segment:
        try:
            seg = self._new_segment()
        except OSError as exc:  # cannot even create a file: keep appending to the current one
            log.error("ledger journal rotation failed: %s", exc)
            return self._segments[-1]
        old = self._segments[-1]
        if self.fsync != "never":
            try:
                os.fdatasync(old.fd)
            except OSError as exc:
                log.error("ledger journal fsync failed: %s", exc)
        self._segments.append(seg)
        return seg

    def _drop(self, seg: _Segment) -> None:
        try:
            seg.path.unlink()
        except FileNotFoundError:
            pass
        finally:
            os.close(seg.fd)

    def segment_paths(self) -> list[Path]:
        with self._lock:
            return [s.path for s in self._segments]


# -- replay at start ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ReplayReport:
    segments: int
    records: int  # final records written (already stored ones are rewritten, idempotently)
    interrupted: int  # requests begun but never ended: booked as ``interrupted`` at their estimate
    torn_lines: int
    # every row written (finals, then interrupted): their cost may never have reached the budgets, whose
    # settlements died with the process (see tierwise.governance.recovery)
    rows: tuple[Row, ...] = ()


def replay_orphans(directory: str | Path, store: LedgerStore, *, batch_size: int = 1000) -> ReplayReport:
    """Write every record in segments no live process owns into ``store``, then delete those segments.

    Final records replace rows with the same id (idempotent: a record both stored and journaled is written twice
    to the same row). A request with only a begin line becomes an ``interrupted`` row, inserted only when the
    store has no row of that id, so it can never overwrite a real record.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return ReplayReport(0, 0, 0, 0)
    locked: list[tuple[Path, int]] = []
    try:
        for path in sorted(directory.glob(f"seg-*{_SUFFIX}")):
            fd = _lock_orphan(path)
            if fd is not None:
                locked.append((path, fd))
        if not locked:
            return ReplayReport(0, 0, 0, 0)
        finals: dict[str, Row] = {}
        begins: dict[str, Row] = {}
        torn = 0
        for path, _ in locked:
            for row in _read_lines(path):
                if row is None:
                    torn += 1
                elif row.get("status") == IN_FLIGHT:
                    begins.setdefault(row["id"], row)
                else:
                    finals[row["id"]] = complete_row(row)  # a segment an older tierwise wrote lacks newer columns
        interrupted = [_interrupted(row) for rid, row in begins.items() if rid not in finals]
        for batch in _batches(list(finals.values()), batch_size):
            store.write_batch(batch)
        for batch in _batches(interrupted, batch_size):
            store.write_batch(batch, replace=False)
        n_segments = len(locked)
        for path, fd in locked:
            path.unlink(missing_ok=True)
            os.close(fd)
        locked = []
    finally:
        for _, fd in locked:  # a store failure: keep the files for the next start, let others try
            os.close(fd)
    if torn:
        log.warning("ledger journal: %d torn line(s) skipped (a write cut short by a crash)", torn)
    return ReplayReport(n_segments, len(finals), len(interrupted), torn, (*finals.values(), *interrupted))


def _lock_orphan(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # its process is alive (or another process is replaying it)
        os.close(fd)
        return None
    if not path.exists():  # replayed and deleted between our glob and our lock
        os.close(fd)
        return None
    return fd


def _read_lines(path: Path) -> Iterator[Row | None]:
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                yield None
                continue
            yield row if isinstance(row, dict) and isinstance(row.get("id"), str) else None


def _interrupted(begin: Row) -> Row:
    """The row of a request whose process died between its begin line and its final record."""
    out = LedgerRecord(id=begin["id"], ts=float(begin.get("ts") or 0.0)).as_row()
    out.update((k, v) for k, v in begin.items() if k in out)
    estimate = float(out.get("estimated_cost_usd") or 0.0)
    out["status"] = INTERRUPTED
    out["http_status"] = None
    out["error"] = "tierwise stopped before the request ended (crash or kill)"
    out["cost_usd"] = estimate
    out["cost_breakdown"] = {**(out.get("cost_breakdown") or {}), "estimated": estimate}
    out["notes"] = [*(out.get("notes") or []),
                    "cost booked at tierwise's pre-call estimate: the upstream may have billed this request"]
    return out


def _batches(rows: list[Row], n: int) -> Iterator[list[Row]]:
    for i in range(0, len(rows), n):
        yield rows[i:i + n]
