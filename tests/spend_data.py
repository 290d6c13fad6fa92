"""A varied synthetic ledger for the spend tests, and an independent reference for what spend must return."""

from __future__ import annotations

import calendar
import random
import time
from collections import defaultdict
from typing import Any

from tierwise.types import Attempt, Cost, LedgerRecord, Usage

MIDNIGHT = calendar.timegm((2026, 11, 30, 0, 0, 0))  # 2026-11-30T00:00Z; the month ends a day later
MONTH_END = calendar.timegm((2026, 12, 1, 0, 0, 0))

METRIC_NAMES = ("requests", "errors", "rejected", "cancelled", "interrupted", "input_tokens", "output_tokens",
                "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "cost_usd", "estimated_usd",
                "estimated_requests", "revenue_usd", "margin_usd")


def ledger_rows(n: int = 400, seed: int = 7) -> list[dict[str, Any]]:
    """Rows over three days around a month's end, every status, some without attribution, 0-3 tags each, and rows
    a hair before and exactly at UTC midnights (the day-bucket edges)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ts = MIDNIGHT - 86400 + rng.random() * 3 * 86400
        if i % 50 == 0:
            ts = MONTH_END - 0.0004  # 0.4 ms before the month ends: still November, in every backend
        elif i % 50 == 1:
            ts = float(MONTH_END)  # exactly midnight: December
        status = rng.choice(["ok"] * 6 + ["error", "rejected", "client_cancelled", "interrupted"])
        usage = Usage(rng.randint(0, 5000), rng.randint(0, 900), rng.randint(0, 300), rng.randint(0, 50),
                      rng.randint(0, 100))
        cost = Cost(rng.random() / 100, rng.random() / 50, rng.random() / 1000, 0.0, rng.random() / 5000)
        if status in ("client_cancelled", "interrupted") and rng.random() < 0.7:
            cost = Cost(estimated_usd=rng.random() / 20)  # booked at the pre-call estimate
        if status == "rejected":
            usage, cost = Usage(), Cost()
        tags = {}
        for key in rng.sample(["team", "feature", "env"], rng.randint(0, 3)):
            tags[key] = rng.choice({"team": ["search", "ads", "x=y, z"], "feature": ["summarise", "chat"],
                                    "env": ["prod", "dev"]}[key])
        rec = LedgerRecord(
            id=f"r-{i:05d}", ts=ts, principal=rng.choice(["team-a", "team-b", "anonymous"]),
            tier=rng.choice(["chat", "code", None]), model=rng.choice(["small", "large", None]),
            attempts=[Attempt("small", "ok", usage=usage, cost_usd=cost.total_usd)], usage=usage, cost=cost,
            status=status, http_status=200,
            key_id=rng.choice(["k1", "k2", None]), customer=rng.choice(["acme", "globex", "=cmd|' /C calc'!A0", None]),
            department=rng.choice(["search", "ads", None]), project=rng.choice(["p1", "p2", "p3", None]), tags=tags,
            revenue_usd=rng.choice([0.02, 0.005, None]) if status == "ok" else None)
        rows.append(rec.as_row())
    return rows


def reference(rows: list[dict[str, Any]], by: tuple[str, ...], since: float | None = None,
              until: float | None = None, tag_key: str | None = None) -> tuple[dict, dict]:
    """(groups, total) computed plainly from the rows: what any store's spend must equal."""
    col = {"key": "key_id"}

    def values(row: dict, key: str) -> list:
        if key == "day":
            return [time.strftime("%Y-%m-%d", time.gmtime(int(row["ts"])))]
        if key == "month":
            return [time.strftime("%Y-%m", time.gmtime(int(row["ts"])))]
        if key == "tag":
            if tag_key is not None:
                return [row["tags"].get(tag_key)]
            return [f"{k}={v}" for k, v in row["tags"].items()] or [None]
        return [row[col.get(key, key)]]

    def add(acc: dict, row: dict) -> None:
        est = row["cost_breakdown"]["estimated"]
        acc["requests"] += 1
        acc["errors"] += row["status"] == "error"
        acc["rejected"] += row["status"] == "rejected"
        acc["cancelled"] += row["status"] == "client_cancelled"
        acc["interrupted"] += row["status"] == "interrupted"
        for t in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens"):
            acc[t] += row[t]
        acc["cost_usd"] += row["cost_usd"]
        acc["estimated_usd"] += est
        acc["estimated_requests"] += est > 0
        acc["revenue_usd"] += row["revenue_usd"] or 0.0
        acc["margin_usd"] += (row["revenue_usd"] or 0.0) - row["cost_usd"]

    groups: dict = defaultdict(lambda: dict.fromkeys(METRIC_NAMES, 0))
    total = dict.fromkeys(METRIC_NAMES, 0)
    for row in rows:
        if (since is not None and row["ts"] < since) or (until is not None and row["ts"] >= until):
            continue
        add(total, row)
        combos: list[tuple] = [()]
        for key in by:
            combos = [(*c, v) for c in combos for v in values(row, key)]
        for g in combos:
            add(groups[g], row)
    return dict(groups), total
