"""The fallback file: where a writer saves rows its store refuses, and how they get back into the ledger."""

from __future__ import annotations

import logging
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
