"""Gets ledger records from the request path to the store without the request path ever waiting for storage.

``submit()`` turns the record into a row, appends it to the crash journal when there is one (one ``write()``,
a few microseconds: see :mod:`tierwise.ledger.journal`) and to a deque, and returns; one daemon thread writes
the rows in batches. That thread is the only place store I/O happens, so a slow disk or a locked SQLite file costs
ledger latency, never request latency.

Nothing is dropped quietly. A failing batch is retried with backoff and stays at the head of the queue while the
store is down; a batch the store refuses while it is up is bisected to the one row at fault, which is stored
cleaned or quarantined (:mod:`tierwise.ledger.isolate`), so one bad row can never hold up the rows behind it.
``close()`` writes whatever the store still refuses to a JSON Lines fallback file (next to the database unless
configured elsewhere; ``tierwise.ledger.recover.import_unwritten`` loads it back), and with a journal, every row
that reached neither stays in the journal for the next start to replay. Records submitted after ``close()`` go
straight to the fallback file.
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from tierwise.ledger.isolate import append_quarantine, isolate
from tierwise.ledger.journal import IN_FLIGHT, Journal, JournalError, encode_row
from tierwise.ledger.recover import fallback_path_for, quarantine_path_for
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
    dropped: int  # records lost: not a row (a bug), or neither store nor fallback file nor journal took them
    queue_depth: int  # submitted, not yet written, spilled, quarantined or dropped
    healthy: bool  # False while the last store write failed or the journal cannot be written
    quarantined: int = 0  # rows the store refused even cleaned, saved with its error to the quarantine file
    journal_failures: int = 0  # records the crash journal could not take (disk full, read-only)
    journal_healthy: bool = True  # False while journal writes fail
    deferred_to_journal: int = 0  # rows neither store nor fallback file took, safe in the journal for next start


# A queued row with its journal sequence number (0: not journaled).
_Entry = tuple[Row, int]


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
        journal: Journal | None = None,
    ) -> None:
        if batch_size < 1 or flush_interval_ms <= 0:
            raise ValueError("batch_size must be >= 1 and flush_interval_ms > 0")
        self.store = store
        self.batch_size = batch_size
        self._interval_s = flush_interval_ms / 1000.0
        self.fallback_path = Path(fallback_path) if fallback_path is not None else fallback_path_for(store)
        self.quarantine_path = quarantine_path_for(self.fallback_path)
        self.journal = journal
        # rows the start-up replay took from the journals of stopped processes (open_ledger sets it): the service
        # charges them to the budgets, whose settlements died with those processes
        self.recovered: tuple[Row, ...] = ()
        self._retries = max(1, retries)
        self._retry_delay_s = retry_delay_s
        self._max_pending = max(batch_size, max_pending)

        self._queue: deque[_Entry | _Marker] = deque()
        self._held: list[_Entry | _Marker] = []  # taken off the queue, not yet stored: the head of the line
        self._submit_lock = threading.Lock()  # journal order == queue order, which the watermark relies on
        self._durable_seq = 0  # every journaled row up to here is in the store or the fallback file
        self._resolved: list[int] = []  # heap of sequence numbers durable beyond the watermark
        self._watermark_frozen = False  # a journaled row was lost from memory: keep its segments for replay
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
        self._quarantined = 0
        self._deferred = 0  # rows neither stored nor spilled that only the journal holds (replayed at next start)
        self._markers = 0  # flush markers queued and not yet taken by the thread
        self._lost_reported = 0  # rows spilled/dropped that some flush() has already raised about
        self._failing = False
        self._consecutive_failures = 0
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._run, name="tierwise-ledger-writer", daemon=True)
        self._thread.start()

    # -- producer side (any thread, event loop included) --------------------------------------------------

    def submit(self, record: LedgerRecord) -> None:
        """Queue one finished record; with a journal, it is crash-safe when this returns. Never blocks on the store.

        The record must not be mutated afterwards. A journal write that fails is logged and counted (the record is
        still queued); :meth:`begin` is where the request path learns that the journal is down.
        """
        try:
            row = record.as_row()
        except Exception as exc:  # a malformed record must not break the request path or the queue
            with self._count_lock:
                self._submitted += 1
                self._dropped += 1
            log.error("ledger record %r dropped: as_row() failed: %s", getattr(record, "id", "?"), type(exc).__name__)
            return
        seq = 0
        with self._submit_lock:
            with self._count_lock:
                self._submitted += 1
            if self.journal is not None and not self._closed:
                row, data = encode_row(row)
                try:
                    seq = self.journal.final(row["id"], data)
                except JournalError as exc:
                    log.critical("ledger record %s is not crash-safe: %s", row["id"], exc)
            self._queue.append((row, seq))
        if self._closed:
            # close() may already have drained the queue: rescue whatever it could not see.
            self._rescue_after_close()
        elif len(self._queue) >= self.batch_size and not self._failing and not self._wake.is_set():
            # (while the store fails the thread retries on its own schedule; waking it per submit would spin)
            self._wake.set()

    def begin(self, record: LedgerRecord, model: str | None = None) -> None:
        """Journal a request before its first upstream call, so a crash mid-request still leaves a row (booked as
        ``interrupted`` at its estimate on replay, naming ``model``, the model it was planned to go to first, whose
        budget the replay charges). Raises :class:`JournalError` when the journal cannot be written; a no-op
        without a journal."""
        if self.journal is None or self._closed:
            return
        row = {  # what an interrupted row needs; replay fills in the rest (a full as_row() here cost ~3x more)
            "id": record.id, "ts": record.ts, "status": IN_FLIGHT, "principal": record.principal,
            "tier": record.tier, "tier_source": record.tier_source, "requested_model": record.requested_model,
            "session_id": record.session_id, "stream": record.stream,
            "estimated_cost_usd": record.estimated_cost_usd, "notes": record.notes,
            # attribution, so that an interrupted request is billed to whom it belongs
            "key_id": record.key_id, "customer": record.customer, "department": record.department,
            "project": record.project, "tags": record.tags,
            "arm": record.arm,  # an interrupted canary request still counts against its arm
            "model": model or record.model,
        }
        row, data = encode_row(row)
        self.journal.begin(record.id, data)

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
            if self.journal is not None:
                with self._submit_lock:  # no submit may journal into a closing journal
                    self.journal.close(None if self._watermark_frozen else self._durable_seq)

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- introspection ------------------------------------------------------------------------------------

    def stats(self) -> WriterStats:
        with self._count_lock:
            submitted = self._submitted
            written, spilled, dropped = self._written, self._spilled, self._dropped
            quarantined, deferred = self._quarantined, self._deferred
        journal_ok = self.journal is None or self.journal.healthy
        return WriterStats(
            submitted=submitted,
            written=written,
            failed_batches=self._failed_batches,
            spilled=spilled,
            dropped=dropped,
            queue_depth=max(0, submitted - written - spilled - dropped - quarantined - deferred),
            healthy=not self._failing and journal_ok,
            quarantined=quarantined,
            journal_failures=self.journal.failures if self.journal is not None else 0,
            journal_healthy=journal_ok,
            deferred_to_journal=deferred,
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
        if self.journal is not None:
            self.journal.sync()
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
            entries = [item for item in self._held if not isinstance(item, _Marker)]
            if entries and not self._write(entries):
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
            return self._spilled + self._dropped + self._quarantined + self._deferred

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
        held: list[_Entry | _Marker] = []
        n_rows = 0
        queue = self._queue
        while n_rows < self.batch_size:
            try:
                item = queue.popleft()
            except IndexError:
                break
            held.append(item)
            if isinstance(item, _Marker):
                self._took_marker()
                break
            n_rows += 1
        self._held = held

    def _try_write(self, rows: list[Row]) -> str | None:
        """One store write; None on success, else the error (type and message only: a store error can quote a
        row, and rows may carry user text in notes)."""
        try:
            self.store.write_batch(rows)
        except Exception as exc:
            return f"{type(exc).__name__}: {str(exc)[:200]}"
        return None

    def _try_keep(self, rows: list[Row]) -> str | None:
        """A write that keeps rows already stored: a no-op on the data that still needs the store to answer (the
        bisection's proof that the store is still up before it quarantines a row)."""
        try:
            self.store.write_batch(rows, replace=False)
        except Exception as exc:
            return f"{type(exc).__name__}: {str(exc)[:200]}"
        return None

    def _write(self, entries: list[_Entry]) -> bool:
        """Store one held batch: retried with backoff, then bisected if the store stays up but refuses it."""
        rows = [row for row, _ in entries]
        delay = self._retry_delay_s
        for attempt in range(1, self._retries + 1):
            error = self._try_write(rows)
            if error is None:
                self._stored(entries, len(entries))
                return True
            log.warning("ledger write of %d rows failed (attempt %d/%d): %s", len(rows), attempt, self._retries, error)
            if attempt < self._retries:
                time.sleep(delay)
                delay *= 2
        with self._count_lock:
            quarantined_before = self._quarantined
        left = isolate(entries, lambda e: e[0], self._try_write, self._quarantine, self._try_keep)
        with self._count_lock:
            quarantined = self._quarantined - quarantined_before
        if not left:  # every row stored, cleaned or quarantined: the batch is done
            self._stored(entries, len(entries) - quarantined)
            return True
        # The store went down half-way through the bisection: what did go in (or was quarantined) is done — count
        # it and let the journal free it — and only the rest stays held (a retry would be idempotent anyway).
        still = {id(e) for e in left}
        done = [e for e in entries if id(e) not in still]
        with self._count_lock:
            self._written += len(done) - quarantined
        self._resolve(done)
        markers = [m for m in self._held if isinstance(m, _Marker)]
        self._held = [*left, *markers]
        self._failed_batches += 1
        self._failing = True
        log.error("ledger store failing: %d rows kept queued (%d in total)", len(left), self.queue_depth)
        return False

    def _quarantine(self, row: Row, error: str) -> bool:
        if not append_quarantine(self.quarantine_path, row, error):
            return False
        with self._count_lock:
            self._quarantined += 1
        return True

    def _stored(self, entries: list[_Entry], written: int) -> None:
        with self._count_lock:
            self._written += written
        if self._failing:
            log.warning("ledger store recovered; %d rows still queued", self.queue_depth)
        self._failing = False
        self._resolve(entries)

    def _resolve(self, entries: list[_Entry]) -> None:
        """These journaled rows are durable (store or fallback file): advance the watermark, free segments."""
        if self.journal is None or self._watermark_frozen:
            return
        heap = self._resolved
        for _, seq in entries:
            if seq:
                heapq.heappush(heap, seq)
        start = self._durable_seq
        while heap and heap[0] == self._durable_seq + 1:
            heapq.heappop(heap)
            self._durable_seq += 1
        if self._durable_seq != start:
            self.journal.release(self._durable_seq)

    def _bound_memory(self) -> None:
        """During an outage, keep at most ``max_pending`` records in memory; older ones go to the fallback file."""
        excess = len(self._queue) - self._max_pending
        if excess > 0:
            self._spill(self._pop(excess), reason=f"store down and more than {self._max_pending} records queued")

    def _take_all(self) -> list[_Entry | _Marker]:
        items, self._held = self._held, []
        return items + self._pop(None)

    def _pop(self, limit: int | None) -> list[_Entry | _Marker]:
        """Pop up to ``limit`` queued items (all if None), order kept."""
        items: list[_Entry | _Marker] = []
        while limit is None or len(items) < limit:
            try:
                item = self._queue.popleft()
            except IndexError:
                break
            if isinstance(item, _Marker):
                self._took_marker()
            items.append(item)
        return items

    def _rescue_after_close(self) -> None:
        """After close: whatever is still queued (late submits, a stuck thread) goes to the fallback file."""
        if self._queue:
            items = self._pop(None)
            if any(not isinstance(i, _Marker) for i in items):
                log.warning("ledger: records still queued after close; writing them to the fallback file")
            self._spill(items, reason="queued after close")

    def _spill(self, items: list[_Entry | _Marker], *, reason: str) -> None:
        lost_before = self._lost()
        entries = [i for i in items if not isinstance(i, _Marker)]
        if entries:
            try:
                with self._fallback_lock, open(self.fallback_path, "ab") as f:
                    f.write(b"".join(encode_row(row)[1] for row, _ in entries))
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                journaled = sum(1 for _, seq in entries if seq)
                if journaled:  # still on disk in the journal: the next start replays them
                    self._watermark_frozen = True
                    log.critical(
                        "ledger: could not write fallback file %s (%s): %d of %d unwritten rows remain in the "
                        "journal %s and will be stored at the next start; %d rows LOST",
                        self.fallback_path, exc, journaled, len(entries),
                        self.journal.directory if self.journal else "?", len(entries) - journaled,
                    )
                else:
                    log.critical("ledger: %d rows LOST: could not write fallback file %s: %s",
                                 len(entries), self.fallback_path, exc)
                with self._count_lock:
                    self._dropped += len(entries) - journaled
                    self._deferred += journaled
            else:
                with self._count_lock:
                    self._spilled += len(entries)
                log.error("ledger: %d unwritten rows saved to %s (%s)", len(entries), self.fallback_path, reason)
                self._resolve(entries)
        ahead = 0  # rows of this spill queued before the marker at hand: only those count against its flush
        for item in items:
            if isinstance(item, _Marker):
                self._complete(item, lost_now=lost_before + ahead)
            else:
                ahead += 1
