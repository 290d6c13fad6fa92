"""The dashboard's budget panel: each budget's live consumption as the governance state holds it — what admission
reads and enforces — next to its caps, the month's projection and the step admission would take now.

Which budgets: the caps of ``budgets.caps`` — named scopes, and for ``customer:*`` / ``department:*`` /
``project:*`` / ``model:*`` each member with spend this month (the state keeps no list of its scopes, so the
ledger's month names them: :func:`tierwise.dashboard.summary.build_budgets`, cached like the other budget SQL).

Their consumption is read with the state backend's async ``read_usage`` (Redis: awaited round trips — never a
synchronous read on the event loop; memory: this process's own counters), for all of them at once, at most once
per ``dashboard.cache_ms`` however many tabs poll; periods are the backend's UTC day and month. Per budget:

- ``spent_today_usd`` / ``spent_month_usd``: settled spend; ``reserved_today_usd`` / ``reserved_month_usd``: held by
  requests in flight (their estimate, until their real cost replaces it);
- ``level``: (spent + reserved) ÷ cap, the higher of the two periods, as admission computes it;
- ``projected_month_usd``: month to date + the median of this month's past days × the days left
  (:func:`tierwise.governance.budgets.project_month`), None until ``budgets.projection_min_days`` past days;
- ``step``: what admission does to a request this budget governs, now: :func:`tierwise.governance.budgets.grade`
  on this cap (so a projected overrun shows its early ``cheaper``), ``refused`` from 100 % (the backend refuses at
  the cap), and for a model's cap ``excluded`` once spent (the model leaves every plan; model caps take no step);
  ``why`` says which period drove it;
- ``ledger_today_usd`` / ``ledger_month_usd``: the ledger's settled spend for the same scope, for comparison (with
  ``state.backend: memory`` the state counts from the process's start, the ledger from the month's).

When the state cannot be read (Redis away) the panel says so (``budget_state.error``) and shows the ledger's
settled spend in its place (``budget_state.source: "ledger"``), never an error page.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tierwise.config.schema import BudgetCap, BudgetsConfig
from tierwise.dashboard.summary import build_budgets
from tierwise.governance.budgets import grade, project_month
from tierwise.state.backend import Admission, Cap, Usage

if TYPE_CHECKING:
    from tierwise.dashboard import sql
    from tierwise.service import Tierwise

log = logging.getLogger("tierwise.dashboard")

#: budgets shown per configured cap (a ``customer:*`` cap lists its members with the highest level first)
TOP = 5

Query = Callable[[Any, float, Callable[["sql.Session"], Any]], Awaitable[Any]]


def budget_entry(scope: str, cap: BudgetCap, u: Usage, cfg: BudgetsConfig, now: float,
                 ledger: Usage | None = None) -> dict[str, Any]:
    """One budget's panel row from its consumption ``u`` (see the module docstring)."""
    levels = []
    if cap.daily_usd:
        levels.append((u.daily_spent + u.daily_reserved) / cap.daily_usd)
    if cap.monthly_usd:
        levels.append((u.monthly_spent + u.monthly_reserved) / cap.monthly_usd)
    level = max(levels, default=0.0)
    projected = project_month(u.monthly_spent, u.past_days, now, cfg.projection_min_days)
    step: str | None
    if scope.startswith("model:"):
        step, why = ("excluded", "the model's budget is spent: it leaves every plan") if level >= 1 else (None, "")
    elif level >= 1:
        step, why = "refused", "at 100 % of the cap: requests it governs are refused (429) until its reset"
    else:
        g = grade([Cap(scope, cap.daily_usd, cap.monthly_usd)], Admission(now, {scope: u}), cfg)
        step, why = g.step, g.why
    return {"scope": scope, "daily_usd": cap.daily_usd, "monthly_usd": cap.monthly_usd,
            "spent_today_usd": u.daily_spent, "reserved_today_usd": u.daily_reserved,
            "spent_month_usd": u.monthly_spent, "reserved_month_usd": u.monthly_reserved,
            "projected_month_usd": projected,
            "over_projection": bool(projected is not None and cap.monthly_usd and projected > cap.monthly_usd),
            "level": level, "step": step, "why": why,
            "ledger_today_usd": None if ledger is None else ledger.daily_spent,
            "ledger_month_usd": None if ledger is None else ledger.monthly_spent}


class BudgetPanel:
    """The budget panel of one dashboard; ``query`` runs ledger SQL on the dashboard's threads, cached."""

    def __init__(self, svc: Tierwise, query: Query, ledger_ttl_s: float, state_ttl_s: float) -> None:
        self.svc = svc
        self.cfg = svc.cfg
        self._query = query
        self._ledger_ttl = ledger_ttl_s
        self._state_ttl = state_ttl_s
        self._read: tuple[float, tuple[str, ...], asyncio.Future[dict[str, Usage]]] | None = None

    async def _usage(self, scopes: tuple[str, ...]) -> dict[str, Usage]:
        """The state's consumption of ``scopes``: one read in flight, reused for ``state_ttl_s``."""
        now = time.monotonic()
        hit = self._read
        if hit is not None and hit[1] == scopes and (not hit[2].done() or now < hit[0]):
            return await asyncio.shield(hit[2])
        fut = asyncio.ensure_future(self.svc.governor.state.read_usage(scopes, past_days=True))
        self._read = (now + self._state_ttl, scopes, fut)
        try:
            return await asyncio.shield(fut)
        except BaseException:
            if self._read is not None and self._read[2] is fut:
                self._read = None  # a failure is not reused
            raise

    async def status(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """(the panel's rows, where they came from)."""
        if not self.cfg.budgets.caps:
            return [], {"source": "state", "backend": self.cfg.state.backend, "error": None}
        cfg = self.cfg
        now = time.time()
        ledger: list[tuple[str, BudgetCap, Usage]] = await self._query(
            ("budgets",), self._ledger_ttl, lambda s: build_budgets(s, cfg, now))
        source: dict[str, Any] = {"source": "state", "backend": cfg.state.backend, "error": None}
        scopes = tuple(scope for scope, _, _ in ledger)
        try:
            live = await self._usage(scopes)
        except Exception as exc:  # Redis away: say so, show the ledger's settled spend instead
            log.warning("dashboard: cannot read budget usage from the state backend (%s)", type(exc).__name__)
            live = {scope: u for scope, _, u in ledger}
            source.update(source="ledger", error=f"the budget state cannot be read ({type(exc).__name__}): "
                                                 "showing the ledger's settled spend, without reservations")
        groups: dict[str, list[dict[str, Any]]] = {}
        for scope, cap, u in ledger:
            row = budget_entry(scope, cap, live.get(scope, u), cfg.budgets, now, u)
            kind, _, name = scope.partition(":")
            group = scope if scope in cfg.budgets.caps else f"{kind}:*"
            groups.setdefault(group, []).append(row)
        out: list[dict[str, Any]] = []
        for group in sorted(groups):
            rows = sorted(groups[group], key=lambda e: (-e["level"], e["scope"]))
            out.extend(rows[:TOP])
        source["read_at"] = now
        return out, source
