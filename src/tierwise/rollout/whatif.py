"""What-if replay: captured prompts through the routing engine under another policy, thresholds or router artifact.

The candidate is a whole tierwise config (copy tierwise.yaml, change a tier's policy, a cascade threshold or the
router artifact). Each captured request goes through the very engine the gateway runs —
:class:`~tierwise.routing.engine.RoutingEngine` with the config's classifier and learned routers — twice: under the
current config and under the candidate. No upstream is called; what a choice costs is the request's *served* tokens
(from its ledger row, else tierwise's own estimate from the prompt) at the chosen model's price.

Cascades need answers to decide: whether a rung's gate passes depends on what that rung says. Replay does not call
models, so a cascade choice is reported as a range: the start rung alone (every gate passes: the lower bound) up to
every rung from the start to the top (every gate fails: the upper bound). Where the candidate's cascade starts on the
model that served the captured answer, no range is needed for that rung. ``tierwise trial`` (real calls) closes the
gap; a replay never claims a cascade's escalation rate.

Quality, where labels exist: feedback on a request (``POST /v1/feedback``, sampled judge labels) scores the answer
that was served; a candidate that picks the same model inherits that score. For other models, an outcome set of the
operator's traffic (``--outcomes``, e.g. ``tierwise trial`` output, prompt id = request id) gives the model's
recorded quality. Requests with neither are counted as unlabelled, never guessed.

Session pins are not replayed (a replay has no live sessions), and health cooldowns start clean.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tierwise.rollout.records import Captured

if TYPE_CHECKING:
    from tierwise.config.schema import TierwiseConfig
    from tierwise.lab.datasets.format import OutcomeSet

Served = tuple[int, int, int, int, int]  # input, output, cache read, cache write, reasoning tokens of the answer


@dataclass(slots=True)
class Choice:
    tier: str | None
    models: list[str]  # the model called first, then (cascades) the rungs escalation would add
    cost_low: float
    cost_high: float
    error: str | None = None


class EngineReplay:
    """One config's routing engine, classifier, learned routers and prices, for offline decisions."""

    def __init__(self, cfg: TierwiseConfig) -> None:
        from tierwise.pricing import PriceBook
        from tierwise.routing.engine import RoutingEngine
        from tierwise.service import _embedding_predictor, build_semantic_classifier, load_routers
        from tierwise.state import MemoryHealth, MemorySessionPins

        self.cfg = cfg
        self.prices = PriceBook(cfg)
        classifier = build_semantic_classifier(cfg) if cfg.classifier.kind == "semantic" else None
        routers = load_routers(cfg)
        self.engine = RoutingEngine(cfg, MemorySessionPins(cfg.sessions.ttl_s, 16),
                                    MemoryHealth(cfg.retry.cooldown_failures, cfg.retry.cooldown_s), classifier, routers)
        self.predictors = {t: _embedding_predictor(r) for t, r in routers.items()}

    def _cost(self, model: str, served: Served | None, estimator: Any) -> float:
        from tierwise.types import Usage

        if model not in self.prices.prices:
            return 0.0
        usage = Usage(*served) if served is not None else estimator.usage(model)
        return self.prices.cost(model, usage).total_usd

    def choose(self, c: Captured, served: Served | None) -> Choice:
        from tierwise.requests import prompt_text
        from tierwise.routing.engine import RouteRequest, RoutingError

        body = c.body()
        requested = body.get("model") if isinstance(body.get("model"), str) else None
        route = RouteRequest(requested_model=requested,
                             task_header=c.tier if c.tier_source in ("header", "endpoint") else None)
        try:
            if self.engine.needs_classifier(route):
                assert self.engine.classifier is not None
                route.classified = self.engine.classifier.classify(body)
                route.classifier_ran = True
            tier, source = self.engine.choose_tier(route, body)
            if tier in self.predictors:
                route.predicted = self.predictors[tier](prompt_text(body, 1 << 30))
            estimator = self.prices.estimator(body, tier)
            decision = self.engine.decide(route, body, time.time(), estimator, choice=(tier, source))
        except RoutingError as exc:
            return Choice(None, [], 0.0, 0.0, exc.message)
        if not decision.candidates:
            return Choice(tier, [], 0.0, 0.0, "no model left")
        cascade = self.cfg.tiers[tier].cascade if tier is not None else None
        if cascade is None:
            model = decision.candidates[0]
            cost = self._cost(model, served, estimator)
            return Choice(tier, [model], cost, cost)
        assert tier is not None
        start = self.engine.start_rung(tier, route.predicted) if cascade.start is not None else 0
        rungs = [r.model for r in cascade.rungs][start:]
        costs = [self._cost(m, served, estimator) for m in rungs]
        return Choice(tier, rungs, costs[0], sum(costs))


@dataclass(slots=True)
class TierLine:
    tier: str
    requests: int = 0
    served_usd: float = 0.0  # the ledger's cost of the captured requests
    current_usd: float = 0.0  # replayed under the current config (lower bound for cascades)
    current_high_usd: float = 0.0
    candidate_usd: float = 0.0
    candidate_high_usd: float = 0.0
    served_models: Counter[str] = field(default_factory=Counter)
    candidate_models: Counter[str] = field(default_factory=Counter)
    agree: int = 0  # the current config's replay picks the model that served the request
    changed: int = 0  # the candidate picks another first model than the current config
    unroutable: int = 0
    labelled: int = 0
    quality_current: float = 0.0
    quality_candidate: float = 0.0
    quality_known: int = 0  # labelled requests whose candidate quality is known too

    def as_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier, "requests": self.requests, "served_usd": self.served_usd,
            "current_usd": self.current_usd, "current_high_usd": self.current_high_usd,
            "candidate_usd": self.candidate_usd, "candidate_high_usd": self.candidate_high_usd,
            "change_usd": self.candidate_usd - self.current_usd,
            "served_models": dict(self.served_models), "candidate_models": dict(self.candidate_models),
            "replay_agreement": self.agree / self.requests if self.requests else None,
            "changed": self.changed, "unroutable": self.unroutable, "labelled": self.labelled,
            "quality_current": self.quality_current / self.quality_known if self.quality_known else None,
            "quality_candidate": self.quality_candidate / self.quality_known if self.quality_known else None,
            "quality_n": self.quality_known,
        }


@dataclass(slots=True)
class WhatIfReport:
    tiers: dict[str, TierLine]
    total: TierLine
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total.as_dict(), "tiers": [t.as_dict() for t in self.tiers.values()],
                "notes": self.notes}


def _quality(outcomes: OutcomeSet | None, rid: str, model: str) -> float | None:
    if outcomes is None:
        return None
    index = outcomes.meta.get("_by_id")
    if index is None:
        index = outcomes.meta["_by_id"] = {p.id: p for p in outcomes.prompts}
    p = index.get(rid)
    out = p.models.get(model) if p is not None else None
    return None if out is None else float(out.quality)


def replay(current: EngineReplay, candidate: EngineReplay, captures: Iterable[Captured],
           ledger: dict[str, tuple[Served, float]], scores: dict[str, float],
           outcomes: OutcomeSet | None = None) -> WhatIfReport:
    """Route every capture under both configs and sum cost (and quality where labels allow) per tier."""
    tiers: dict[str, TierLine] = {}
    total = TierLine("total")
    no_ledger = 0
    for c in captures:
        row = ledger.get(c.request_id)
        served, served_cost = row if row is not None else (None, 0.0)
        no_ledger += row is None
        now, cand = current.choose(c, served), candidate.choose(c, served)
        key = c.tier or "(direct)"
        line = tiers.setdefault(key, TierLine(key))
        first = cand.models[0] if cand.models else None
        for ln in (line, total):
            ln.requests += 1
            ln.served_usd += served_cost
            ln.current_usd += now.cost_low
            ln.current_high_usd += now.cost_high
            ln.candidate_usd += cand.cost_low
            ln.candidate_high_usd += cand.cost_high
            ln.served_models[c.model or "-"] += 1
            ln.candidate_models[first or "(unroutable)"] += 1
            ln.agree += bool(now.models) and now.models[0] == c.model
            ln.changed += first != (now.models[0] if now.models else None)
            ln.unroutable += cand.error is not None
        score = scores.get(c.request_id)
        if score is None:
            score = _quality(outcomes, c.request_id, c.model or "")
        if score is None or first is None:
            continue
        q_cand = score if first == c.model else _quality(outcomes, c.request_id, first)
        for ln in (line, total):
            ln.labelled += 1
            if q_cand is not None:
                ln.quality_known += 1
                ln.quality_current += score
                ln.quality_candidate += q_cand
    rep = WhatIfReport(dict(sorted(tiers.items())), total)
    rep.notes.append("Costs price each request's served tokens at the chosen model's price; cascades are shown as a "
                     "range from the start rung alone to every rung (replay calls no model, so it cannot know which "
                     "gates pass).")
    if total.requests and total.agree < total.requests:
        rep.notes.append(f"the current config's replay picks the model that actually served {total.agree} of "
                         f"{total.requests} requests: the rest were served after a fallback, a session pin, a "
                         "cascade escalation, or under an earlier config")
    if no_ledger:
        rep.notes.append(f"{no_ledger} capture(s) have no ledger row in the window: their cost is tierwise's estimate "
                         "from the prompt")
    if total.labelled == 0:
        rep.notes.append("no labels for these requests (feedback, or --outcomes from tierwise trial): quality cannot "
                         "be compared")
    elif total.quality_known < total.labelled:
        rep.notes.append(f"{total.labelled - total.quality_known} labelled request(s) go to a model without a label "
                         "for them: give --outcomes (tierwise trial) to compare their quality")
    return rep
