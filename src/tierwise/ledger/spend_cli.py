"""``tierwise spend``: cost, requests, errors and tokens per customer, department, project, tag, tier, model,
principal, key, day or month over a window, as a table, CSV or JSON (for billing).

The sums come from the ledger store's own query (:mod:`tierwise.ledger.spend`: ``GROUP BY`` in SQLite or
PostgreSQL). Output columns are stable (scripts and billing import them):

- CSV: ``kind`` (``group``, or ``total`` on the last line), ``since``, ``until`` (the window, ISO-8601 UTC), one
  column per ``--by`` key (named after it; empty for records without a value), then :data:`~tierwise.ledger.spend.
  METRICS` and ``estimated_share``. Text cells are made safe for spreadsheets (:func:`tierwise.ledger.export.csv_text`).
- JSON: ``{"since", "until", "since_ts", "until_ts", "by", "tag", "columns", "groups": [{key..., metric...}],
  "total": {metric...}}`` (null for records without a value).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from tierwise.ledger.export import csv_text, safe_text
from tierwise.ledger.spend import METRICS, SPEND_KEYS, SpendQuery, SpendQueryError, SpendReport, SpendRow

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([mhdw])$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(value: str, now: float | None = None) -> float:
    """A point in time: unix seconds, ISO-8601 (a date or date and time; UTC unless it names an offset), a month
    ``YYYY-MM`` (its first day, UTC), ``now``, or a span back from now (``90m``, ``24h``, ``7d``, ``2w``)."""
    now = time.time() if now is None else now
    text = value.strip()
    if text == "now":
        return now
    m = _RELATIVE.match(text)
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    if re.fullmatch(r"\d{4}-\d{2}", text):
        text += "-01"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time: {value!r} (use ISO-8601 such as 2026-11-01 or 2026-11-25T10:00, a month "
                         "such as 2026-11, unix seconds, now, or a span back from now such as 7d or 24h)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _key_columns(report: SpendReport) -> list[str]:
    return list(report.query.by)


def _metric_cells(row: SpendRow) -> list[Any]:
    return [*row.metrics().values(), row.estimated_share]


def write_csv(report: SpendReport, out: TextIO) -> None:
    q = report.query
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["kind", "since", "until", *_key_columns(report), *METRICS, "estimated_share"])
    window = [iso(q.since) or "", iso(q.until) or ""]
    for g in report.groups:
        w.writerow(["group", *window, *("" if v is None else csv_text(v) for v in g.group), *_metric_cells(g)])
    w.writerow(["total", *window, *([""] * len(q.by)), *_metric_cells(report.total)])


def as_json(report: SpendReport) -> dict[str, Any]:
    q = report.query

    def obj(row: SpendRow, with_keys: bool) -> dict[str, Any]:
        d: dict[str, Any] = dict(zip(q.by, row.group, strict=True)) if with_keys else {}
        d.update(row.metrics())
        d["estimated_share"] = row.estimated_share
        return d

    return {
        "since": iso(q.since), "until": iso(q.until), "since_ts": q.since, "until_ts": q.until,
        "by": list(q.by), "tag": q.tag_key,
        "columns": [*q.by, *METRICS, "estimated_share"],
        "groups": [obj(g, True) for g in report.groups],
        "total": obj(report.total, False),
    }


def _clip(text: str, width: int) -> str:
    text = safe_text(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(report: SpendReport) -> str:
    """A table for a terminal: one line per group, the total last; revenue and margin columns when the window has
    revenue (principals with ``revenue_per_request_usd``)."""
    q = report.query
    margin = report.total.revenue_usd != 0
    heads = [*(f"tag:{q.tag_key}" if k == "tag" and q.tag_key else k for k in q.by),
             "requests", "errors", "input", "output", "cache rd", "cache wr", "cost $", "at estimate",
             *(["revenue $", "margin $"] if margin else [])]
    right = [False] * len(q.by) + [True] * (len(heads) - len(q.by))

    def cells(keys: list[str], row: SpendRow) -> list[str]:
        share = f"{row.estimated_share:.1%}" if row.estimated_usd else "-"
        return [*keys, f"{row.requests:,}", f"{row.errors:,}", f"{row.input_tokens:,}", f"{row.output_tokens:,}",
                f"{row.cache_read_tokens:,}", f"{row.cache_write_tokens:,}", f"{row.cost_usd:,.6f}", share,
                *([f"{row.revenue_usd:,.6f}", f"{row.margin_usd:,.6f}"] if margin else [])]

    lines = [cells([_clip("(none)" if v is None else v, 40) for v in g.group], g) for g in report.groups]
    total = cells(["TOTAL", *([""] * (len(q.by) - 1))], report.total)
    widths = [max(len(r[i]) for r in [heads, *lines, total]) for i in range(len(heads))]

    def render(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    title = f"spend {iso(q.since) or '(start)'} .. {iso(q.until) or '(now)'} by {', '.join(heads[:len(q.by)])}"
    note = ""
    if "tag" in q.by and not q.tag_key:
        note = "\n(a request with several tags is in several groups: the groups add up to more than the total)"
    return "\n".join([title, render(heads), rule, *(render(r) for r in lines), rule, render(total)]) + note + "\n"


def cmd_spend(args: argparse.Namespace) -> int:
    from tierwise.cli import _store

    now = time.time()
    try:
        since = parse_when(args.since, now)
        until = parse_when(args.until, now) if args.until else now
        query = SpendQuery(tuple(args.by), since, until, args.tag)
    except (ValueError, SpendQueryError) as exc:
        print(f"tierwise spend: {exc}", file=sys.stderr)
        return 2
    store = _store(args)
    try:
        report = store.spend(query)
    except Exception as exc:  # e.g. PostgreSQL gone: one line (the store's message has no password)
        print(f"tierwise spend: cannot read the ledger: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    out: TextIO
    with open(args.output, "w", encoding="utf-8", newline="") if args.output and args.output != "-" \
            else _Stdout() as out:
        if args.format == "csv":
            write_csv(report, out)
        elif args.format == "json":
            out.write(orjson.dumps(as_json(report), option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            out.write(format_table(report))
    return 0


class _Stdout:
    def __enter__(self) -> TextIO:
        return sys.stdout

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()


def add_parsers(sub: Any) -> None:
    """Register ``tierwise spend`` on the CLI's subparsers."""
    p = sub.add_parser(
        "spend", help="sum cost per customer, department, project, tag, tier, model, principal, key, day or month",
        description="Cost, requests, errors, tokens and the share booked at estimates per group over a window, "
                    "summed by the ledger's database. Times: ISO-8601 (UTC unless an offset is given), YYYY-MM, "
                    "unix seconds, now, or a span back from now (7d, 24h, 90m, 2w). Days and months are UTC.")
    p.add_argument("--config", "-c", default=os.environ.get("TIERWISE_CONFIG", "tierwise.yaml"),
                   help="path to tierwise.yaml (default: $TIERWISE_CONFIG or ./tierwise.yaml)")
    p.add_argument("--db", help="read this SQLite ledger file instead of the config's")
    p.add_argument("--by", action="append", required=True, choices=list(SPEND_KEYS),
                   help="group by this (repeat for one group per combination, e.g. --by customer --by model)")
    p.add_argument("--since", required=True, help="start of the window (inclusive)")
    p.add_argument("--until", help="end of the window (exclusive; default: now)")
    p.add_argument("--tag", metavar="KEY", help="with --by tag: group by this tag's value (default: every key=value)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--output", "-o", help="file (default: stdout)")
    p.set_defaults(fn=cmd_spend)
