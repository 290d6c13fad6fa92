"""Where principals and their keys live: a small :class:`GovernanceStore` protocol, SQLite and PostgreSQL.

A **principal** is who spend is attributed to and what rules apply to: customer, department, project, value tier,
allowed tiers and models, daily/monthly budgets, requests and tokens per minute, revenue per request, and a
``disabled`` switch. A **key** belongs to one principal; the store keeps its SHA-256 hash (never the key, see
:mod:`tierwise.governance.keys`), a display prefix, an optional unique name, its expiry and revocation times, and
optional per-key overrides of the allow lists and limits (a key narrows its principal, never widens it: see
:func:`tierwise.governance.auth.resolve`).

Every input is validated here, in one place (:func:`parse` with the pydantic models below), whoever calls: the
admin API, the CLI or code. Failures are :class:`GovernanceError` subclasses carrying the HTTP status the admin API
answers with: :class:`InvalidInput` (400, naming the field), :class:`NotFound` (404), :class:`Conflict` (409),
:class:`GovernanceStoreError` (503: the store cannot be reached or written; its message never holds a key, a hash
or a DSN password).

Backends:

- :class:`SQLiteGovernanceStore`: its own file (``governance.path``, default ``tierwise-governance.db``), WAL,
  schema versioned with ``PRAGMA user_version`` and stamped ``PRAGMA application_id`` ("TWGV") as the ledger file
  is, so a newer or foreign file is refused instead of written into.
- :class:`PostgresGovernanceStore`: tables ``tierwise_gov_principals``, ``tierwise_gov_keys`` and
  ``tierwise_gov_meta`` in ``governance.pg_schema`` (default: the ledger's schema), version ``governance`` in the
  ``tierwise_schema_versions`` table the ledger also uses; created under the same advisory lock as the ledger's
  schema so replicas (and the ledger) starting together never race on ``CREATE SCHEMA``/``CREATE TABLE``.

Each write bumps a **generation** counter in the same transaction, so a gateway polling every ``refresh_s`` reloads
its key map only when something changed (:meth:`GovernanceStore.generation`).

Times are unix seconds (floats), as in the ledger. Deleting a principal deletes its keys; the ledger keeps the key
ids its records name.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tierwise.config.schema import TierwiseConfig
from tierwise.governance.postgres_store import PostgresGovernanceStore, schema_lock_key
from tierwise.governance.records import (
    DEFAULT_GRACE_S,
    MAX_GRACE_S,
    MAX_RATE,
    MAX_USD,
    NAME_RE,
    Conflict,
    GovernanceError,
    GovernanceStore,
    GovernanceStoreError,
    InvalidInput,
    KeyRecord,
    KeySpec,
    NotFound,
    PrincipalPatch,
    PrincipalRecord,
    PrincipalSpec,
    RotateSpec,
    parse,
)
from tierwise.governance.sqlite_store import APPLICATION_ID, SQLITE_SCHEMA_VERSION, SQLiteGovernanceStore
from tierwise.pgtext import connection_problem

# -- from the configuration -----------------------------------------------------------------------------------


def governance_backend(cfg: TierwiseConfig) -> str:
    """``governance.backend``, or its default: postgres when governance.dsn is set or the ledger is on PostgreSQL."""
    g = cfg.governance
    if g.backend is not None:
        return g.backend
    return "postgres" if g.dsn or cfg.ledger.backend == "postgres" else "sqlite"


def _pg_target(cfg: TierwiseConfig) -> tuple[str | None, str]:
    g = cfg.governance
    return (g.dsn or cfg.ledger.dsn), (g.pg_schema or cfg.ledger.pg_schema)


def open_governance_store(cfg: TierwiseConfig) -> GovernanceStore:
    """The store the configuration names (blocking I/O: call it off the event loop)."""
    if governance_backend(cfg) == "postgres":
        dsn, schema = _pg_target(cfg)
        if not dsn:
            raise GovernanceStoreError("governance on PostgreSQL needs governance.dsn (or ledger.dsn)")
        return PostgresGovernanceStore(dsn, schema=schema)
    return SQLiteGovernanceStore(cfg.governance.path)


def store_problem(cfg: TierwiseConfig) -> tuple[str, str] | None:
    """Why the configured governance store could not be opened, as (config path, message), or None. Changes
    nothing: no file is created, no table (for ``check-config`` and ``serve``'s start-up checks)."""
    if governance_backend(cfg) == "postgres":
        dsn, _ = _pg_target(cfg)
        if not dsn:
            return "governance.dsn", "governance on PostgreSQL needs governance.dsn (or ledger.dsn)"
        problem = connection_problem(dsn, "PostgreSQL governance store")
        return None if problem is None else ("governance.dsn" if cfg.governance.dsn else "ledger.dsn", problem)
    return _sqlite_problem(Path(cfg.governance.path).expanduser())


def _sqlite_problem(path: Path) -> tuple[str, str] | None:
    from tierwise.gateway.startup import _creatable

    fix = "point governance.path at a file in a writable directory"
    if path.is_dir():
        return "governance.path", f"{path} is a directory, not a file; {fix}"
    if problem := _creatable(path, f"the governance store {path} (and its WAL)"):
        return "governance.path", f"{problem}; {fix}"
    if not path.exists():
        return None
    try:
        with open(path, "r+b") as f:
            head = f.read(100)
    except OSError as exc:
        return "governance.path", f"cannot open {path} for writing ({exc.strerror}); {fix}"
    if not head:
        return None
    if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
        return "governance.path", f"{path} is not a tierwise governance store (not an SQLite database); {fix}"
    version = int.from_bytes(head[60:64], "big", signed=True)
    app_id = int.from_bytes(head[68:72], "big", signed=True)
    if app_id != APPLICATION_ID and (app_id != 0 or version != 0):
        return "governance.path", f"{path} is an SQLite file of another application (or a ledger); {fix}"
    if version > SQLITE_SCHEMA_VERSION:
        return "governance.path", (f"{path} has schema version {version}, but this tierwise only knows up to "
                                   f"{SQLITE_SCHEMA_VERSION}: upgrade tierwise")
    return None


__all__ = ["APPLICATION_ID", "Conflict", "DEFAULT_GRACE_S", "GovernanceError", "GovernanceStore", "GovernanceStoreError", "InvalidInput", "KeyRecord", "KeySpec", "MAX_GRACE_S", "MAX_RATE", "MAX_USD", "NAME_RE", "NotFound", "PostgresGovernanceStore", "PrincipalPatch", "PrincipalRecord", "PrincipalSpec", "RotateSpec", "SQLITE_SCHEMA_VERSION", "SQLiteGovernanceStore", "governance_backend", "open_governance_store", "parse", "schema_lock_key", "store_problem"]
