"""The one way a time window becomes SQL: ``since <= ts < until``, either bound optional, as bound parameters.

Every reader of the ledger (iteration, spend, reports, the capture store) filters by the same half-open window, so
the bounds' semantics (inclusive start, exclusive end) live here once.
"""

from __future__ import annotations

from typing import Any


def ts_window(since: float | None, until: float | None, placeholder: str = "?") -> tuple[list[str], list[Any]]:
    """(conditions, parameters) for ``since <= ts < until``; ``placeholder`` is ``?`` (SQLite) or ``%s`` (psycopg)."""
    where: list[str] = []
    args: list[Any] = []
    if since is not None:
        where.append(f"ts >= {placeholder}")
        args.append(float(since))
    if until is not None:
        where.append(f"ts < {placeholder}")
        args.append(float(until))
    return where, args
