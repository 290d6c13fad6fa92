"""Ledger rows out to files and terminals: CSV for spreadsheets, JSON Lines for tools, a table for humans.

CSV is for a finance spreadsheet, so each attempt list is squeezed into ``model:outcome;model:outcome`` (the
detail is in JSONL); JSONL is lossless, one ``as_row()`` dict per line. Both use the store's column order, so a
file's columns never change between runs or backends.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterable
from typing import Any, Literal, TextIO

import orjson

from tierwise.ledger.store import COLUMN_NAMES, JSON_COLUMNS, LedgerStore, Row


def flatten_attempts(attempts: Iterable[dict[str, Any]] | None) -> str:
    """``model:outcome;model:outcome`` — what a spreadsheet cell can show of a fallback chain."""
    return ";".join(f"{a.get('model', '?')}:{a.get('outcome', '?')}" for a in attempts or ())


def csv_cells(row: Row) -> list[str | int | float]:
    """One CSV line's cells: empty for null, true/false for bools, JSON for nested fields."""
    cells: list[str | int | float] = []
    for name in COLUMN_NAMES:
        value = row.get(name)
        if name == "attempts":
            cells.append(flatten_attempts(value))
        elif name in JSON_COLUMNS:
            cells.append(orjson.dumps(value, default=str).decode())
        elif value is None:
            cells.append("")
        elif isinstance(value, bool):
            cells.append("true" if value else "false")
        else:
            cells.append(value)
    return cells


def export_rows(
    store: LedgerStore,
    fmt: Literal["csv", "jsonl"],
    out: TextIO,
    since: float | None = None,
    until: float | None = None,
) -> int:
    """Write the rows with ``since <= ts < until`` to ``out`` in ``fmt``; returns how many were written."""
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"unknown export format {fmt!r} (use 'csv' or 'jsonl')")
    n = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMN_NAMES)
        for row in store.iter_rows(since, until):
            writer.writerow(csv_cells(row))
            n += 1
    else:
        for row in store.iter_rows(since, until):
            out.write(orjson.dumps({name: row.get(name) for name in COLUMN_NAMES}, default=str).decode())
            out.write("\n")
            n += 1
    return n


# -- the human view -----------------------------------------------------------------------------------------

# (header, max width, right-aligned)
_TAIL_COLUMNS: tuple[tuple[str, int, bool], ...] = (
    ("time (UTC)", 19, False),
    ("id", 14, False),
    ("principal", 14, False),
    ("tier(source)", 22, False),
    ("model", 28, False),
    ("status", 16, False),
    ("in/out/cached", 20, True),
    ("cost $", 11, True),
    ("ttft", 8, True),
    ("latency", 8, True),
    ("fb", 3, True),
)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}ms" if value < 10_000 else f"{value / 1000:.1f}s"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _tail_cells(row: Row) -> list[str]:
    ts = row.get("ts")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts is not None else "-"
    tier = row.get("tier") or "-"
    if row.get("tier_source"):
        tier = f"{tier}({row['tier_source']})"
    status = str(row.get("status") or "-")
    if row.get("http_status") not in (None, 200):
        status = f"{status} {row['http_status']}"
    tokens = f"{row.get('input_tokens', 0)}/{row.get('output_tokens', 0)}/{row.get('cache_read_tokens', 0)}"
    cost = row.get("cost_usd")
    return [
        when,
        str(row.get("id") or "-"),
        str(row.get("principal") or "-"),
        tier,
        str(row.get("model") or "-"),
        status,
        tokens,
        f"{cost:.6f}" if cost is not None else "-",
        _ms(row.get("ttft_ms")),
        _ms(row.get("latency_ms")),
        str(row.get("fallbacks", 0)),
    ]


def format_tail(rows: Iterable[Row]) -> str:
    """A fixed-width table of ``rows`` for ``tierwise ledger tail`` (one line per request, header first).

    Columns are as wide as their widest cell up to a cap, over-long values end in ``…``, numbers are
    right-aligned; ``cached`` is cache-read tokens, ``fb`` the number of fallbacks.
    """
    lines = [[_clip(cell, cap) for cell, (_, cap, _) in zip(_tail_cells(r), _TAIL_COLUMNS, strict=True)] for r in rows]
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, (h, _, _) in enumerate(_TAIL_COLUMNS)]

    def render(cells: list[str]) -> str:
        parts = [
            cell.rjust(w) if right else cell.ljust(w)
            for cell, w, (_, _, right) in zip(cells, widths, _TAIL_COLUMNS, strict=True)
        ]
        return "  ".join(parts).rstrip()

    header = render([h for h, _, _ in _TAIL_COLUMNS])
    return "\n".join([header, *(render(line) for line in lines)]) + "\n"
