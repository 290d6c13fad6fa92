"""``tierwise canary report NAME``: control against canary, with 95 % intervals, significance and sample sizes.

Per arm the ledger's database sums what the comparisons need (count, sum, sum of squares), in one ``GROUP BY arm``
over the ``(arm, ts)`` index; feedback scores (``POST /v1/feedback``, averaged per request over its sources; thumbs
count as 1 / 0) are joined by request id, streaming the arm of each row that has feedback. Metrics: cost per request
(USD), error rate, escalation rate (share of requests a cascade escalated at least once), latency and TTFT (ms, over
answered requests), quality (feedback score).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tierwise.config.schema import TierwiseConfig
from tierwise.rollout.candidate import arm_tag
from tierwise.rollout.stats import Comparison, compare_means, compare_proportions

# One row per arm; sums of squares for the Welch intervals. Rejected requests (never routed) carry no arm.
_AGG = (
    "SELECT arm, count(*), "
    "sum(cost_usd), sum(cost_usd * cost_usd), "
    "sum(CASE WHEN status IN ('error', 'interrupted') THEN 1 ELSE 0 END), "
    "sum(CASE WHEN escalations > 0 THEN 1 ELSE 0 END), "
    "sum(CASE WHEN status = 'ok' THEN 1 ELSE 0 END), "
    "sum(CASE WHEN status = 'ok' THEN latency_ms ELSE 0 END), "
    "sum(CASE WHEN status = 'ok' THEN latency_ms * latency_ms ELSE 0 END), "
    "sum(CASE WHEN ttft_ms IS NOT NULL THEN 1 ELSE 0 END), sum(ttft_ms), sum(ttft_ms * ttft_ms) "
    "FROM {table} WHERE arm IN ({p}, {p}) AND ts >= {p} AND ts < {p} GROUP BY arm"
)


@dataclass(slots=True)
class ArmTotals:
    n: int = 0
    cost: float = 0.0
    cost_sq: float = 0.0
    errors: int = 0
    escalated: int = 0
    ok: int = 0
    lat: float = 0.0
    lat_sq: float = 0.0
    ttft_n: int = 0
    ttft: float = 0.0
    ttft_sq: float = 0.0
    q_n: int = 0
    q: float = 0.0
    q_sq: float = 0.0


class CanaryReportError(Exception):
    """The report cannot be made (ledger backend, missing file); one line for the CLI."""


def _ledger_query(cfg: TierwiseConfig, sql_text: str, args: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
    """Run a read-only query on the ledger's database (SQLite file or PostgreSQL), streaming rows."""
    led = cfg.ledger
    if led.backend == "sqlite":
        from pathlib import Path

        if not Path(led.path).exists():
            raise CanaryReportError(f"ledger {led.path} does not exist")
        conn = sqlite3.connect(f"file:{led.path}?mode=ro", uri=True)
        try:
            lite = conn.execute(sql_text.format(table="requests", p="?"), args)
            while batch := lite.fetchmany(5000):
                yield from batch
        finally:
            conn.close()
    elif led.backend == "postgres":
        import psycopg

        assert led.dsn is not None
        table = f'"{led.pg_schema}".tierwise_ledger'
        with psycopg.connect(led.dsn, application_name="tierwise-canary-report") as pg, \
                pg.cursor(name="canary_report") as cur:  # server-side: rows are streamed
            cur.execute(sql_text.format(table=table, p="%s"), args)
            while batch := cur.fetchmany(5000):
                yield from batch
    else:
        raise CanaryReportError("the canary report reads a stored ledger (sqlite or postgres), not 'memory'")


def arm_totals(cfg: TierwiseConfig, name: str, since: float, until: float) -> dict[str, ArmTotals]:
    """Totals of each arm of canary ``name`` over [since, until), keyed 'control' / 'canary'."""
    arms = {arm_tag(name, False): "control", arm_tag(name, True): "canary"}
    out = {"control": ArmTotals(), "canary": ArmTotals()}
    for row in _ledger_query(cfg, _AGG, (*arms, since, until)):
        t = out[arms[row[0]]]
        (t.n, t.cost, t.cost_sq, t.errors, t.escalated, t.ok, t.lat, t.lat_sq, t.ttft_n, t.ttft, t.ttft_sq) = (
            int(row[1]), float(row[2] or 0), float(row[3] or 0), int(row[4] or 0), int(row[5] or 0),
            int(row[6] or 0), float(row[7] or 0), float(row[8] or 0), int(row[9] or 0), float(row[10] or 0),
            float(row[11] or 0))
    _add_feedback(cfg, arms, out, since, until)
    return out


def _add_feedback(cfg: TierwiseConfig, arms: dict[str, str], out: dict[str, ArmTotals], since: float,
                  until: float) -> None:
    """Mean feedback score per request, summed per arm (nothing when the rollout store has no feedback)."""
    from tierwise.rollout.capture import open_rollout_store

    try:
        store = open_rollout_store(cfg)
    except Exception:
        return  # no rollout store: the report says quality is not measured
    try:
        scores: dict[str, list[float]] = {}
        for fb in store.iter_feedback(since, None):  # feedback arrives after the request
            value = fb.score if fb.score is not None else (1.0 if fb.thumbs == 1 else 0.0 if fb.thumbs == -1 else None)
            if value is not None:
                scores.setdefault(fb.request_id, []).append(float(value))
    finally:
        store.close()
    if not scores:
        return
    sql_text = "SELECT id, arm FROM {table} WHERE arm IN ({p}, {p}) AND ts >= {p} AND ts < {p}"
    for rid, arm in _ledger_query(cfg, sql_text, (*arms, since, until)):
        got = scores.get(rid)
        if got:
            q = sum(got) / len(got)
            t = out[arms[arm]]
            t.q_n, t.q, t.q_sq = t.q_n + 1, t.q + q, t.q_sq + q * q


def compare(totals: dict[str, ArmTotals]) -> list[Comparison]:
    c, k = totals["control"], totals["canary"]
    return [
        compare_means("cost_per_request_usd", c.n, c.cost, c.cost_sq, k.n, k.cost, k.cost_sq),
        compare_proportions("error_rate", c.errors, c.n, k.errors, k.n),
        compare_proportions("escalation_rate", c.escalated, c.n, k.escalated, k.n),
        compare_means("latency_ms", c.ok, c.lat, c.lat_sq, k.ok, k.lat, k.lat_sq),
        compare_means("ttft_ms", c.ttft_n, c.ttft, c.ttft_sq, k.ttft_n, k.ttft, k.ttft_sq),
        compare_means("quality_score", c.q_n, c.q, c.q_sq, k.q_n, k.q, k.q_sq),
    ]


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.6g}"


def render(name: str, comps: list[Comparison], share: float | None, status: str | None) -> str:
    lines = [f"canary {name}: share {_fmt(share)} ({status or 'configured'}); 95 % intervals on canary - control"]
    lines.append(f"{'metric':22} {'control':>12} {'canary':>12} {'diff':>12} {'95% CI':>27}  {'verdict':15} "
                 "n/arm needed")
    for c in comps:
        ci = f"[{_fmt(c.low)}, {_fmt(c.high)}]" if c.low is not None else "-"
        verdict = "too few data" if c.diff is None else "significant" if c.significant else "not significant"
        need = "-" if c.n_needed is None or c.significant else str(c.n_needed)
        lines.append(f"{c.metric:22} {_fmt(c.control):>12} {_fmt(c.canary):>12} {_fmt(c.diff):>12} {ci:>27}  "
                     f"{verdict:15} {need}")
    n0, n1 = comps[0].n_control, comps[0].n_canary
    lines.append(f"requests: control {n0}, canary {n1}; quality from feedback on {comps[-1].n_control} / "
                 f"{comps[-1].n_canary} requests" + ("" if comps[-1].n_control + comps[-1].n_canary else
                                                      " (no feedback: quality not measured)"))
    return "\n".join(lines)


def canary_report_text(cfg: TierwiseConfig, name: str, since: float | None, until: float | None) -> str:
    """The canary comparison as text, for ``tierwise report --canary NAME`` (window default: all, up to now)."""
    import time

    from tierwise.rollout.arms_store import open_arms_store

    if cfg.canary is None or cfg.canary.name != name:
        raise CanaryReportError(f"no canary '{name}' in the config")
    store = open_arms_store(cfg.ledger)
    try:
        state = store.canary_state(name)
    finally:
        store.close()
    share, status = (state.share, state.status) if state else (cfg.canary.share, None)
    totals = arm_totals(cfg, name, since or 0.0, until if until is not None else time.time() + 1)
    return render(name, compare(totals), share, status)
