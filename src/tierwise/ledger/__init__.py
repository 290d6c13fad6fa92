"""The request ledger: one row per request, written off the hot path, exported for the people who pay the bills.

Typical wiring (the gateway's start-up and SIGTERM handler)::

    writer = open_ledger(cfg.ledger)   # store + journal replay + fallback import + writer with its journal
    ...
    writer.begin(record)               # before the first upstream call (crash journal)
    writer.submit(record)              # when the request ends, from the event loop or any thread
    ...
    writer.close(); writer.store.close()   # on shutdown, in that order
"""

from __future__ import annotations

import logging
from pathlib import Path

from tierwise.config.schema import LedgerConfig
from tierwise.ledger.export import csv_cells, export_rows, flatten_attempts, format_tail
from tierwise.ledger.journal import Journal, JournalError, ReplayReport, replay_orphans
from tierwise.ledger.recover import (
    fallback_path_for,
    import_unwritten,
    quarantine_path_for,
    retry_quarantined,
)
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
    """The store ``ledger.backend`` names: ``sqlite`` (file at ``ledger.path``), ``memory``, or ``postgres`` (at
    ``ledger.dsn``, schema ``ledger.pg_schema``; psycopg is imported only then, so only that backend needs the
    ``postgres`` extra)."""
    if cfg.backend == "sqlite":
        return SQLiteLedgerStore(Path(cfg.path).expanduser())
    if cfg.backend == "memory":
        return MemoryLedgerStore()
    if cfg.backend == "postgres":
        from tierwise.ledger.postgres import PostgresLedgerStore

        if not cfg.dsn:
            raise ValueError("ledger.backend 'postgres' needs ledger.dsn")
        return PostgresLedgerStore(cfg.dsn, schema=cfg.pg_schema, local_path=Path(cfg.path).expanduser())
    raise ValueError(f"unknown ledger backend {cfg.backend!r}")


log = logging.getLogger("tierwise.ledger")


def journal_dir(cfg: LedgerConfig) -> Path | None:
    """Where the crash journal lives, or None when there is none (turned off, or the memory backend).

    The journal is always local, whatever the backend: with ``postgres`` it is ``ledger.journal_dir`` or
    ``<ledger.path>.journal`` on this host (``ledger.path`` is then only the base name of the local files), so a
    replica that crashes replays its own records into the shared ledger when it starts again.
    """
    if not cfg.journal or cfg.backend == "memory":
        return None
    return Path(cfg.journal_dir).expanduser() if cfg.journal_dir else Path(f"{Path(cfg.path).expanduser()}.journal")


def _fallback_path(cfg: LedgerConfig, store: LedgerStore) -> Path:
    return Path(cfg.fallback_path).expanduser() if cfg.fallback_path else fallback_path_for(store)


def open_writer(cfg: LedgerConfig, store: LedgerStore, journal: Journal | None = None) -> LedgerWriter:
    """A writer with the batch size, flush interval and fallback file from the config."""
    return LedgerWriter(store, batch_size=cfg.batch_size, flush_interval_ms=cfg.flush_interval_ms,
                        fallback_path=_fallback_path(cfg, store), journal=journal)


def recover(cfg: LedgerConfig, store: LedgerStore) -> tuple[ReplayReport, int, tuple[int, int]]:
    """Bring back into ``store`` what a crash or an outage left behind: the journal segments of stopped processes,
    the fallback file, and another try for the quarantined rows. Returns (journal replay report: finals and
    interrupted counted apart, rows re-imported from the fallback file, (quarantined rows stored now, still
    refused)). Idempotent."""
    jdir = journal_dir(cfg)
    report = replay_orphans(jdir, store) if jdir is not None else ReplayReport(0, 0, 0, 0)
    if report.segments:
        log.warning("ledger: replayed %d record(s) from %d journal segment(s) of a stopped process "
                    "(%d interrupted request(s) booked at their estimate)",
                    report.records, report.segments, report.interrupted)
    imported = import_unwritten(store, _fallback_path(cfg, store))
    if imported:
        log.warning("ledger: re-imported %d record(s) from the fallback file", imported)
    quarantined = retry_quarantined(store, quarantine_path_for(_fallback_path(cfg, store)))
    return report, imported, quarantined


def open_ledger(cfg: LedgerConfig) -> LedgerWriter:
    """Open the store, :func:`recover` what a crash or an outage left behind (the journal rows replayed are on the
    writer's ``recovered``), and start a writer with its own journal. Raises ``OSError``/``LedgerSchemaError``
    with the path in the message when the ledger cannot be used."""
    store = open_store(cfg)
    try:
        report = recover(cfg, store)[0]
        jdir = journal_dir(cfg)
        journal = Journal(jdir, fsync=cfg.fsync) if jdir is not None else None
    except BaseException:
        store.close()
        raise
    writer = open_writer(cfg, store, journal)
    writer.recovered = report.rows
    return writer


__all__ = [
    "COLUMN_NAMES",
    "SCHEMA_VERSION",
    "LedgerSchemaError",
    "LedgerStore",
    "LedgerWriteError",
    "Journal",
    "JournalError",
    "LedgerWriter",
    "MemoryLedgerStore",
    "ReplayReport",
    "SQLiteLedgerStore",
    "WriterStats",
    "csv_cells",
    "export_rows",
    "fallback_path_for",
    "flatten_attempts",
    "format_tail",
    "import_unwritten",
    "journal_dir",
    "open_ledger",
    "open_store",
    "open_writer",
    "recover",
    "replay_orphans",
]
