"""Spend over a window, grouped by who and what: the query behind ``tierwise spend``.

Aggregation happens where the rows are: one ``GROUP BY`` in SQLite (:func:`sqlite_spend`) or PostgreSQL
(:meth:`tierwise.ledger.postgres.PostgresLedgerStore.spend`), never by loading rows into Python; only the memory
store (tests, throwaway gateways) sums in Python (:func:`memory_spend`), with the same semantics, which the tests
hold all three to.

Grouping keys (``--by``; several make one group per combination):

- ``customer``, ``department``, ``project``, ``tier``, ``model``, ``principal``, ``key`` (the ``key_id`` column):
  the record's value, ``None`` when it has none (e.g. rows written before attribution, an open gateway).
- ``day`` / ``month``: the UTC calendar day (``2026-11-25``) / month (``2026-11``) of ``ts``, floored to the second
  in every backend so that a request at 23:59:59.9996 is never booked to the next day. SQL groups days by their
  number since 1970-01-01 (integer arithmetic on ``ts``: half the cost of formatting a date per row) and names the
  few groups afterwards.
- ``tag``: with ``tag_key``, that tag's value (``None`` for rows without it); without, every ``key=value`` pair of
  the row's tags (``None`` for rows without tags). Without ``tag_key`` a row with two tags is in two groups, so the
  groups then add up to more than the total; in every other grouping they add up to it exactly.

Metrics per group (:data:`METRICS`, also the CSV/JSON column names, stable): ``requests`` (rows, every status),
``errors`` (status ``error``), ``rejected`` (refused before routing), ``cancelled`` (``client_cancelled``),
``interrupted`` (the process died mid-request), tokens by kind, ``cost_usd`` (the ledger's ``cost_usd``, estimates
included), ``estimated_usd`` (the part of it booked at tierwise's pre-call estimate, ``cost_breakdown.estimated``
of the rows in :data:`ESTIMATE_STATUSES`: calls cut off in flight by a hang-up or a crash, which the upstream may or
may not have billed) and ``estimated_requests`` (rows with such a part). :attr:`SpendRow.estimated_share` is
``estimated_usd / cost_usd``.

Cost: one pass over the window's rows (the ``ts`` index bounds it) and a sort for the ``GROUP BY`` (SQLite has no
hash aggregate); the totals are the sum of the groups, except when grouping by every tag pair, where a second query
reads them (both in one snapshot). ``bench/spend_query.py`` times it on a million rows.

Margin: ``revenue_usd`` sums the rows' revenue (the principal's ``revenue_per_request_usd``, booked on answered
requests only: see :class:`tierwise.types.LedgerRecord`) and ``margin_usd`` is ``revenue_usd − cost_usd`` — for
callers with no revenue configured, that is minus their cost.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import date, timedelta
from typing import Any

from tierwise.ledger.window import ts_window

#: ``--by`` keys: name -> ledger column (None: computed from ``ts`` or ``tags``).
SPEND_KEYS: dict[str, str | None] = {
    "customer": "customer",
    "department": "department",
    "project": "project",
    "tag": None,
    "tier": "tier",
    "model": "model",
    "principal": "principal",
    "key": "key_id",
    "day": None,
    "month": None,
}

#: Per-group metrics, in output order (the CSV/JSON column names).
METRICS: tuple[str, ...] = (
    "requests", "errors", "rejected", "cancelled", "interrupted",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
    "cost_usd", "estimated_usd", "estimated_requests", "revenue_usd", "margin_usd",
)

#: The only statuses whose cost tierwise books at its pre-call estimate (``cost_breakdown.estimated``): a client
#: hang-up while a call was in flight (``Tierwise._book_cancelled``) and a crash mid-request (the journal's
#: ``_interrupted``). Reading that JSON field only on these rows keeps it off the other 98% of a scan (it would
#: double the query's time); a new place that books estimates must use one of these statuses or extend this.
ESTIMATE_STATUSES = ("client_cancelled", "interrupted")

#: Count metrics of rows by status, and the token metrics (ledger columns of the same name).
STATUS_COUNTS = {"errors": "error", "rejected": "rejected", "cancelled": "client_cancelled",
                  "interrupted": "interrupted"}
TOKEN_METRICS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


class SpendQueryError(ValueError):
    """A spend query that cannot be run as asked (unknown key, ``tag_key`` without ``tag``, …)."""


@dataclass(frozen=True, slots=True)
class SpendQuery:
    """Group rows with ``since <= ts < until`` (either bound optional) by ``by``; see the module docstring."""

    by: tuple[str, ...]
    since: float | None = None
    until: float | None = None
    tag_key: str | None = None  # with 'tag' in ``by``: group by this tag's value instead of every key=value pair

    def __post_init__(self) -> None:
        if isinstance(self.by, str):
            object.__setattr__(self, "by", (self.by,))
        if not self.by:
            raise SpendQueryError("group by at least one key")
        unknown = [k for k in self.by if k not in SPEND_KEYS]
        if unknown:
            raise SpendQueryError(f"unknown grouping key {unknown[0]!r} (use {', '.join(SPEND_KEYS)})")
        if len(set(self.by)) != len(self.by):
            raise SpendQueryError("a grouping key is given twice")
        if self.tag_key is not None and "tag" not in self.by:
            raise SpendQueryError("a tag key only makes sense when grouping by tag (--by tag --tag KEY)")
        if self.tag_key == "":
            raise SpendQueryError("the tag key must not be empty")
        if self.since is not None and self.until is not None and self.until < self.since:
            raise SpendQueryError("the window ends before it starts (--until is before --since)")

    @property
    def partitions(self) -> bool:
        """True when every row is in exactly one group (all groupings but every tag pair): the groups then add up
        to the totals."""
        return "tag" not in self.by or self.tag_key is not None


@dataclass(slots=True)
class SpendRow:
    """One group's sums (``group``: one value per key of the query's ``by``; ``()`` for the total)."""

    group: tuple[str | None, ...] = ()
    requests: int = 0
    errors: int = 0
    rejected: int = 0
    cancelled: int = 0
    interrupted: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    estimated_usd: float = 0.0
    estimated_requests: int = 0
    revenue_usd: float = 0.0
    margin_usd: float = 0.0

    @property
    def estimated_share(self) -> float:
        """The share of ``cost_usd`` booked at estimates (0 when nothing was spent)."""
        return self.estimated_usd / self.cost_usd if self.cost_usd > 0 else 0.0

    def metrics(self) -> dict[str, int | float]:
        return {name: getattr(self, name) for name in METRICS}

    @classmethod
    def from_values(cls, group: tuple[Any, ...], values: Iterable[Any]) -> SpendRow:
        """From the metric values in :data:`METRICS` order, as the SQL queries return them (None: nothing)."""
        row = cls(tuple(None if g is None else str(g) for g in group))
        for name, value in zip(METRICS, values, strict=True):
            if value is not None:
                setattr(row, name, float(value) if name.endswith("_usd") else int(value))
        return row


@dataclass(slots=True)
class SpendReport:
    """The groups of a spend query (ordered: chronologically when grouped by day or month, else by cost, highest
    first) and the window's totals, both read from one snapshot of the ledger."""

    query: SpendQuery
    groups: list[SpendRow] = field(default_factory=list)
    total: SpendRow = field(default_factory=SpendRow)


def total_of(groups: Iterable[SpendRow]) -> SpendRow:
    """The sum of groups that partition the rows (see :attr:`SpendQuery.partitions`)."""
    total = SpendRow()
    for g in groups:
        for name in METRICS:
            setattr(total, name, getattr(total, name) + getattr(g, name))
    return total


def _null_last(value: str | None) -> tuple[bool, str]:
    return value is None, value or ""


def ordered(query: SpendQuery, groups: list[SpendRow]) -> list[SpendRow]:
    """Groups in report order: by their keys when one is a day or month, else by cost (highest first), then keys."""
    if "day" in query.by or "month" in query.by:
        return sorted(groups, key=lambda g: [_null_last(v) for v in g.group])
    return sorted(groups, key=lambda g: (-g.cost_usd, [_null_last(v) for v in g.group]))


_EPOCH_DAY = date(1970, 1, 1)


def day_name(day_number: int) -> str:
    """``2026-11-25`` for a UTC day counted from 1970-01-01 (what the SQL groups days by)."""
    return (_EPOCH_DAY + timedelta(days=int(day_number))).isoformat()


def named_groups(query: SpendQuery, rows: Iterable[tuple[Any, ...]]) -> list[SpendRow]:
    """SQL result rows (the group values, then the metrics) as :class:`SpendRow`, day numbers named."""
    n = len(query.by)
    day = query.by.index("day") if "day" in query.by else -1
    out = []
    for t in rows:
        group = list(t[:n])
        if day >= 0 and group[day] is not None:
            group[day] = day_name(group[day])
        out.append(SpendRow.from_values(tuple(group), t[n:]))
    return out


def utc_day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def utc_month(ts: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(ts))


# -- SQLite ------------------------------------------------------------------------------------------------------

_ESTIMATED = (f"CASE WHEN status IN ({', '.join(repr(s) for s in ESTIMATE_STATUSES)}) "
              "THEN json_extract(cost_breakdown, '$.estimated') END")
_SQLITE_METRICS = ", ".join([
    "count(*)",
    *(f"coalesce(sum(status = '{status}'), 0)" for status in STATUS_COUNTS.values()),
    *(f"coalesce(sum({name}), 0)" for name in TOKEN_METRICS),
    "total(cost_usd)",
    f"total({_ESTIMATED})",
    f"coalesce(sum({_ESTIMATED} > 0), 0)",
    "total(revenue_usd)",
    "total(revenue_usd) - total(cost_usd)",
])


def sqlite_spend(conn: sqlite3.Connection, query: SpendQuery) -> SpendReport:
    """Run ``query`` on an SQLite ledger connection (the ``requests`` table): one ``GROUP BY``; when the groups do
    not partition the rows, the totals too, in the same read transaction (one snapshot, even while a writer
    appends)."""
    where, args = ts_window(query.since, query.until)
    where_sql = f" WHERE {' AND '.join(where)}" if where else ""
    exprs, group_args, join = [], [], ""
    for key in query.by:
        if key == "day":
            exprs.append("CAST(ts AS INTEGER) / 86400")  # the UTC day number, floored: see the module docstring
        elif key == "month":
            exprs.append("strftime('%Y-%m', CAST(ts AS INTEGER), 'unixepoch')")
        elif key == "tag" and query.tag_key is not None:
            exprs.append("(SELECT t.value FROM json_each(requests.tags) AS t WHERE t.key = ?)")
            group_args.append(query.tag_key)
        elif key == "tag":
            join = " LEFT JOIN json_each(requests.tags) AS t"
            exprs.append("t.key || '=' || t.value")
        else:
            exprs.append(str(SPEND_KEYS[key]))
    positions = ", ".join(str(i + 1) for i in range(len(exprs)))
    grouped = (f"SELECT {', '.join(exprs)}, {_SQLITE_METRICS} FROM requests{join}{where_sql} "
               f"GROUP BY {positions}")
    totals = f"SELECT {_SQLITE_METRICS} FROM requests{where_sql}"
    conn.execute("BEGIN")
    try:
        got = conn.execute(grouped, [*group_args, *args]).fetchall()
        total = None if query.partitions else conn.execute(totals, args).fetchone()
    finally:
        conn.execute("COMMIT")
    groups = named_groups(query, got)
    return SpendReport(query, ordered(query, groups),
                       total_of(groups) if total is None else SpendRow.from_values((), total))


# -- in Python (the memory store) --------------------------------------------------------------------------------

def _group_values(row: dict[str, Any], query: SpendQuery) -> list[tuple[str | None, ...]]:
    """The groups ``row`` belongs to (more than one only when grouping by every tag pair)."""
    combos: list[tuple[str | None, ...]] = [()]
    for key in query.by:
        if key == "day":
            values: list[str | None] = [utc_day(float(row["ts"]))]
        elif key == "month":
            values = [utc_month(float(row["ts"]))]
        elif key == "tag":
            tags = row.get("tags") or {}
            if query.tag_key is not None:
                v = tags.get(query.tag_key)
                values = [None if v is None else str(v)]
            else:
                values = [f"{k}={v}" for k, v in tags.items()] or [None]
        else:
            v = row.get(str(SPEND_KEYS[key]))
            values = [None if v is None else str(v)]
        combos = [(*c, v) for c in combos for v in values]
    return combos


def _add(acc: SpendRow, row: dict[str, Any]) -> None:
    acc.requests += 1
    status = row.get("status")
    for name, value in STATUS_COUNTS.items():
        if status == value:
            setattr(acc, name, getattr(acc, name) + 1)
    for name in TOKEN_METRICS:
        setattr(acc, name, getattr(acc, name) + int(row.get(name) or 0))
    acc.cost_usd += float(row.get("cost_usd") or 0.0)
    estimated = float((row.get("cost_breakdown") or {}).get("estimated") or 0.0) if status in ESTIMATE_STATUSES \
        else 0.0
    acc.estimated_usd += estimated
    acc.estimated_requests += estimated > 0
    revenue = float(row.get("revenue_usd") or 0.0)
    acc.revenue_usd += revenue
    acc.margin_usd += revenue - float(row.get("cost_usd") or 0.0)


def memory_spend(rows: Iterable[dict[str, Any]], query: SpendQuery) -> SpendReport:
    """``query`` over ``rows`` (already limited to the window) in Python: for the memory store only."""
    groups: dict[tuple[str | None, ...], SpendRow] = {}
    total = SpendRow()
    for row in rows:
        _add(total, row)
        for g in _group_values(row, query):
            acc = groups.get(g)
            if acc is None:
                acc = groups[g] = SpendRow(g)
            _add(acc, row)
    return SpendReport(query, ordered(query, list(groups.values())), total)


assert [f.name for f in fields(SpendRow)][1:] == list(METRICS)
