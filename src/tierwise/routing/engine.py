"""The routing engine: from a request to an ordered plan of models. Pure: no I/O, no clock of its own.

The same engine is driven by the live gateway and by offline replay over recorded outcomes, so what calibration and
evaluation measure is exactly what serves traffic. State it reads (session pins, model health) comes in through the
small protocols in :mod:`tierwise.state`; the current time is an argument.

Order of precedence for the tier (design §1): endpoint ``/v1/tiers/<tier>/…`` → ``X-Task`` header →
``model="<tier>"`` → ``model="auto"`` (or absent) → the classifier when one is configured → the default tier.
A concrete model name bypasses tiers entirely: the caller asked for that model, so there is no fallback to another.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from tierwise.config.schema import TierwiseConfig
from tierwise.state.protocols import HealthState, SessionPins
from tierwise.types import JSON

if TYPE_CHECKING:
    from tierwise.routing.learned.artifact import LearnedRouter


class RoutingError(Exception):
    """The request names something that does not exist (404 on the API)."""

    def __init__(self, message: str, param: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class TierClassifier(Protocol):
    """Chooses a tier for ``model="auto"`` requests (semantic or learned); None means "no confident match".

    Classifiers embed text, which takes milliseconds of CPU: drivers run ``classify`` off the event loop and hand
    the result to the engine in :attr:`RouteRequest.classified`, keeping the engine itself pure and synchronous.
    """

    def classify(self, body: JSON) -> tuple[str, float] | None: ...


@dataclass(slots=True)
class RouteRequest:
    requested_model: str | None = None
    task_header: str | None = None
    endpoint_tier: str | None = None
    session_id: str | None = None
    classified: tuple[str, float] | None = None  # the classifier's (tier, score) when it ran
    classifier_ran: bool = False
    predicted: Sequence[float] | None = None  # a learned router's predicted quality per model of the tier's router
    tags: dict[str, str] = field(default_factory=dict)  # the caller's tags for the ledger (requests.take_tags)
    revenue_usd: float | None = None  # what the caller earns per request: learned tiers then maximise margin


@dataclass(slots=True)
class Decision:
    """What the executor should try, in order, and why."""

    tier: str | None
    tier_source: str  # endpoint | header | model | auto-default | classifier | fallback-tier | direct
    candidates: list[str]
    policy: str
    pinned: str | None = None
    notes: list[str] = field(default_factory=list)
    direct: bool = False


class RoutingEngine:
    """Turns a request into a :class:`Decision`. Holds config and state handles, never calls a provider."""

    def __init__(
        self,
        cfg: TierwiseConfig,
        pins: SessionPins,
        health: HealthState,
        classifier: TierClassifier | None = None,
        routers: Mapping[str, LearnedRouter] | None = None,
    ) -> None:
        self.cfg = cfg
        self.pins = pins
        self.health = health
        self.classifier = classifier
        self.routers = dict(routers or {})  # tier -> learned router (policy 'learned' or a cascade's start)

    # -- step 1: classify ------------------------------------------------------------------------------------------
    def choose_tier(self, req: RouteRequest, body: JSON) -> tuple[str | None, str]:
        tiers = self.cfg.tiers
        if req.endpoint_tier is not None:
            if req.endpoint_tier not in tiers:
                raise RoutingError(f"unknown tier '{req.endpoint_tier}'", "tier", "tier_not_found")
            return req.endpoint_tier, "endpoint"
        if req.task_header:
            if req.task_header not in tiers:
                raise RoutingError(f"unknown tier '{req.task_header}' in X-Task header", "X-Task", "tier_not_found")
            return req.task_header, "header"
        model = req.requested_model
        if model and model != "auto":
            if model in tiers:
                return model, "model"
            if model in self.cfg.models:
                return None, "direct"
            raise RoutingError(
                f"The model '{model}' does not exist: not a configured model, tier or 'auto'", "model", "model_not_found"
            )
        if req.classifier_ran:
            if req.classified is not None:
                return req.classified[0], "classifier"
            return self.cfg.classifier.fallback_tier or self.cfg.default_tier, "fallback-tier"
        return self.cfg.default_tier, "auto-default"

    def needs_classifier(self, req: RouteRequest) -> bool:
        """True when the tier will come from the classifier (no explicit tier or model in the request)."""
        return (
            self.classifier is not None
            and req.endpoint_tier is None
            and not req.task_header
            and (not req.requested_model or req.requested_model == "auto")
        )

    # -- steps 2 and 4: pin and plan -------------------------------------------------------------------------------
    def decide(
        self,
        req: RouteRequest,
        body: JSON,
        now: float,
        estimate_cost: Callable[[str], float],
        choice: tuple[str | None, str] | None = None,
        excluded: Mapping[str, str] | None = None,
    ) -> Decision:
        """The plan for ``req``; ``choice`` is :meth:`choose_tier`'s result when the caller already has it.

        ``excluded`` maps models the plan must leave out to why (governance: the caller may not use them, or a
        budget step took them out of the allowed set). The plan may come back empty: the caller says why.
        """
        tier, source = choice if choice is not None else self.choose_tier(req, body)
        if tier is None:
            assert req.requested_model is not None
            direct = [] if excluded and req.requested_model in excluded else [req.requested_model]
            return Decision(None, "direct", direct, "direct", direct=True)
        tcfg = self.cfg.tiers[tier]
        if tcfg.policy == "learned":
            ordered = self._learned_order(tier, req.predicted, req.revenue_usd)
        else:
            ordered = self._order(tcfg.models, tcfg.policy, estimate_cost)
        fallback = tcfg.fallback or self.cfg.fallback_model
        if fallback not in ordered:
            ordered.append(fallback)
        decision = Decision(tier, source, ordered, tcfg.policy)
        if excluded:
            for model in [m for m in ordered if m in excluded]:
                ordered.remove(model)
                decision.notes.append(f"{model} left out: {excluded[model]}")
        if req.session_id:
            pinned = self.pins.get(req.session_id, now)
            if pinned is not None and pinned in ordered:
                decision.pinned = pinned
                ordered.remove(pinned)
                ordered.insert(0, pinned)
            elif pinned is not None:
                decision.notes.append(f"session pin '{pinned}' is not in tier '{tier}'; routed afresh")
        self._demote_cooling(decision, now)
        return decision

    def _order(self, models: list[str], policy: str, estimate_cost: Callable[[str], float]) -> list[str]:
        if policy == "cheapest":
            return sorted(models, key=estimate_cost)  # stable: ties keep config order
        if policy == "fastest_ttft":
            # Unmeasured models sort first (TTFT 0) so each gets observed once instead of being starved forever.
            return sorted(models, key=lambda m: self.health.ttft_ms(m) or 0.0)
        return list(models)

    def _learned_order(self, tier: str, predicted: Sequence[float] | None, revenue: float | None = None) -> list[str]:
        """The router's choice first, then the other models by predicted quality (best first) as fallbacks.

        With the caller's revenue per request known, the choice maximises expected margin instead of the tier's
        rule: revenue × predicted quality − expected cost, i.e. the λ rule with λ = 1 / revenue, among the models
        whose predicted quality reaches the tier's ``quality_floor`` (the best predicted when none does).
        """
        router = self.routers[tier]
        if predicted is None:
            raise ValueError(f"tier '{tier}' has a learned policy but no prediction was made for this request")
        import numpy as np  # only learned tiers pay for numpy (14 MB RSS)

        learned = self.cfg.tiers[tier].learned
        assert learned is not None
        pred = np.asarray(predicted, dtype=float)
        rule, knob, allowed = learned.rule, learned.knob, None
        if revenue:
            rule, knob = "lambda", 1.0 / revenue
            if learned.quality_floor is not None:
                allowed = [m for m, q in zip(router.models, pred, strict=True) if q >= learned.quality_floor]
                if not allowed:
                    allowed, knob = None, 0.0  # nothing reaches the floor: the best predicted model
        chosen = router.models[int(router.choose(pred[None, :], rule, knob, allowed)[0])]
        rest = [router.models[i] for i in np.argsort(-pred, kind="stable") if router.models[i] != chosen]
        return [chosen, *rest]

    def start_rung(self, tier: str, predicted: Sequence[float] | None) -> int:
        """For a cascade with a start router: index of the rung whose model the router picks (0 without one)."""
        cascade = self.cfg.tiers[tier].cascade
        if cascade is None or cascade.start is None or predicted is None:
            return 0
        import numpy as np

        router = self.routers[tier]
        pred = np.asarray(predicted, dtype=float)[None, :]
        chosen = router.models[int(router.choose(pred, cascade.start.rule, cascade.start.knob)[0])]
        return [r.model for r in cascade.rungs].index(chosen)

    def _demote_cooling(self, decision: Decision, now: float) -> None:
        """Models in cooldown go to the back: still tried if everything else fails, never first."""
        cooling = [m for m in decision.candidates if self.health.cooling_down(m, now)]
        if not cooling or len(cooling) == len(decision.candidates):
            return
        decision.candidates = [m for m in decision.candidates if m not in cooling] + cooling
        decision.notes.append("cooling down, tried last: " + ", ".join(cooling))
