"""Rendering the rollout reports as a terminal table, JSON or CSV, and writing them atomically."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from tierwise.fsutil import atomic_write


def when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:,.2f}" if abs(value) >= 100 else f"${value:.6f}".rstrip("0").rstrip(".") if value else "$0"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned table (first column left, the rest right)."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for n, r in enumerate(cells):
        out.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def csv_text(records: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if records:
        keys = list(dict.fromkeys(k for r in records for k in r))
        w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow(r)
    return buf.getvalue()


def json_text(doc: Any) -> str:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n"


def emit(text: str, output: str | None) -> None:
    """Print ``text``, or write it to ``output`` atomically (a reader never sees half a report)."""
    if output and output != "-":
        atomic_write(output, text.encode())
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
