"""Gets ledger records from the request path to the store without the request path ever waiting for storage.

``submit()`` appends to a deque and returns (a few hundred ns, no I/O, safe from the event loop and from any
thread); one daemon thread turns records into rows and writes them in batches. That thread is the only place
storage I/O happens, so a slow disk or a locked SQLite file costs ledger latency, never request latency.

Nothing is dropped quietly. A failing batch is retried with backoff and stays at the head of the queue while the
store is down; ``close()`` writes whatever the store still refuses to a JSON Lines fallback file next to the
database (``tierwise.ledger.recover.import_unwritten`` loads it back). Records submitted after ``close()`` go
straight to that file.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tierwise.ledger.recover import fallback_path_for
from tierwise.ledger.store import LedgerStore, Row
from tierwise.types import LedgerRecord

log = logging.getLogger("tierwise.ledger")

_MAX_BACKOFF_S = 5.0


class LedgerWriteError(RuntimeError):
    """Records a ``flush()`` waited for went to the fallback file instead of the store."""


class _Marker:
    """Placed in the queue by ``flush()``: reached once everything queued before it is written (or given up)."""

    __slots__ = ("done", "error", "lost_at", "lost")

    def __init__(self, lost_at: int) -> None:
        self.done = threading.Event()
        self.error: str | None = None
        self.lost_at = lost_at  # rows spilled or dropped that an earlier flush already reported
        self.lost = 0


@dataclass(frozen=True, slots=True)
class WriterStats:
    """A consistent-enough snapshot for /readyz and metrics (counters are monotonic)."""

    submitted: int
    written: int
    failed_batches: int
    spilled: int  # rows written to the fallback file instead of the store
    dropped: int  # records that could not even be turned into a row (a bug; each one is logged)
    queue_depth: int  # submitted, not yet written, spilled or dropped
    healthy: bool  # False while the last write attempt failed


class LedgerWriter:
    """Batches ledger records onto a :class:`LedgerStore` from a dedicated thread.

    A batch is written when ``batch_size`` records are waiting or ``flush_interval_ms`` has passed, whichever comes
    first. While the store fails, records stay queued up to ``max_pending``; beyond that the oldest are moved to the
    fallback file so memory stays bounded during a long outage.
    """

    def __init__(
        self,
        store: LedgerStore,
        batch_size: int = 256,
        flush_interval_ms: float = 200.0,
        *,
        fallback_path: str | Path | None = None,
        retries: int = 3,
        retry_delay_s: float = 0.05,
        max_pending: int = 100_000,
    ) -> None:
        if batch_size < 1 or flush_interval_ms <= 0:
            raise ValueError("batch_size must be >= 1 and flush_interval_ms > 0")
        self.store = store
        self.batch_size = batch_size
        self._interval_s = flush_interval_ms / 1000.0
        self.fallback_path = Path(fallback_path) if fallback_path is not None else fallback_path_for(store)
        self._retries = max(1, retries)
        self._retry_delay_s = retry_delay_s
        self._max_pending = max(batch_size, max_pending)

        self._queue: deque[LedgerRecord | _Marker] = deque()
        self._held: list[Row | _Marker] = []  # taken off the queue, not yet stored: the head of the line
        self._wake = threading.Event()
        self._count_lock = threading.Lock()
        self._fallback_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._closed = False
        self._stopping = False
        self._submitted = 0
        self._written = 0
        self._failed_batches = 0
        self._spilled = 0
        self._dropped = 0
        self._markers = 0  # flush markers queued and not yet taken by the thread
        self._lost_reported = 0  # rows spilled/dropped that some flush() has already raised about
        self._failing = False
        self._consecutive_failures = 0
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._run, name="tierwise-ledger-writer", daemon=True)
        self._thread.start()

    # -- producer side (any thread, event loop included) --------------------------------------------------

    def submit(self, record: LedgerRecord) -> None:
        """Queue one record. O(1), never blocks on I/O. The record must not be mutated afterwards."""
        with self._count_lock:
            self._submitted += 1
        self._queue.append(record)
        if self._closed:
            # close() may already have drained the queue: rescue whatever it could not see.
            self._rescue_after_close()
        elif len(self._queue) >= self.batch_size and not self._failing and not self._wake.is_set():
            # (while the store fails the thread retries on its own schedule; waking it per submit would spin)
            self._wake.set()

    def flush(self, timeout_s: float = 5.0) -> None:
        """Block until every record submitted before this call is in the store.

        Raises ``TimeoutError`` if that does not happen within ``timeout_s`` (e.g. the store is down), and
        :class:`LedgerWriteError` if those records had to go to the fallback file instead.
        """
        if self._closed:
            return  # close() already wrote or saved everything (and logged where)
        marker = _Marker(self._lost_reported)
        self._queue.append(marker)
        with self._count_lock:
            self._markers += 1  # after the append: a writer that sees the count will find the marker
        self._wake.set()
        if not marker.done.wait(timeout_s):
            raise TimeoutError(f"ledger flush did not complete within {timeout_s}s ({self.stats()})")
        self._lost_reported = max(self._lost_reported, marker.lost_at + marker.lost)
        if marker.error:
            raise LedgerWriteError(marker.error)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write everything queued, stop the thread. Idempotent; what the store refuses goes to the fallback file.

        The gateway calls this on SIGTERM/SIGINT after in-flight requests have finished. It does not close the
        store: whoever opened the store closes it.
        """
        with self._close_lock:
            if self._closed:
                return
            self._stopping = True
            self._wake.set()
            self._thread.join(timeout_s)
            self._closed = True
            if self._thread.is_alive():
                # Stuck inside the store (e.g. a lock held elsewhere). Save what it has not taken; the batch it is
                # holding may land twice (store later, file now), which import_unwritten tolerates by id.
                log.error("ledger writer did not stop within %.1fs; saving the queue to the fallback file", timeout_s)
            if self._held:  # the thread is stuck or died on an unexpected error: its batch is not stored
                self._spill(list(self._held), reason="writer thread did not finish")
                self._held = []
            self._rescue_after_close()

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- introspection ------------------------------------------------------------------------------------

    def stats(self) -> WriterStats:
        with self._count_lock:
            submitted = self._submitted
            written, spilled, dropped = self._written, self._spilled, self._dropped
        return WriterStats(
            submitted=submitted,
            written=written,
            failed_batches=self._failed_batches,
            spilled=spilled,
            dropped=dropped,
            queue_depth=max(0, submitted - written - spilled - dropped),
            healthy=not self._failing,
        )

    @property
    def submitted(self) -> int:
        return self.stats().submitted

    @property
    def written(self) -> int:
        return self.stats().written

    @property
    def failed_batches(self) -> int:
        return self._failed_batches

    @property
    def queue_depth(self) -> int:
        return self.stats().queue_depth

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the writer thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                if self._step():
                    return
            except Exception:  # a bug here must not silently stop the ledger: log, back off, carry on
                log.exception("ledger writer error; records stay queued")
                self._failing = True
                if self._stopping:
                    return  # close() saves what is left
                time.sleep(self._interval_s)

    def _step(self) -> bool:
        """One wake-up of the writer thread. True when it should exit."""
        stopping = self._stopping
        by_size = False
        if not stopping:
            by_size = self._wake.wait(self._interval_s)  # False: the flush interval passed
            self._wake.clear()
            stopping = self._stopping
        if self._failing and time.monotonic() < self._retry_at and not stopping:
            self._bound_memory()
            return False
        ok = self._drain(full_only=by_size and not stopping)
        if ok:
            self._consecutive_failures = 0
        else:
            self._consecutive_failures += 1
            backoff = min(_MAX_BACKOFF_S, self._interval_s * 2**self._consecutive_failures)
            self._retry_at = time.monotonic() + backoff
            self._bound_memory()
        if stopping and not ok:
            self._spill(self._take_all(), reason="store still failing at shutdown")
        return stopping

    def _drain(self, *, full_only: bool) -> bool:
        """Write batches until the queue is empty. False if the store failed (the failed batch stays held).

        Woken because a batch filled up (``full_only``), it writes only full batches, up to a flush marker: the
        remainder joins the next batch instead of going out as a small one.
        """
        while True:
            if not self._held:
                if full_only and len(self._queue) < self.batch_size and not self._markers:
                    return True
                self._fill_held()
                if not self._held:
                    return True
            rows = [item for item in self._held if not isinstance(item, _Marker)]
            if rows and not self._write(rows):
                return False
            for item in self._held:
                if isinstance(item, _Marker):
                    self._complete(item)
            self._held = []

    def _took_marker(self) -> None:
        with self._count_lock:
            self._markers -= 1

    def _lost(self) -> int:
        with self._count_lock:
            return self._spilled + self._dropped

    def _complete(self, marker: _Marker, lost_now: int | None = None) -> None:
        """Answer a flush. Rows are spilled or dropped strictly in queue order, so every loss counted when the
        marker is reached happened to a row submitted before the flush; each loss is reported by one flush."""
        lost = (self._lost() if lost_now is None else lost_now) - marker.lost_at
        marker.lost = max(0, lost)
        if lost > 0:
            marker.error = (
                f"{lost} ledger rows submitted before this flush did not reach the store "
                f"(saved to {self.fallback_path} unless the log says otherwise)"
            )
        marker.done.set()

    def _fill_held(self) -> None:
        """Take up to one batch off the queue; stop after a flush marker so it is answered promptly."""
        held: list[Row | _Marker] = []
        n_rows = 0
        queue = self._queue
        while n_rows < self.batch_size:
            try:
                item = queue.popleft()
            except IndexError:
                break
            if isinstance(item, _Marker):
                self._took_marker()
                held.append(item)
                break
            row = self._to_row(item)
            if row is not None:
                held.append(row)
                n_rows += 1
        self._held = held

    def _to_row(self, record: Any) -> Row | None:
        try:
            return record.as_row()  # type: ignore[no-any-return]
        except Exception as exc:  # a malformed record must not wedge the queue behind it
            with self._count_lock:
                self._dropped += 1
            log.error("ledger record %r dropped: as_row() failed: %s", getattr(record, "id", "?"), type(exc).__name__)
            return None

    def _write(self, rows: list[Row]) -> bool:
        delay = self._retry_delay_s
        for attempt in range(1, self._retries + 1):
            try:
                self.store.write_batch(rows)
            except Exception as exc:
                # Type and message only: a store error can quote a row, and rows may carry user text in notes.
                log.warning(
                    "ledger write of %d rows failed (attempt %d/%d): %s: %s",
                    len(rows), attempt, self._retries, type(exc).__name__, str(exc)[:200],
                )
                if attempt < self._retries:
                    time.sleep(delay)
                    delay *= 2
                continue
            with self._count_lock:
                self._written += len(rows)
            if self._failing:
                log.warning("ledger store recovered; %d rows still queued", self.queue_depth)
            self._failing = False
            return True
        self._failed_batches += 1
        self._failing = True
        log.error("ledger store failing: %d rows kept queued (%d in total)", len(rows), self.queue_depth)
        return False

    def _bound_memory(self) -> None:
        """During an outage, keep at most ``max_pending`` records in memory; older ones go to the fallback file."""
        excess = len(self._queue) - self._max_pending
        if excess > 0:
            self._spill(self._pop(excess), reason=f"store down and more than {self._max_pending} records queued")

    def _take_all(self) -> list[Row | _Marker]:
        items, self._held = self._held, []
        return items + self._pop(None)

    def _pop(self, limit: int | None) -> list[Row | _Marker]:
        """Pop up to ``limit`` queued items (all if None), records turned into rows, order kept."""
        items: list[Row | _Marker] = []
        while limit is None or len(items) < limit:
            try:
                item = self._queue.popleft()
            except IndexError:
                break
            if isinstance(item, _Marker):
                self._took_marker()
                items.append(item)
            elif (row := self._to_row(item)) is not None:
                items.append(row)
        return items

    def _rescue_after_close(self) -> None:
        """After close: whatever is still queued (late submits, a stuck thread) goes to the fallback file."""
        if self._queue:
            items = self._pop(None)
            if any(not isinstance(i, _Marker) for i in items):
                log.warning("ledger: records still queued after close; writing them to the fallback file")
            self._spill(items, reason="queued after close")

    def _spill(self, items: list[Row | _Marker], *, reason: str) -> None:
        lost_before = self._lost()
        rows = [i for i in items if not isinstance(i, _Marker)]
        if rows:
            try:
                with self._fallback_lock, open(self.fallback_path, "ab") as f:
                    f.write(b"".join(orjson.dumps(r, default=str) + b"\n" for r in rows))
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                log.critical(
                    "ledger: %d rows LOST: could not write fallback file %s: %s", len(rows), self.fallback_path, exc
                )
                with self._count_lock:
                    self._dropped += len(rows)
            else:
                with self._count_lock:
                    self._spilled += len(rows)
                log.error("ledger: %d unwritten rows saved to %s (%s)", len(rows), self.fallback_path, reason)
        ahead = 0  # rows of this spill queued before the marker at hand: only those count against its flush
        for item in items:
            if isinstance(item, _Marker):
                self._complete(item, lost_now=lost_before + ahead)
            else:
                ahead += 1
