"""``tierwise reprice``: logged traffic under a new price table, per model, from the ledger's token counts.

Every model's billed tokens (:func:`tierwise.rollout.aggregate.billed_by_model`: per attempt for escalated cascade
requests, so a cheap rung's tokens are priced as the cheap rung's) at the new price, against what the ledger booked.
Re-pricing is exact for token-priced calls (cost is linear in tokens); costs booked at tierwise's pre-call estimate
(a hang-up or crash mid-call, no token counts) are kept as booked and shown apart, and so are calls a provider
billed itself (replay) — their tokens are re-priced, which is what the new table would charge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tierwise.cost.prices import ResolvedPrice
from tierwise.rollout.aggregate import BilledModel
from tierwise.rollout.pricefile import usage_cost


@dataclass(slots=True)
class RepriceLine:
    model: str | None
    calls: int
    tokens: int
    booked_usd: float
    new_usd: float
    price_source: str  # "table" | "unchanged (not in the table)" | "estimate (kept)"

    @property
    def change_usd(self) -> float:
        return self.new_usd - self.booked_usd

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "calls": self.calls, "tokens": self.tokens,
                "booked_usd": self.booked_usd, "new_usd": self.new_usd,
                "change_usd": self.change_usd,
                "change_share": self.change_usd / self.booked_usd if self.booked_usd > 0 else None,
                "price": self.price_source}


@dataclass(slots=True)
class RepriceReport:
    since: float | None
    until: float | None
    source: str
    lines: list[RepriceLine] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def booked_usd(self) -> float:
        return sum(ln.booked_usd for ln in self.lines)

    @property
    def new_usd(self) -> float:
        return sum(ln.new_usd for ln in self.lines)

    def as_dict(self) -> dict[str, Any]:
        return {"since": self.since, "until": self.until, "prices": self.source,
                "booked_usd": self.booked_usd, "new_usd": self.new_usd,
                "change_usd": self.new_usd - self.booked_usd,
                "models": [ln.as_dict() for ln in self.lines], "notes": self.notes}


def reprice(billed: list[BilledModel], table: dict[str, ResolvedPrice], source: str, since: float | None,
            until: float | None) -> RepriceReport:
    rep = RepriceReport(since, until, source)
    estimated = 0.0
    for b in billed:
        tokens = b.input_tokens + b.output_tokens + b.cache_read_tokens + b.cache_write_tokens
        if b.estimated:
            estimated += b.cost_usd
            rep.lines.append(RepriceLine(b.model, b.calls, tokens, b.cost_usd, b.cost_usd, "estimate (kept)"))
            continue
        price = table.get(b.model or "")
        if price is None:
            rep.lines.append(RepriceLine(b.model, b.calls, tokens, b.cost_usd, b.cost_usd,
                                         "unchanged (not in the table)"))
            continue
        new = usage_cost(price, b.input_tokens, b.output_tokens, b.cache_read_tokens, b.cache_write_tokens,
                         b.reasoning_tokens)
        rep.lines.append(RepriceLine(b.model, b.calls, tokens, b.cost_usd, new, "table"))
    merged: dict[tuple[str | None, str], RepriceLine] = {}
    for ln in rep.lines:  # the estimate rows and the priced rows of one model stay apart
        m = merged.get((ln.model, ln.price_source))
        if m is None:
            merged[(ln.model, ln.price_source)] = ln
        else:
            m.calls += ln.calls
            m.tokens += ln.tokens
            m.booked_usd += ln.booked_usd
            m.new_usd += ln.new_usd
    rep.lines = sorted(merged.values(), key=lambda ln: (-ln.booked_usd, ln.model or ""))
    if estimated:
        rep.notes.append(f"${estimated:.6f} was booked at tierwise's pre-call estimate (calls cut off by a hang-up "
                         "or a crash, no token counts): kept as booked")
    missing = sorted({ln.model for ln in rep.lines if ln.price_source.startswith("unchanged") and ln.model})
    if missing:
        rep.notes.append(f"not in {source}: {', '.join(missing)} (kept at the booked cost)")
    return rep
