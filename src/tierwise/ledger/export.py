"""Ledger rows out to files and terminals: CSV for spreadsheets, JSON Lines for tools, a table for humans.

CSV is for a finance spreadsheet, so each attempt list is squeezed into ``model:outcome;model:outcome`` (the
detail is in JSONL); JSONL is lossless, one ``as_row()`` dict per line. Both use the store's column order, so a
file's columns never change between runs or backends.

Ledger fields hold client-supplied text (model names, X-Task and session headers, error messages), so every format
is made safe to open where it is meant to be read:

- CSV (spreadsheets, terminals): control characters are neutralised — tab, CR and LF become a space (one record per
  line), every other C0/C1 control, DEL, lone surrogate, Unicode bidi override/isolate and line/paragraph separator
  becomes U+FFFD (U+009B alone is a terminal escape sequence; bidi controls reorder what a reader sees) — and a text
  cell starting with ``=``, ``+``, ``-`` or ``@`` (or their full-width forms) gets a leading ``'`` so a spreadsheet
  shows it as text instead of evaluating it as a formula (the usual CSV-injection defence). Numbers stay numbers.
  CSV is the lossy, human view; use JSONL for the exact values.
- JSONL stays exact: JSON escapes C0 controls, and the characters JSON may leave raw that a terminal or an editor
  acts on (DEL, C1 controls, bidi controls, U+2028/U+2029) are written as ``\\uXXXX`` escapes, which decode to the
  very same string.
- The ``tail`` table neutralises control characters like CSV (without the formula prefix).
"""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Iterable
from typing import Any, Literal, TextIO

import orjson

from tierwise.ledger.store import COLUMN_NAMES, JSON_COLUMNS, LedgerStore, Row

# Characters a terminal, an editor or a spreadsheet may act on instead of showing: C0 controls, DEL, C1 controls,
# U+2028/U+2029, bidi embeddings/overrides/isolates, and lone surrogates (which no UTF-8 file can hold).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# What JSON leaves raw among those (orjson escapes C0 itself; surrogates cannot be serialised at all).
_JSON_RAW = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_FORMULA_START = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def _neutral(m: re.Match[str]) -> str:
    return " " if m.group() in "\t\r\n" else "\ufffd"


def safe_text(value: str) -> str:
    """``value`` with every control character a terminal or spreadsheet could act on made inert (see module doc)."""
    return _UNSAFE.sub(_neutral, value) if _UNSAFE.search(value) is not None else value


def csv_text(value: str) -> str:
    """A text cell safe for a spreadsheet: :func:`safe_text`, and a formula-like start prefixed with ``'``."""
    value = safe_text(value)
    return "'" + value if value.startswith(_FORMULA_START) else value


def json_line(row: Row) -> str:
    """One JSONL line of ``row``, exact (decodes to the same values) and with no raw character a terminal acts on."""
    text = orjson.dumps({name: row.get(name) for name in COLUMN_NAMES}, default=str).decode()
    if _JSON_RAW.search(text) is not None:  # only inside strings, where the escape means the same character
        text = _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text


def flatten_attempts(attempts: Iterable[dict[str, Any]] | None) -> str:
    """``model:outcome;model:outcome`` — what a spreadsheet cell can show of a fallback chain."""
    return ";".join(f"{a.get('model', '?')}:{a.get('outcome', '?')}" for a in attempts or ())


def csv_cells(row: Row) -> list[str | int | float]:
    """One CSV line's cells: empty for null, true/false for bools, JSON for nested fields, text made safe
    (:func:`csv_text`)."""
    cells: list[str | int | float] = []
    for name in COLUMN_NAMES:
        value = row.get(name)
        if name == "attempts":
            cells.append(csv_text(flatten_attempts(value)))
        elif name in JSON_COLUMNS:
            cells.append(csv_text(orjson.dumps(value, default=str).decode()))
        elif value is None:
            cells.append("")
        elif isinstance(value, bool):
            cells.append("true" if value else "false")
        elif isinstance(value, int | float):
            cells.append(value)
        else:
            cells.append(csv_text(str(value)))
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
            out.write(json_line(row))
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
    text = safe_text(text)  # a terminal must not act on a client-supplied escape sequence
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
