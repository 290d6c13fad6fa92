"""PostgreSQL errors and targets in words that cannot leak a value or a password (ledger and governance share it).

No psycopg import at module level: governance and the CLI import this without the ``postgres`` extra installed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any


def describe_pg_error(exc: BaseException, secret: str | None = None) -> str:
    """``exc`` in words that cannot leak a row or a password.

    PostgreSQL's data exceptions (SQLSTATE class 22: bad input syntax, out-of-range values, bad JSON escapes) quote
    the offending value in their primary message and their detail/context lines quote more, so for those only the
    class and SQLSTATE are kept; other server errors keep their primary message (object names, not data). Errors
    raised in the client before anything was sent keep only their class, except psycopg's connection errors; the
    DSN's password is masked in any case.
    """
    name = type(exc).__name__
    from_psycopg = type(exc).__module__.startswith("psycopg")
    state = getattr(exc, "sqlstate", None) if from_psycopg else None
    if state is not None:
        diag = getattr(exc, "diag", None)
        primary = (getattr(diag, "message_primary", None) or "") if diag is not None else ""
        text = f"{name} (SQLSTATE {state})" if state.startswith("22") or not primary else (
            f"{primary} ({name}, SQLSTATE {state})")
    elif from_psycopg and any(c.__name__ in ("OperationalError", "InterfaceError") for c in type(exc).__mro__):
        text = f"{name}: {str(exc).strip()}"
    else:
        text = name
    text = " ".join(text.split())[:300]
    if secret:
        text = text.replace(secret, "***")
    return text


def pg_lock_key(purpose: str, schema: str) -> int:
    """A stable signed 64-bit advisory lock key for ``purpose`` on ``schema`` (advisory locks are per database)."""
    digest = hashlib.blake2b(f"tierwise.{purpose}:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def pg_where(params: Mapping[str, Any]) -> str:
    """host/port/dbname/user of parsed connection parameters: what an error may name (never the password)."""
    return " ".join(f"{k}={params[k]}" for k in ("host", "port", "dbname", "user") if params.get(k)) \
        or "libpq defaults"


def connection_problem(dsn: str, what: str, timeout_s: int = 5) -> str | None:
    """Why ``dsn`` cannot be connected to, or None; changes nothing in the database (for ``check-config``).
    ``what`` names the store in the message, e.g. "PostgreSQL ledger"."""
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return f"the {what} needs psycopg 3: pip install 'tierwise[postgres]'"
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return f"the {what}'s DSN is not a valid PostgreSQL connection string or URI"
    secret = str(params.get("password") or "") or None
    try:
        with psycopg.connect(dsn, connect_timeout=int(params.get("connect_timeout") or timeout_s)) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"cannot connect to the {what} ({pg_where(params)}): {describe_pg_error(exc, secret)}"
    return None
