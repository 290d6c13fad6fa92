"""Budgets and rate limits on the request path: one ``admit`` before the plan is made, one ``settle`` at the end.

A request that no cap or rate limit governs costs nothing here (no backend call). Otherwise the governor reserves
the request's worst-case estimated cost — the most expensive candidate, or every rung of a cascade plus its
fallback, priced for ``max_tokens`` or the tier's expected completion — in one backend call that also checks and
consumes the rate limits and returns the budgets' consumption; :mod:`tierwise.governance.budgets` turns that
into a step that may shrink the plan, and the request's real cost replaces the reservation when it ends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from tierwise.config.schema import TierwiseConfig
from tierwise.errors import APIError
from tierwise.governance.budgets import Grade, caps_for, exclusions, grade, limits_for
from tierwise.governance.principal import Principal
from tierwise.pricing import RequestEstimator
from tierwise.state.backend import Settlement, StateBackend
from tierwise.types import LedgerRecord


@dataclass(slots=True)
class Governed:
    """What governance decided for one request: models to leave out (with why) and the step behind it."""

    excluded: dict[str, str] = field(default_factory=dict)
    grade: Grade | None = None
    admitted: bool = False  # the backend holds a reservation / counted the request: settle it


class Governor:
    def __init__(self, cfg: TierwiseConfig, state: StateBackend) -> None:
        self.cfg = cfg
        self.state = state

    async def admit(self, record: LedgerRecord, principal: Principal, tier: str | None, models: Sequence[str],
                    estimate: RequestEstimator) -> Governed:
        """Raise 429 (naming the budget or rate limit, with ``Retry-After``) when the request must wait; else
        return what the budgets do to its plan."""
        caps = caps_for(principal, self.cfg.budgets, models)
        limits = limits_for(principal)
        if not caps and not limits:
            return Governed()
        costs = {m: estimate(m) for m in models}
        reserve = self._worst_case(tier, costs)
        tokens = max(estimate.usage(m).total_tokens for m in models)
        adm = await self.state.admit(record.id, caps, limits, reserve, tokens, {}, self.cfg.budgets.reservation_ttl_s)
        if adm.refused is not None:
            retry = str(math.ceil(adm.retry_after_s or 1))
            is_rate = adm.refused.startswith("rate limit")
            raise APIError(
                429, f"{adm.refused} reached; retry after {retry} s" + ("" if is_rate else " (the budget's next reset)"),
                type="rate_limit_error" if is_rate else "insufficient_quota",
                code="rate_limit_exceeded" if is_rate else "budget_exceeded", headers={"Retry-After": retry})
        g = grade(caps, adm, self.cfg.budgets)
        out = Governed(grade=g, admitted=True)
        if tier is None:  # the caller named the model: steps do not swap it, a spent model budget refuses it
            if g.spent_models & set(models):
                self.settle_nothing(record.id)
                raise APIError(429, f"the budget of model '{models[0]}' is spent", type="insufficient_quota",
                               code="budget_exceeded")
            return out
        t = self.cfg.tiers[tier]
        out.excluded = exclusions(g.step, models, t.fallback or self.cfg.fallback_model, costs, g.spent_models, g.why)
        return out

    def _worst_case(self, tier: str | None, costs: dict[str, float]) -> float:
        cascade = self.cfg.tiers[tier].cascade if tier is not None else None
        if cascade is None:
            return max(costs.values())
        rungs = {r.model for r in cascade.rungs}
        return sum(costs[m] for m in rungs) + max((c for m, c in costs.items() if m not in rungs), default=0.0)

    def settle(self, record: LedgerRecord) -> None:
        """The request is over: its real cost (every attempt and rung) replaces its reservation."""
        per_model: dict[str, float] = {}
        for a in record.attempts:
            per_model[a.model] = per_model.get(a.model, 0.0) + a.cost_usd
        self.state.settle(Settlement(record.id, record.cost.total_usd, record.usage.total_tokens, per_model))

    def settle_nothing(self, request_id: str) -> None:
        """Admitted, then refused before any upstream call: release the reservation."""
        self.state.settle(Settlement(request_id, 0.0, 0))
