"""Versioned SQLite files: create a new one, migrate an older one, refuse a newer or foreign one, atomically.

The ledger and the governance store keep their layout version in ``PRAGMA user_version`` and stamp their file with
their own ``PRAGMA application_id``, so that a file of another application (or of the other store) is refused
instead of written into; one mechanism serves both.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Refusal = Literal["foreign_application", "newer_version", "foreign_tables"]


@dataclass(frozen=True, slots=True)
class Layout:
    version: int  # the layout this code writes
    application_id: int
    create: Sequence[str]  # statements that build a new file at ``version``
    migrations: Mapping[int, Sequence[str]]  # version N -> statements that bring it to N + 1
    foreign_tables_sql: str  # a query with a row when an unstamped file already has tables of its own


def ensure_layout(conn: sqlite3.Connection, layout: Layout, refuse: Callable[[Refusal, int], Exception]) -> None:
    """Create, migrate or refuse (``refuse(why, found_version)`` builds the caller's error), in one transaction:
    a refused or failed migration leaves the file exactly as it was."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        if app_id not in (0, layout.application_id):
            raise refuse("foreign_application", version)
        if version > layout.version:
            raise refuse("newer_version", version)
        if version == 0:
            if conn.execute(layout.foreign_tables_sql).fetchone() is not None:
                raise refuse("foreign_tables", version)
            for stmt in layout.create:
                conn.execute(stmt)
        else:
            for v in range(version, layout.version):
                for stmt in layout.migrations[v]:
                    conn.execute(stmt)
        if version != layout.version:
            conn.execute(f"PRAGMA user_version={layout.version}")
            conn.execute(f"PRAGMA application_id={layout.application_id}")
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise


def rollback(conn: sqlite3.Connection) -> None:
    """Leave no transaction open after a failure (a failed COMMIT keeps it open), without masking the error."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
