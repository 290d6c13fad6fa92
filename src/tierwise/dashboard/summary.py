"""The dashboard's answer: the SQL aggregates of :mod:`tierwise.dashboard.sql` shaped into the panels' JSON.

Only small results reach Python (a few hundred groups at most); the work here is arithmetic on them: rates,
shares, percentiles read off the latency histograms, the flagship counterfactual (linear in the token sums, so
pricing the sums is pricing every row), and the ledger's side of the budget panel (:func:`build_budgets`; the
panel itself is :mod:`tierwise.dashboard.budgets`).
"""

from __future__ import annotations

import calendar
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tierwise.config.schema import BudgetCap, TierwiseConfig
from tierwise.cost.prices import ResolvedPrice
from tierwise.dashboard import sql
from tierwise.dashboard.query import DashboardQuery
from tierwise.rollout.pricefile import flagship_of as report_flagship
from tierwise.rollout.pricefile import usage_cost
from tierwise.state.backend import Usage as StateUsage

PERCENTILES = (50, 90, 95, 99)
NONE_LABEL = "(none)"
COUNTERFACTUAL_METHOD = (
    "Counterfactual (as `tierwise report` computes it): the tokens of every answer served (for an escalated cascade, "
    "its last rung's call, not the sum of its rungs) priced at the flagship's per-token prices; savings = "
    "counterfactual − actual spend of the same requests. The flagship's tokenizer and answer lengths would differ, "
    "so this is an estimate; it compares the same requests on two price lists, not spend before and after.")


def flagship_of(cfg: TierwiseConfig, prices: Mapping[str, ResolvedPrice]) -> str | None:
    """``dashboard.flagship``, else the priced model with the highest blended price (the one ``tierwise report``
    calls the flagship)."""
    if cfg.dashboard.flagship and cfg.dashboard.flagship in prices:
        return cfg.dashboard.flagship
    if not prices:
        return None
    return report_flagship(dict(prices))


def _label(value: Any) -> str:
    return NONE_LABEL if value is None else str(value)


def _rate(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def percentiles(buckets: Iterable[tuple[Any, ...]]) -> dict[str, float | int | None]:
    """Nearest-rank percentiles from (log bucket, count) pairs: each bucket stands for its geometric middle."""
    counts = sorted((int(b), int(n)) for b, n in buckets if b is not None)
    total = sum(n for _, n in counts)
    out: dict[str, float | int | None] = {"count": total}
    for p in PERCENTILES:
        if not total:
            out[f"p{p}"] = None
            continue
        rank = max(1, math.ceil(p / 100 * total))
        seen = 0
        for b, n in counts:
            seen += n
            if seen >= rank:
                out[f"p{p}"] = round(math.exp((b + 0.5) * sql.LOG_STEP), 2)
                break
    return out


def _routes(rows: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [{"bucket": r[0], "tier": r[1], "model": r[2], "tier_source": r[3],
             **dict(zip(sql.ROUTE_METRICS, r[4:], strict=True))} for r in rows]


def _sum(groups: Iterable[dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    acc: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for g in groups:
        for m in sql.ROUTE_METRICS:
            acc[_label(g[key])][m] += g[m]
    return acc


def _totals(groups: list[dict[str, Any]]) -> dict[str, Any]:
    t: dict[str, Any] = {m: 0 for m in sql.ROUTE_METRICS}
    for g in groups:
        for m in sql.ROUTE_METRICS:
            t[m] += g[m]
    t["cost_usd"] = float(t["cost_usd"])
    t["error_rate"] = _rate(t["errors"], t["requests"])
    t["fallback_rate"] = _rate(t["fell_back"], t["requests"])
    t["escalation_rate"] = _rate(t["escalated"], t["requests"])
    return t


def _distribution(acc: Mapping[str, Mapping[str, float]], total: float, name: str) -> list[dict[str, Any]]:
    out = [{name: k, "requests": int(v["requests"]), "cost_usd": float(v["cost_usd"]),
            "share": _rate(v["requests"], total)} for k, v in acc.items()]
    return sorted(out, key=lambda d: (-d["requests"], d[name]))


def _per_tier(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for tier, v in _sum(groups, "tier").items():
        n = v["requests"]
        out.append({"tier": tier, "requests": int(n), "escalated": int(v["escalated"]),
                    "escalation_rate": _rate(v["escalated"], n), "fell_back": int(v["fell_back"]),
                    "fallback_rate": _rate(v["fell_back"], n), "errors": int(v["errors"]),
                    "error_rate": _rate(v["errors"], n), "cost_usd": float(v["cost_usd"])})
    return sorted(out, key=lambda d: (-d["requests"], d["tier"]))


def _savings(totals: Mapping[str, Any], flagship: str | None, price: ResolvedPrice | None) -> dict[str, Any]:
    if flagship is None or price is None:
        return {"flagship": None, "method": COUNTERFACTUAL_METHOD}
    cf = usage_cost(price, *(int(totals[f"served_{t}"]) for t in sql.TOKENS))
    actual = float(totals["cost_usd"])
    return {"flagship": flagship, "counterfactual_usd": cf, "actual_usd": actual, "savings_usd": cf - actual,
            "savings_pct": _rate(cf - actual, cf) * 100 if cf else None,
            "price_per_million": {"input": price.input, "output": price.output, "cache_read": price.cache_read,
                                  "cache_write": price.cache_write},
            "method": COUNTERFACTUAL_METHOD}


def _timeline(groups: list[dict[str, Any]], q: DashboardQuery) -> dict[str, Any]:
    n = max(1, math.ceil((q.until - q.since) / q.step))
    by_model: dict[str, list[float]] = defaultdict(lambda: [0.0] * n)
    by_tier: dict[str, list[float]] = defaultdict(lambda: [0.0] * n)
    requests = [0] * n
    for g in groups:
        i = min(max(int(g["bucket"]), 0), n - 1)
        by_model[_label(g["model"])][i] += float(g["cost_usd"])
        by_tier[_label(g["tier"])][i] += float(g["cost_usd"])
        requests[i] += int(g["requests"])
    return {"step_s": q.step, "starts": [q.since + i * q.step for i in range(n)], "requests": requests,
            "by_model": dict(by_model), "by_tier": dict(by_tier)}


def _allocation(rows: Sequence[tuple[Any, ...]], column: int, total_requests: int,
                total_cost: float) -> dict[str, Any]:
    """The top members of one column (0 principal, 1 customer, 2 department) by cost, and the rest as "other"."""
    acc: dict[Any, list[float]] = defaultdict(lambda: [0, 0.0])
    for r in rows:
        a = acc[r[column]]
        a[0] += int(r[3])
        a[1] += float(r[4])
    ranked = sorted(acc.items(), key=lambda kv: (-kv[1][1], -kv[1][0], _label(kv[0])))[:sql.ALLOCATION_TOP]
    top = [{"name": _label(k), "requests": int(v[0]), "cost_usd": v[1]} for k, v in ranked]
    rest_n = total_requests - sum(int(v[0]) for _, v in ranked)
    rest_c = total_cost - sum(v[1] for _, v in ranked)
    return {"top": top, "other": {"requests": rest_n, "cost_usd": max(rest_c, 0.0)} if rest_n > 0 else None}


def build_summary(s: sql.Session, q: DashboardQuery, cfg: TierwiseConfig,
                  prices: Mapping[str, ResolvedPrice]) -> dict[str, Any]:
    """Every panel but the budgets and anomalies, from one read transaction (``s``)."""
    sql.plan(s, q)
    groups = _routes(sql.routes(s, q))
    totals = _totals(groups)
    flagship = flagship_of(cfg, prices)
    members = sql.allocation(s, q)
    alloc = {c: _allocation(members, i, int(totals["requests"]), totals["cost_usd"])
             for i, c in enumerate(sql.ALLOCATION_COLUMNS)}
    hist = sql.histograms(s, q)
    return {
        "object": "dashboard.summary",
        "filters": q.filters(),
        "window": {"since": q.since, "until": q.until, "step_s": q.step},
        "empty": totals["requests"] == 0,
        "totals": totals,
        "timeline": _timeline(groups, q),
        "routing": {
            "tiers": _distribution(_sum(groups, "tier"), totals["requests"], "tier"),
            "models": _distribution(_sum(groups, "model"), totals["requests"], "model"),
            "sources": _distribution(_sum(groups, "tier_source"), totals["requests"], "tier_source"),
        },
        "tiers": _per_tier(groups),
        "allocation": alloc,
        "savings": _savings(totals, flagship, prices.get(flagship) if flagship else None),
        "latency": {"latency_ms": percentiles((b, n) for k, b, n in hist if k == 0),
                    "ttft_ms": percentiles((b, n) for k, b, n in hist if k == 1),
                    "precision": "±2% (4% log buckets, answered requests only)"},
    }


def month_start(now: float) -> float:
    t = time.gmtime(now)
    return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))


def build_budgets(s: sql.Session, cfg: TierwiseConfig, now: float) -> list[tuple[str, BudgetCap, StateUsage]]:
    """Each configured cap (``budgets.caps``; ``kind:*`` for each member with spend this month) and its settled spend
    by the ledger: today, this month and this month's earlier days (``past_days``, for the projection), in the state
    backend's :class:`~tierwise.state.backend.Usage` shape (nothing reserved: the ledger knows no reservations).
    The budget panel (:mod:`tierwise.dashboard.budgets`) takes its list of budgets from here and their live
    consumption from the governance state. Independent of the page's filters."""
    caps = cfg.budgets.caps
    if not caps:
        return []
    start = month_start(now)
    today = int(now) // 86400
    sql.plan(s, DashboardQuery("month", start, now + 1, 86400))  # most of the month: a table scan in SQLite
    days_seen = sorted({int(d) for d, _, _ in sql.budget_days(s, start, None, None) if d is not None and
                        int(d) < today})
    out: list[tuple[str, BudgetCap, StateUsage]] = []
    for scope, cap in sorted(caps.items()):
        if cap.daily_usd is None and cap.monthly_usd is None:
            continue
        kind, _, name = scope.partition(":")
        if scope == "global":
            rows = sql.budget_days(s, start, None, None)
        elif kind in sql.BUDGET_COLUMNS:
            rows = sql.budget_days(s, start, kind, None if name == "*" else name)
        else:
            continue
        per_member: dict[Any, dict[int, float]] = defaultdict(dict)
        for d, member, cost in rows:
            per_member[member][int(d)] = float(cost)
        if name != "*" and not per_member:
            per_member[name if scope != "global" else None] = {}
        for member, days in per_member.items():
            label = scope if name != "*" else f"{kind}:{member}"
            if name == "*" and label in caps:
                continue  # a member with a cap of its own: that cap is listed under its own name
            month = sum(days.values())
            out.append((label, cap, StateUsage(daily_spent=days.get(today, 0.0), monthly_spent=month,
                                               past_days=tuple(days.get(d, 0.0) for d in days_seen))))
    return out
