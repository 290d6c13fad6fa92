"""The fallback file: where a writer saves rows its store refuses, and how they get back into the ledger."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import orjson

from tierwise.ledger.store import LedgerStore, Row, complete_row

log = logging.getLogger("tierwise.ledger")


def fallback_path_for(store: LedgerStore) -> Path:
    """Where a writer on ``store`` saves rows the store refuses: ``<db path>.unwritten.jsonl``."""
    path = getattr(store, "path", None)
    if path is not None:
        return Path(f"{path}.unwritten.jsonl")
    return Path("tierwise-ledger.unwritten.jsonl").resolve()


def quarantine_path_for(fallback_path: str | Path) -> Path:
    """Where a writer puts rows its store refused even cleaned: ``<ledger>.rejected.jsonl`` beside the fallback
    file (each line ``{"error": …, "row": …}``)."""
    fallback_path = Path(fallback_path)
    return fallback_path.with_name(fallback_path.name.replace(".unwritten.jsonl", "") + ".rejected.jsonl")


def retry_quarantined(store: LedgerStore, path: str | Path) -> tuple[int, int]:
    """Offer every quarantined row to ``store`` again, one at a time; returns (stored now, still refused).

    A row lands in quarantine when the store refused it alone while the store was up. That is nearly always a row
    the store can never take — but a store that went down between proving itself up and the row's last try would
    have sent a healthy row there, so recovery gives each one another chance. Rows stored now leave the file (it is
    rewritten atomically; removed when empty); the rest stay with their original error. Idempotent.
    """
    path = Path(path)
    if not path.exists():
        return 0, 0
    kept: list[bytes] = []
    stored = 0
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = orjson.loads(line)
                row = complete_row(entry["row"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                log.warning("ledger: skipping malformed line %d of %s", lineno, path)
                kept.append(line if line.endswith(b"\n") else line + b"\n")
                continue
            try:
                store.write_batch([row])
            except Exception:
                kept.append(line if line.endswith(b"\n") else line + b"\n")
                continue
            stored += 1
    if stored == 0:
        return 0, len(kept)
    if kept:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(b"".join(kept))
        os.replace(tmp, path)
    else:
        path.unlink()
    log.warning("ledger: %d quarantined row(s) stored on a new try; %d still refused (%s)", stored, len(kept), path)
    return stored, len(kept)


def import_unwritten(store: LedgerStore, path: str | Path, *, batch_size: int = 1000) -> int:
    """Load a fallback JSONL file back into ``store`` and rename it ``*.imported``; returns the rows loaded.

    Safe to re-run: stores replace rows by ``id``. Call it at start-up, before the writer, so a previous outage's
    rows rejoin the ledger.
    """
    path = Path(path)
    if not path.exists():
        return 0
    total = 0
    batch: list[Row] = []
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                batch.append(complete_row(orjson.loads(line)))  # an older tierwise's file lacks newer columns
            except orjson.JSONDecodeError:  # a line cut short by a crash mid-write: the rest is still good
                log.warning("ledger: skipping malformed line %d of %s", lineno, path)
                continue
            if len(batch) >= batch_size:
                store.write_batch(batch)
                total += len(batch)
                batch = []
    if batch:
        store.write_batch(batch)
        total += len(batch)
    path.rename(path.with_name(f"{path.name}.{int(time.time())}.imported"))
    log.info("ledger: imported %d rows from %s", total, path)
    return total
