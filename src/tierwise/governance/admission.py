"""Budgets and rate limits on the request path: one ``admit`` before the plan is made, one ``settle`` at the end.

A request that no cap or rate limit governs costs nothing here (no backend call). Otherwise the governor reserves
the request's worst-case estimated cost — the most expensive candidate, or every rung of a cascade plus its
fallback, priced for the request's ``max_tokens`` (or, without one, the tier's expected completion) — in one backend call that also checks and
consumes the rate limits and returns the budgets' consumption; :mod:`tierwise.governance.budgets` turns that
into a step that may shrink the plan, and the request's real cost replaces the reservation when it ends.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tierwise.config.schema import TierwiseConfig
from tierwise.errors import APIError
from tierwise.governance.anomaly import AnomalyDetector
from tierwise.governance.budgets import Grade, caps_for, exclusions, grade, limits_for
from tierwise.governance.principal import Principal
from tierwise.pricing import RequestEstimator
from tierwise.routing.executor import Call
from tierwise.state.backend import Admission, Settlement, StateBackend
from tierwise.state.memory import MemoryHealth, MemorySessionPins
from tierwise.types import LedgerRecord

_STRICTNESS = {None: 0, "cheaper": 1, "fallback_only": 2}
_HELD = {"cheaper": "cheaper models only", "fallback_only": "the tier's fallback model only"}


@dataclass(slots=True)
class Governed:
    """What governance decided for one request: models to leave out (with why) and the step behind it."""

    excluded: dict[str, str] = field(default_factory=dict)
    grade: Grade | None = None
    admitted: bool = False  # the backend holds a reservation / counted the request: settle it


class Governor:
    """Drives the state backend for the service. With a backend that shares routing state (Redis), the same two
    calls also bring the session's pin and the models' cooldowns into this process's tables before the engine
    decides, and share what the request changed when it settles."""

    def __init__(self, cfg: TierwiseConfig, state: StateBackend, pins: MemorySessionPins, health: MemoryHealth,
                 anomalies: AnomalyDetector) -> None:
        self.cfg = cfg
        self.state = state
        self.pins = pins
        self.health = health
        self.anomalies = anomalies

    async def admit(self, record: LedgerRecord, principal: Principal, tier: str | None, models: Sequence[str],
                    estimate: RequestEstimator) -> Governed:
        """Raise 429 (naming the budget or rate limit, with ``Retry-After``) when the request must wait; else
        return what the budgets do to its plan."""
        held = self.anomalies.held_step(principal.name, time.time()) if self.anomalies.held_any else None
        if held == "block":
            raise APIError(429, f"requests of '{principal.name}' are held after a spend anomaly; the operator has "
                           "been alerted", type="insufficient_quota", code="spend_anomaly",
                           headers={"Retry-After": str(math.ceil(self.cfg.anomalies.tighten_for_s))})
        caps = caps_for(principal, self.cfg.budgets, models)
        limits = limits_for(principal)
        shared = self.state.shares_routing_state
        if not caps and not limits and not shared:
            return self._held(held, tier, models, estimate) if held else Governed()
        costs = {m: estimate(m) for m in models}
        # the reservation runs the completion to the request's own max_tokens (when it sets one), not the expected
        # length the estimate uses: the overspend bound needs every request's real cost within its reservation
        reserve = self._worst_case(tier, {m: estimate.ceiling(m) for m in models}) if caps else 0.0
        tokens = max(estimate.usage(m).total_tokens for m in models) if limits else 0
        adm = await self.state.admit(record.id, caps, limits, reserve, tokens, {}, self.cfg.budgets.reservation_ttl_s,
                                     record.session_id if shared else None, models if shared else ())
        if shared:
            self._adopt(record.session_id, adm)
        if adm.note is not None:
            record.notes.append(adm.note)
        if adm.refused is not None:
            retry = str(math.ceil(adm.retry_after_s or 1))
            is_rate = adm.refused.startswith("rate limit")
            raise APIError(
                429, f"{adm.refused} reached; retry after {retry} s" + ("" if is_rate else " (the budget's next reset)"),
                type="rate_limit_error" if is_rate else "insufficient_quota",
                code="rate_limit_exceeded" if is_rate else "budget_exceeded", headers={"Retry-After": retry})
        g = grade(caps, adm, self.cfg.budgets)
        if held and _STRICTNESS[held] > _STRICTNESS[g.step]:
            g = Grade(held, f"principal:{principal.name}", 0.0, f"spend anomaly: {_HELD[held]}", g.spent_models)
        out = Governed(grade=g, admitted=True)
        if not caps and not held:
            return out
        if tier is None:  # the caller named the model: steps do not swap it, a spent model budget refuses it
            if g.spent_models & set(models):
                self.settle_nothing(record.id)
                raise APIError(429, f"the budget of model '{models[0]}' is spent", type="insufficient_quota",
                               code="budget_exceeded")
            return out
        t = self.cfg.tiers[tier]
        out.excluded = exclusions(g.step, models, t.fallback or self.cfg.fallback_model, costs, g.spent_models, g.why)
        return out

    def _held(self, step: str, tier: str | None, models: Sequence[str], estimate: RequestEstimator) -> Governed:
        """No budget governs the request, but a spend anomaly holds its principal to ``step``."""
        g = Grade(step, "anomaly", 0.0, f"spend anomaly: {_HELD[step]}")
        if tier is None:
            return Governed(grade=g)
        t = self.cfg.tiers[tier]
        costs = {m: estimate(m) for m in models}
        return Governed(exclusions(step, models, t.fallback or self.cfg.fallback_model, costs, frozenset(), g.why), g)

    def _worst_case(self, tier: str | None, costs: dict[str, float]) -> float:
        cascade = self.cfg.tiers[tier].cascade if tier is not None else None
        if cascade is None:
            return max(costs.values())
        rungs = {r.model for r in cascade.rungs}
        return sum(costs[m] for m in rungs) + max((c for m, c in costs.items() if m not in rungs), default=0.0)

    def _adopt(self, session_id: str | None, adm: Admission) -> None:
        """Take the backend's pin and cooldowns into the local tables the engine and executor read."""
        now = time.time()
        if session_id and adm.pin is not None:
            self.pins.set(session_id, adm.pin, now)
        for model, until in adm.cooling.items():
            self.health.cool(model, now + (until - adm.now))  # the backend's clock, mapped onto ours

    async def share_pin(self, call: Call) -> None:
        """The request (re)pinned its session: with a backend that shares routing state, store the pin before the
        answer leaves, so the session's next request finds it on any replica. Its settlement then has no pin to
        send (a late copy could overwrite a newer pin another replica set meanwhile)."""
        if call.new_pin is None or not call.session_id or not self.state.shares_routing_state:
            return
        share = getattr(self.state, "share_pin", None)
        if share is not None and await share(call.session_id, call.new_pin):
            call.new_pin = None

    def settle(self, call: Call) -> None:
        """The request is over: its real cost (every attempt and rung) replaces its reservation, and a shared
        backend learns the pin and cooldowns it set."""
        record = call.record
        per_model: dict[str, float] = {}
        for a in record.attempts:
            per_model[a.model] = per_model.get(a.model, 0.0) + a.cost_usd
        cool = {m: self.cfg.retry.cooldown_s for m in call.cooldowns}
        self.state.settle(Settlement(record.id, record.cost.total_usd, record.usage.total_tokens, per_model,
                                     call.session_id, call.new_pin, cool))

    def settle_nothing(self, request_id: str) -> None:
        """Admitted, then refused before any upstream call: release the reservation."""
        self.state.settle(Settlement(request_id, 0.0, 0))
