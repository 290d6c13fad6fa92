"""Prompt/answer capture: which requests are kept, how they are redacted, and the thread that writes them.

The gateway calls :meth:`Capturer.offer` once per finished request (from the event loop). ``offer`` does only the
sampling decision and a queue put — O(1), no I/O, no regex — so serving never waits for capture; redaction, JSON
encoding and the database write happen in batches on the capturer's own thread. A full queue drops the capture
(and counts it): captures are samples, never records, and the ledger row of the request is written regardless.

Public interface (also used by ``tierwise sample`` / ``trial`` / ``calibrate --from-ledger``):

- :func:`open_rollout_store` (cfg) -> :class:`~tierwise.rollout.records.RolloutStore`: SQLite beside the ledger, or
  PostgreSQL in the ledger's database and schema when the ledger is there.
- :func:`iter_captured` (cfg, since, until, tiers) -> captured rows, streamed, oldest first.
"""

from __future__ import annotations

import logging
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierwise.rollout.config import CaptureConfig
from tierwise.rollout.records import Captured, RolloutStore
from tierwise.sanitize import clean_text

if TYPE_CHECKING:
    from tierwise.config.schema import TierwiseConfig
    from tierwise.types import LedgerRecord

log = logging.getLogger("tierwise.capture")

REDACTED = "[REDACTED]"
PURGE_EVERY_S = 3600.0


def store_path(cfg: TierwiseConfig) -> Path:
    """Where the SQLite rollout store is: ``rollout.path``, else the ledger's path with ``.rollout.db``."""
    if cfg.rollout.path:
        return Path(cfg.rollout.path).expanduser()
    ledger = Path(cfg.ledger.path).expanduser()
    return ledger.with_name(f"{ledger.stem}.rollout.db")


def open_rollout_store(cfg: TierwiseConfig) -> RolloutStore:
    """The store captures and feedback live in (see :mod:`tierwise.rollout.records`). Raises
    :class:`~tierwise.rollout.store_sqlite.RolloutStoreError` with a one-line reason when it cannot be used."""
    backend = cfg.rollout.backend
    if backend == "auto":
        backend = "postgres" if cfg.ledger.backend == "postgres" else "sqlite"
    if backend == "postgres":
        from tierwise.rollout.store_pg import PostgresRolloutStore
        from tierwise.rollout.store_sqlite import RolloutStoreError

        if not cfg.ledger.dsn:
            raise RolloutStoreError("rollout.backend 'postgres' uses ledger.dsn, which is not set")
        return PostgresRolloutStore(cfg.ledger.dsn, cfg.ledger.pg_schema)
    from tierwise.rollout.store_sqlite import SQLiteRolloutStore

    return SQLiteRolloutStore(store_path(cfg))


def open_existing_rollout_store(cfg: TierwiseConfig) -> RolloutStore | None:
    """The rollout store if it exists, else None — without creating a file or tables (for read-only reports)."""
    from tierwise.rollout.store_sqlite import RolloutStoreMissing

    backend = cfg.rollout.backend
    if backend == "auto":
        backend = "postgres" if cfg.ledger.backend == "postgres" else "sqlite"
    if backend == "sqlite":
        return open_rollout_store(cfg) if store_path(cfg).exists() else None
    from tierwise.rollout.store_pg import PostgresRolloutStore

    if not cfg.ledger.dsn:
        return None
    try:
        return PostgresRolloutStore(cfg.ledger.dsn, cfg.ledger.pg_schema, create=False)
    except RolloutStoreMissing:
        return None


def iter_captured(cfg: TierwiseConfig, since: float | None = None, until: float | None = None,
                  tiers: list[str] | None = None) -> Iterator[Captured]:
    """Captured requests of the window (and tiers), oldest first; the store is closed when iteration ends."""
    store = open_rollout_store(cfg)
    try:
        yield from store.iter_captured(since, until, tiers)
    finally:
        store.close()


def feedback_scores(cfg: TierwiseConfig, since: float | None = None, until: float | None = None,
                    sources: list[str] | None = None) -> dict[str, float]:
    """One quality score in [0, 1] per request id from the feedback given in the window (by feedback time):
    ``score`` when given (clipped to [0, 1]), else thumbs (+1 -> 1.0, -1 -> 0.0); several sources on one request
    are averaged. ``sources`` keeps only those sources (e.g. ``["user"]``, ``["judge:gpt-4o"]``)."""
    sums: dict[str, list[float]] = {}
    store = open_rollout_store(cfg)
    try:
        for fb in store.iter_feedback(since, until):
            if sources is not None and fb.source not in sources:
                continue
            if fb.score is not None:
                value = min(1.0, max(0.0, float(fb.score)))
            elif fb.thumbs is not None:
                value = 1.0 if fb.thumbs > 0 else 0.0
            else:
                continue
            acc = sums.setdefault(fb.request_id, [0.0, 0.0])
            acc[0] += value
            acc[1] += 1
    finally:
        store.close()
    return {rid: s / n for rid, (s, n) in sums.items()}


class Redactor:
    """Replaces every match of the configured patterns in every string of a JSON value, and cuts long texts."""

    def __init__(self, patterns: list[str], max_chars: int) -> None:
        self._re = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
        self.max_chars = max_chars

    def text(self, s: str) -> str:
        s = clean_text(s, self.max_chars)  # no NUL or lone surrogate: neither SQLite's UTF-8 nor jsonb takes them
        return self._re.sub(REDACTED, s) if self._re is not None else s

    def json(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.json(v) for v in value]
        if isinstance(value, dict):
            return {clean_text(str(k), 200): self.json(v) for k, v in value.items()}
        return value


class Capturer:
    """Samples finished requests and writes them, redacted, from a thread of its own (batched)."""

    def __init__(self, cfg: CaptureConfig, open_store: Callable[[], RolloutStore], *,
                 batch_size: int = 200, flush_interval_s: float = 0.5, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self._open_store = open_store
        self._redactor = Redactor(cfg.redact, cfg.max_chars)
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(cfg.queue_max)
        self._batch_size, self._flush_s = batch_size, flush_interval_s
        self._rng = rng or random.Random()
        self.captured = 0  # written
        self.dropped = 0  # queue full or write failed
        self.purged = 0
        self._thread = threading.Thread(target=self._run, name="tierwise-capture", daemon=True)
        self._started = False
        self._queued = 0  # put on the queue (event loop thread only)
        self._handled = 0  # written or given up (capture thread only)

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def offer(self, record: LedgerRecord, body: dict[str, Any] | None, answer: str | None) -> bool:
        """Queue ``record``'s request for capture if sampling picks it. Cheap; never raises, never blocks."""
        if body is None or (record.status != "ok" and not self.cfg.errors):
            return False
        rate = self.cfg.rate_for(record.tier)
        if rate <= 0 or (rate < 1 and self._rng.random() >= rate):
            return False
        item = (record.id, record.ts, record.tier, record.tier_source, record.model, record.principal,
                record.session_id, record.status, body, answer)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            return False
        self._queued += 1
        if not self._started:
            self.start()
        return True

    def _build(self, item: tuple[Any, ...]) -> Captured:
        rid, ts, tier, source, model, principal, session, status, body, answer = item
        r = self._redactor
        messages = body.get("messages")
        params = {k: v for k, v in body.items() if k not in ("messages", "stream", "stream_options", "user")}
        return Captured(request_id=rid, ts=ts, tier=tier, tier_source=source, model=model, principal=principal,
                        session_id=session, status=status,
                        messages=r.json(messages if isinstance(messages, list) else []),
                        params=r.json(params), answer=r.text(answer) if isinstance(answer, str) else None)

    def _take(self, item: tuple[Any, ...], batch: list[Captured]) -> None:
        try:
            batch.append(self._build(item))
        except Exception as exc:  # an odd body must not stop the thread
            self.dropped += 1
            self._handled += 1
            log.warning("capture: request %s not captured: %s", item[0], type(exc).__name__)

    def _run(self) -> None:
        store: RolloutStore | None = None
        next_purge = 0.0
        stop = False
        while not stop:
            batch: list[Captured] = []
            try:
                item = self._queue.get(timeout=self._flush_s)
            except queue.Empty:
                item = None
            else:
                if item is None:
                    stop = True
                else:
                    self._take(item, batch)
            while len(batch) < self._batch_size and not stop:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                else:
                    self._take(more, batch)
            try:
                if store is None and (batch or time.time() >= next_purge):
                    store = self._open_store()
                if batch and store is not None:
                    store.write_captures(batch)
                    self.captured += len(batch)
                if self.cfg.retention_days is not None and store is not None and time.time() >= next_purge:
                    next_purge = time.time() + PURGE_EVERY_S
                    self.purged += store.purge(time.time() - self.cfg.retention_days * 86400)
            except Exception as exc:  # capture is best effort: count, say why once per failure, keep serving
                self.dropped += len(batch)
                next_purge = time.time() + 60
                log.warning("capture: %d prompt(s) not stored: %s", len(batch), exc)
                if store is not None:
                    store.close()
                    store = None
            self._handled += len(batch)
        if store is not None:
            store.close()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued so far is written (tests, shutdown). True when it was."""
        target = self._queued
        deadline = time.monotonic() + timeout_s
        while self._handled < target:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop the thread (blocking: call off the event loop)."""
        if not self._started:
            return
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            log.warning("capture: queue still full at shutdown; %d capture(s) dropped", self._queue.qsize())
            return
        self._thread.join(timeout_s)


def rollout_problems(cfg: TierwiseConfig) -> list[tuple[str, str]]:
    """Config problems ``check-config`` and ``serve`` report: tiers the capture settings name that do not exist (a
    typo would silently capture nothing), a PostgreSQL rollout store without a ledger DSN."""
    out = []
    c = cfg.rollout.capture
    for i, tier in enumerate(c.tiers or []):
        if tier not in cfg.tiers:
            out.append((f"rollout.capture.tiers[{i}]", f"unknown tier '{tier}' (tiers: {', '.join(cfg.tiers)})"))
    for tier in c.tier_rates:
        if tier not in cfg.tiers:
            out.append((f"rollout.capture.tier_rates.{tier}", f"unknown tier '{tier}'"))
    if cfg.rollout.backend == "postgres" and not cfg.ledger.dsn:
        out.append(("rollout.backend", "'postgres' keeps captures in the ledger's database: set ledger.dsn"))
    return out


def build_capturer(cfg: TierwiseConfig) -> Capturer | None:
    """The gateway's capturer, or None when capture is off (then the hot path does nothing for it)."""
    c = cfg.rollout.capture
    if not c.enabled or (c.sample_rate <= 0 and not any(c.tier_rates.values())):
        return None
    return Capturer(c, lambda: open_rollout_store(cfg))


def purge(cfg: TierwiseConfig, older_than_days: float | None = None) -> int:
    """Delete captures older than ``older_than_days`` (default ``capture.retention_days``); returns how many."""
    days = cfg.rollout.capture.retention_days if older_than_days is None else older_than_days
    if days is None:
        raise ValueError("no retention: give --older-than DAYS or set rollout.capture.retention_days")
    store = open_rollout_store(cfg)
    try:
        return store.purge(time.time() - days * 86400)
    finally:
        store.close()
