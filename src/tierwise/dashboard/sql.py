"""The dashboard's aggregates as SQL, in SQLite's and PostgreSQL's dialects, run where the rows are.

Every panel is one ``GROUP BY`` over the window's rows (the ``ts`` index bounds the scan; ``(tier, ts)`` and
``(principal, ts)`` serve the filters), returning a handful of groups, never the rows themselves:

- ``timeline``: cost and requests per (time bucket, tier, model);
- ``routes``: per (tier, model, tier source) counts by status, escalated and fallen-back requests, cost and tokens
  (totals, routing distribution, escalation, error and fallback rates, and the flagship counterfactual, which is
  linear in the token sums);
- ``allocation``: the top principals, customers and departments by cost;
- ``latency`` / ``ttft``: counts per logarithmic bucket (4 % wide) of answered requests, from which the page's
  percentiles are read (so they are within ±2 % of the exact value);
- ``budget``: spend per UTC day of this month, globally or per customer/department/project/model (for the caps);
- ``recent``: the newest rows (``ORDER BY ts DESC LIMIT n``: an index walk).

All queries of one summary run in one read transaction (SQLite: ``BEGIN`` on a WAL file; PostgreSQL: ``REPEATABLE
READ READ ONLY``), so the panels agree with each other even while the writer appends.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tierwise.dashboard.query import DashboardQuery

#: Width of a latency histogram bucket: ln(1.04), i.e. 4 % from one bucket edge to the next.
LOG_STEP = math.log(1.04)
_K = 1.0 / LOG_STEP
#: Latencies below this many ms are counted in its bucket (ln of 0 is undefined).
MIN_MS = 0.01

#: Columns of the allocation panel (``principal``, ``customer``, ``department``) and of budget scopes.
ALLOCATION_COLUMNS = ("principal", "customer", "department")
BUDGET_COLUMNS = ("customer", "department", "project", "model")
ALLOCATION_TOP = 12

TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
#: Per route group; ``served_*``: the tokens of the answer served (the row's own, or for an escalated cascade its
#: last attempt's), what one flagship call would have read and written (as ``tierwise report`` counts them).
ROUTE_METRICS = ("requests", "ok", "errors", "rejected", "cancelled", "escalated", "fell_back", "cost_usd", *TOKENS,
                 *(f"served_{t}" for t in TOKENS))
RECENT_COLUMNS = ("id", "ts", "principal", "tier", "tier_source", "requested_model", "model", "status",
                  "http_status", "cost_usd", "latency_ms", "ttft_ms", "escalations", "fallbacks", "customer",
                  "department", "project", "notes", "tags", "error")


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between SQLite and PostgreSQL in these queries."""

    name: str
    table: str  # already quoted
    ph: str  # the placeholder: ? or %s

    def bucket(self) -> str:
        """The time bucket of a row (two parameters: since, step), floored; placeholders are written ``?`` in
        every dialect (:meth:`Session.rows` swaps them)."""
        if self.name == "sqlite":
            return "CAST((ts - ?) / ? AS INTEGER)"  # ts >= since: truncation is the floor
        return "floor((ts - ?) / ?)::bigint"

    def day(self) -> str:
        """The UTC day number of a row (floored to the second, as ``tierwise spend`` does)."""
        return "CAST(ts AS INTEGER) / 86400" if self.name == "sqlite" else "floor(ts)::bigint / 86400"

    def served(self, column: str) -> str:
        """The served tokens of a row (the last attempt's usage for an escalated cascade; JSON read only then)."""
        last = (f"json_extract(attempts, '$[#-1].usage.{column}')" if self.name == "sqlite"
                else f"(attempts->-1->'usage'->>'{column}')::bigint")
        return f"coalesce(sum(CASE WHEN escalations > 0 THEN coalesce({last}, 0) ELSE {column} END), 0)"

    def log_bucket(self, column: str) -> str:
        if self.name == "sqlite":
            return f"CAST(floor(ln(max({column}, {MIN_MS})) * {_K!r}) AS INTEGER)"
        return f"floor(ln(greatest({column}, {MIN_MS})) * {_K!r})::bigint"


def _count(cond: str) -> str:
    return f"coalesce(sum(CASE WHEN {cond} THEN 1 ELSE 0 END), 0)"


_ROUTE_SELECT = ", ".join([
    "count(*)", _count("status = 'ok'"), _count("status = 'error'"), _count("status = 'rejected'"),
    _count("status = 'client_cancelled'"), _count("escalations > 0"), _count("fallbacks > 0"),
    "coalesce(sum(cost_usd), 0)",
    *(f"coalesce(sum({c}), 0)" for c in TOKENS),
])


class Session:
    """One read transaction on one connection; ``rows`` runs a statement written with ``?`` placeholders."""

    def __init__(self, dialect: Dialect, cursor: Any) -> None:
        self.d = dialect
        self._cur = cursor
        self.source = dialect.table  # what the aggregates read FROM (see :func:`plan`)

    def rows(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        if self.d.ph != "?":
            sql = sql.replace("?", self.d.ph)
        self._cur.execute(sql, list(args))
        return [tuple(_plain(v) for v in r) for r in self._cur.fetchall()]


def _plain(v: Any) -> Any:
    """PostgreSQL's ``sum`` of integers is ``numeric`` (a Decimal in Python): back to int, or float."""
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    return v


def _where(q: DashboardQuery) -> tuple[str, list[Any]]:
    parts = ["ts >= ?", "ts < ?"]
    args: list[Any] = [float(q.since), float(q.until)]
    if q.tier is not None:
        parts.append("tier = ?")
        args.append(q.tier)
    if q.principal is not None:
        parts.append("principal = ?")
        args.append(q.principal)
    return " WHERE " + " AND ".join(parts), args


#: A window (with its filter) matching more than this share of the ledger is read by a table scan in SQLite.
FULL_SCAN_SHARE = 0.15


def plan(s: Session, q: DashboardQuery) -> None:
    """SQLite only: read a large share of the ledger by a table scan, not through an index.

    Without statistics SQLite always walks the ``ts`` (or ``(tier, ts)``) index for a window, then looks every row up
    in the table: for a window holding most of the ledger that is ~3x slower than scanning the table
    (bench/results/dashboard_query.md). The share is estimated with an index-only count (cheap) against the
    largest rowid (instant; an upper bound of the row count). PostgreSQL's planner makes this choice itself.
    """
    if s.d.name != "sqlite":
        return
    if q.tier is not None:
        where, args = " WHERE tier = ? AND ts >= ? AND ts < ?", [q.tier, float(q.since), float(q.until)]
    elif q.principal is not None:
        where, args = " WHERE principal = ? AND ts >= ? AND ts < ?", [q.principal, float(q.since), float(q.until)]
    else:
        where, args = " WHERE ts >= ? AND ts < ?", [float(q.since), float(q.until)]
    matched = s.rows(f"SELECT count(*) FROM {s.d.table}{where}", args)[0][0] or 0
    total = s.rows(f"SELECT max(rowid) FROM {s.d.table}", [])[0][0] or 0
    if total and matched > FULL_SCAN_SHARE * total:
        s.source = f"{s.d.table} NOT INDEXED"


def routes(s: Session, q: DashboardQuery) -> list[tuple[Any, ...]]:
    """Per (time bucket, tier, model, tier source): the route metrics. The timeline and every routing panel are
    sums of these groups (one pass for both)."""
    where, args = _where(q)
    served = ", ".join(s.d.served(t) for t in TOKENS)
    return s.rows(f"SELECT {s.d.bucket()}, tier, model, tier_source, {_ROUTE_SELECT}, {served} FROM {s.source}{where} "
                  "GROUP BY 1, 2, 3, 4", [float(q.since), float(q.step), *args])


def allocation(s: Session, q: DashboardQuery) -> list[tuple[Any, ...]]:
    """Requests and cost per (principal, customer, department): one pass for the three allocation panels, whose
    top members are picked from these groups (about one per principal: a principal has one customer and one
    department, unless they were changed within the window)."""
    where, args = _where(q)
    return s.rows(f"SELECT principal, customer, department, count(*), coalesce(sum(cost_usd), 0) "
                  f"FROM {s.source}{where} GROUP BY 1, 2, 3", args)


def histograms(s: Session, q: DashboardQuery) -> list[tuple[Any, ...]]:
    """(0 for latency | 1 for TTFT, log bucket, answered requests) in one pass: every row is joined to the two
    kinds (``CROSS JOIN`` keeps the ledger as the outer loop in SQLite, so each row is read once)."""
    where, args = _where(q)
    value = "(CASE k.kind WHEN 0 THEN latency_ms ELSE ttft_ms END)"
    return s.rows(f"SELECT k.kind, {s.d.log_bucket(value)}, count(*) FROM {s.source} "
                  f"CROSS JOIN (SELECT 0 AS kind UNION ALL SELECT 1) AS k{where} AND status = 'ok' "
                  f"AND {value} IS NOT NULL GROUP BY 1, 2", args)


def budget_days(s: Session, month_start: float, column: str | None, name: str | None) -> list[tuple[Any, ...]]:
    """Spend per (UTC day, member) since ``month_start``; ``column`` None: globally; ``name``: one member only."""
    if column is None:
        return s.rows(f"SELECT {s.d.day()}, NULL, coalesce(sum(cost_usd), 0) FROM {s.source} WHERE ts >= ? "
                      "GROUP BY 1", [month_start])
    assert column in BUDGET_COLUMNS
    if name is not None:
        return s.rows(f"SELECT {s.d.day()}, {column}, coalesce(sum(cost_usd), 0) FROM {s.source} "
                      f"WHERE ts >= ? AND {column} = ? GROUP BY 1, 2", [month_start, name])
    return s.rows(f"SELECT {s.d.day()}, {column}, coalesce(sum(cost_usd), 0) FROM {s.source} "
                  f"WHERE ts >= ? AND {column} IS NOT NULL GROUP BY 1, 2", [month_start])


def recent(s: Session, q: DashboardQuery, limit: int) -> list[tuple[Any, ...]]:
    where, args = _where(q)
    return s.rows(f"SELECT {', '.join(RECENT_COLUMNS)} FROM {s.d.table}{where} ORDER BY ts DESC LIMIT {int(limit)}",
                  args)


def ensure_sqlite_math(conn: sqlite3.Connection) -> None:
    """``ln``, ``floor`` and ``max`` for an SQLite built without its math functions (slower, same results)."""
    try:
        conn.execute("SELECT ln(2.0), floor(2.5)").fetchone()
    except sqlite3.OperationalError:
        conn.create_function("ln", 1, lambda x: None if x is None or x <= 0 else math.log(x), deterministic=True)
        conn.create_function("floor", 1, lambda x: None if x is None else math.floor(x), deterministic=True)
