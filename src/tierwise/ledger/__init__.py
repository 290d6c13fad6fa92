"""The request ledger: one row per request, written off the hot path, exported for the people who pay the bills.

Typical wiring (the gateway's start-up and SIGTERM handler)::

    store = open_store(cfg.ledger)
    import_unwritten(store, fallback_path_for(store))   # rows a previous outage left in the fallback file
    writer = LedgerWriter(store, cfg.ledger.batch_size, cfg.ledger.flush_interval_ms)
    ...
    writer.submit(record)                                # per request, from the event loop or any thread
    ...
    writer.close(); store.close()                        # on shutdown, in that order
"""

from __future__ import annotations

from pathlib import Path

from tierwise.config.schema import LedgerConfig
from tierwise.ledger.export import csv_cells, export_rows, flatten_attempts, format_tail
from tierwise.ledger.recover import fallback_path_for, import_unwritten
from tierwise.ledger.store import (
    COLUMN_NAMES,
    SCHEMA_VERSION,
    LedgerSchemaError,
    LedgerStore,
    MemoryLedgerStore,
    SQLiteLedgerStore,
)
from tierwise.ledger.writer import LedgerWriteError, LedgerWriter, WriterStats


def open_store(cfg: LedgerConfig) -> LedgerStore:
    """The store ``ledger.backend`` names: ``sqlite`` (file at ``ledger.path``) or ``memory``."""
    if cfg.backend == "sqlite":
        return SQLiteLedgerStore(Path(cfg.path).expanduser())
    if cfg.backend == "memory":
        return MemoryLedgerStore()
    raise ValueError(f"unknown ledger backend {cfg.backend!r}")


def open_writer(cfg: LedgerConfig, store: LedgerStore) -> LedgerWriter:
    """A writer with the batch size and flush interval from the config."""
    return LedgerWriter(store, batch_size=cfg.batch_size, flush_interval_ms=cfg.flush_interval_ms)


__all__ = [
    "COLUMN_NAMES",
    "SCHEMA_VERSION",
    "LedgerSchemaError",
    "LedgerStore",
    "LedgerWriteError",
    "LedgerWriter",
    "MemoryLedgerStore",
    "SQLiteLedgerStore",
    "WriterStats",
    "csv_cells",
    "export_rows",
    "fallback_path_for",
    "flatten_attempts",
    "format_tail",
    "import_unwritten",
    "open_store",
    "open_writer",
]
