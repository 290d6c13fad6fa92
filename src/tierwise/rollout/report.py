"""``tierwise report``: what the traffic of a window was, cost, and would have cost.

Per tier (the task), model, principal and routing policy: requests, errors, escalations, tokens, spend and cost per
1k tokens (CPT, seed 000: spend / (input + cache + output tokens) x 1000), and what the same traffic would have cost
on the flagship — the most expensive configured model unless ``--flagship`` names one — and on any model or price
table given with ``--compare`` / ``--prices``. Savings are the flagship counterfactual minus what was spent.

How a counterfactual is priced: each group's *served* tokens (see :mod:`tierwise.rollout.aggregate`) at the other
model's price. That is the same prompt and the same answer length; another model's tokenizer and verbosity would
change both, typically by 10-30 %: a counterfactual is an estimate, not a bill.

Mix shift: savings here compare the *same* requests on two price lists, so they do not depend on what the traffic
was. A before/after comparison (last month's spend against this month's) does: when the share of easy requests
grows, spend falls without routing doing anything. The report states this under its numbers, and never calls a
before/after difference a saving.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tierwise.cost.prices import ResolvedPrice
from tierwise.rollout.aggregate import TrafficGroup
from tierwise.rollout.pricefile import usage_cost

if TYPE_CHECKING:
    from tierwise.config.schema import TierwiseConfig

VIEWS = ("tier", "model", "principal", "policy")

MIX_SHIFT = ("Savings compare the same requests priced on the flagship, so they hold whatever the task mix was; a "
             "before/after comparison of spend would also count mix shift (more easy requests this period lowers "
             "spend without any routing) and is not a saving.")
TOKENIZER = ("Counterfactuals price each request's served tokens at the other model's price: another model's "
             "tokenizer and answer length would differ, so treat them as estimates (typically within 10-30 %).")


@dataclass(slots=True)
class Line:
    """One row of a view (``key`` is the tier, model, principal or policy; None where the ledger has none)."""

    view: str
    key: str | None
    requests: int = 0
    errors: int = 0
    rejected: int = 0
    escalated: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    flagship_usd: float = 0.0
    latency_ms_sum: float = 0.0
    compare: dict[str, float] = field(default_factory=dict)

    @property
    def cpt(self) -> float | None:
        """Cost per 1k tokens (None without tokens)."""
        return self.cost_usd / self.tokens * 1000 if self.tokens else None

    @property
    def savings_usd(self) -> float:
        return self.flagship_usd - self.cost_usd

    @property
    def savings_share(self) -> float | None:
        return self.savings_usd / self.flagship_usd if self.flagship_usd > 0 else None

    def as_dict(self) -> dict[str, Any]:
        answered = self.requests - self.errors - self.rejected
        return {
            "view": self.view, "key": self.key, "requests": self.requests, "errors": self.errors,
            "rejected": self.rejected, "escalated": self.escalated, "tokens": self.tokens,
            "cost_usd": self.cost_usd, "cpt_usd": None if self.cpt is None else self.cpt,
            "flagship_usd": self.flagship_usd, "savings_usd": self.savings_usd,
            "savings_share": None if self.savings_share is None else self.savings_share,
            "mean_latency_ms": round(self.latency_ms_sum / answered, 3) if answered > 0 else None,
            **{f"on_{k}_usd": v for k, v in self.compare.items()},
        }


@dataclass(slots=True)
class Report:
    since: float | None
    until: float | None
    flagship: str
    views: dict[str, list[Line]]
    total: Line
    compare_labels: list[str]
    captured: int | None = None  # captures in the window (None: capture store absent)
    feedback: int | None = None
    notes: list[str] = field(default_factory=list)
    cannot: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since, "until": self.until, "flagship": self.flagship, "compare": self.compare_labels,
            "total": self.total.as_dict(), "views": {v: [ln.as_dict() for ln in lines] for v, lines in self.views.items()},
            "captured": self.captured, "feedback": self.feedback, "notes": self.notes, "cannot": self.cannot,
        }


def policy_of(cfg: TierwiseConfig, tier: str | None) -> str:
    """The routing policy a tier runs under now (``direct`` for requests naming a model, ``unknown`` for a tier
    the config no longer has)."""
    if tier is None:
        return "direct"
    t = cfg.tiers.get(tier)
    if t is None:
        return "unknown"
    return "cascade" if t.cascade is not None else t.policy


@dataclass(slots=True)
class Pricing:
    """The flagship and the comparisons: label -> (one price for all traffic) or (a table by model)."""

    flagship: str
    prices: dict[str, ResolvedPrice]  # configured models
    single: dict[str, ResolvedPrice] = field(default_factory=dict)  # --compare MODEL
    tables: dict[str, dict[str, ResolvedPrice]] = field(default_factory=dict)  # --prices FILE


def _cost_on(g: TrafficGroup, price: ResolvedPrice | None) -> float:
    if g.model is None:  # never routed to a model (refused, failed before a call): nothing to re-price
        return g.cost_usd
    if price is None:
        return g.cost_usd
    return usage_cost(price, *g.served()) + g.estimated_usd


def build_report(cfg: TierwiseConfig, groups: Iterable[TrafficGroup], pricing: Pricing, since: float | None,
                 until: float | None) -> Report:
    """The views and the total from the SQL groups (a few hundred at most: the work here is per group)."""
    views: dict[str, dict[str | None, Line]] = {v: {} for v in VIEWS}
    total = Line("total", None)
    labels = [*pricing.single, *pricing.tables]
    unpriced: set[str] = set()
    flag_price = pricing.prices[pricing.flagship]
    for g in groups:
        if g.model is not None and g.model not in pricing.prices:
            unpriced.add(g.model)
        flagship_usd = _cost_on(g, flag_price)
        compare = {k: _cost_on(g, p) for k, p in pricing.single.items()}
        for label, table in pricing.tables.items():
            compare[label] = _cost_on(g, table.get(g.model or ""))
        keys = {"tier": g.tier, "model": g.model, "principal": g.principal, "policy": policy_of(cfg, g.tier)}
        for line in [total, *(views[v].setdefault(keys[v], Line(v, keys[v])) for v in VIEWS)]:
            line.requests += g.requests
            line.errors += g.errors
            line.rejected += g.rejected
            line.escalated += g.escalated
            line.tokens += g.tokens
            line.cost_usd += g.cost_usd
            line.flagship_usd += flagship_usd
            line.latency_ms_sum += g.latency_ms
            for k, v in compare.items():
                line.compare[k] = line.compare.get(k, 0.0) + v
    for line in [total, *(ln for v in views.values() for ln in v.values())]:
        for label in labels:
            line.compare.setdefault(label, 0.0)
    ordered = {v: sorted(lines.values(), key=lambda ln: (-ln.cost_usd, -ln.requests, ln.key or ""))
               for v, lines in views.items()}
    rep = Report(since, until, pricing.flagship, ordered, total, labels)
    rep.notes += [MIX_SHIFT, TOKENIZER]
    if unpriced:
        rep.notes.append(f"model(s) no longer in the config, kept at their booked cost in every counterfactual: "
                         f"{', '.join(sorted(unpriced))}")
    for label, table in pricing.tables.items():
        missing = sorted({ln.key for ln in ordered["model"] if ln.key is not None and ln.key not in table})
        if missing:
            rep.notes.append(f"{label}: no price for {', '.join(missing)}; their booked cost is used")
    return rep


def capture_coverage(cfg: TierwiseConfig, rep: Report) -> None:
    """Count captures and feedback in the report's window, and say what the report cannot do without them."""
    from tierwise.rollout.capture import open_existing_rollout_store

    try:
        store = open_existing_rollout_store(cfg)  # a report creates nothing
    except Exception as exc:  # reading the books must not fail because the capture store is away
        rep.notes.append(f"capture store not readable ({exc}); captures and feedback not counted")
        store = None
    if store is not None:
        try:
            rep.captured = store.count_captured(rep.since, rep.until)
            rep.feedback = store.count_feedback(rep.since, rep.until)
        finally:
            store.close()
    if not rep.captured:
        rep.cannot.append("no captured prompts in this window (rollout.capture is off or sampled nothing): no "
                          "what-if replay (tierwise whatif), no labelling sample or trial; costs and tokens above "
                          "are complete")
    if not rep.feedback:
        rep.cannot.append("no feedback or labels in this window: quality per tier/model cannot be reported "
                          "(POST /v1/feedback, or tierwise trial)")
