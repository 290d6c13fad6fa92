"""Charge the budgets for what a dead process's journal holds: the settlements that died with it.

A request's real cost reaches the shared budgets through its settlement, which a replica queues when the request
ends and sends a moment later. A replica killed in between leaves two kinds of requests whose cost the budgets
never saw: those in flight (their reservation expires and is *released*, never charged, yet the journal replay books
them as ``interrupted`` at their estimate, because the upstream may have billed them) and those that had ended but
whose settlement was still queued. Left alone, the budgets would then undercount the ledger by that much, and
spend could pass a cap by more than the reservations in flight when it was reached.

So whoever replays a dead process's journal — the gateway at start, or ``tierwise ledger recover`` — settles every
replayed row at the cost the ledger books for it. Settlements are idempotent per request id (the state backend
charges a reservation once, and keeps an expired reservation's record for a late settlement), so a row whose
settlement did arrive before the crash charges nothing twice; a request the backend never reserved anything for
(no budget governed it) charges nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from tierwise.config.schema import TierwiseConfig
from tierwise.state.backend import Settlement, StateBackend

log = logging.getLogger("tierwise.governance")

Row = dict[str, Any]


def settlements(rows: Iterable[Row]) -> list[Settlement]:
    """One settlement per replayed row that may hold a reservation (a request refused before routing holds none):
    its booked cost, its tokens and its cost per model (for model caps). An ``interrupted`` row has no attempts
    (its process died mid-call): its estimate is charged to the model it was planned to go to first, which the row
    names — the model it was most likely on (a fallback in progress would have been on a later one)."""
    out = []
    for row in rows:
        if row.get("status") == "rejected" or not isinstance(row.get("id"), str):
            continue
        per_model: dict[str, float] = {}
        for a in row.get("attempts") or ():
            if isinstance(a, dict) and isinstance(a.get("model"), str):
                per_model[a["model"]] = per_model.get(a["model"], 0.0) + float(a.get("cost_usd") or 0.0)
        if not per_model and row.get("status") == "interrupted" and isinstance(row.get("model"), str):
            per_model[row["model"]] = float(row.get("cost_usd") or 0.0)
        tokens = int(row.get("input_tokens") or 0) + int(row.get("output_tokens") or 0)
        out.append(Settlement(row["id"], float(row.get("cost_usd") or 0.0), tokens, per_model))
    return out


def charge_recovered(state: StateBackend, rows: Iterable[Row]) -> int:
    """Queue the settlements of ``rows`` on ``state`` (never blocks); how many."""
    todo = settlements(rows)
    for s in todo:
        state.settle(s)
    if todo:
        log.info("budgets: %d request(s) replayed from a stopped process's journal settled at their booked cost",
                 len(todo))
    return len(todo)


async def charge_recovered_now(cfg: TierwiseConfig, rows: Iterable[Row], timeout_s: float = 10.0) -> tuple[int, bool]:
    """For ``tierwise ledger recover``: settle ``rows`` on the configured shared state and wait until they are sent.
    Returns (settlements, all sent). The memory backend is one process's own: there is nothing to charge."""
    if cfg.state.backend == "memory":
        return 0, True
    from tierwise.state import build_state_backend

    state = build_state_backend(cfg)
    try:
        n = charge_recovered(state, rows)
        flush = getattr(state, "flush", None)
        sent = True if flush is None or n == 0 else bool(await flush(timeout_s))
    finally:
        await state.aclose()
    return n, sent
