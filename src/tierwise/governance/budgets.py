"""Budgets that degrade gracefully: which caps apply to a request, and what their consumption does to its plan.

A request is governed by every cap that names it — the global cap, its key's or principal's, its customer's, its
department's — and by the model caps of the models its plan could use. Consumption is (settled + reserved) ÷ cap
for the day and the month (UTC, on the state backend's clock); the highest level across caps picks a step:

- ``cheaper`` (default from 80 %): the expensive half of the plan leaves the allowed set, so traffic moves to
  cheaper and local models;
- ``fallback_only`` (default from 95 %): only the tier's fallback model;
- at 100 % of a cap the request is refused with 429, naming the budget, ``Retry-After`` at the cap's next reset.

A monthly projection — month-to-date spend plus the median of this month's past daily spend × the days left —
applies the first step early when it says the month will overrun. A model whose own cap is reached simply leaves
the allowed set. Every degradation is a note on the ledger record and an ``x-tierwise-budget`` response header.

The overspend bound: a request is admitted while settled + reserved spend is below the cap, and reserves its
estimated cost (prompt tokens by the real tokenizer + ``max_tokens`` or the tier's expected completion; every rung
of a cascade) until it settles; so spend can pass a cap by at most the reservations in flight when the cap was
reached, plus what requests cost beyond their estimate.
"""

from __future__ import annotations

import calendar
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tierwise.config.schema import BudgetsConfig
from tierwise.governance.principal import Principal
from tierwise.state.backend import Admission, Cap, RateLimit

#: (id(principal), id(cfg), models) -> (principal, cfg, caps): a principal (immutable; the key cache hands out the
#: same object until a refresh replaces it) asks for the same caps on every request; cleared when it grows past this.
_CAPS_MEMO_SIZE = 4096
_caps_memo: dict[tuple[int, int, tuple[str, ...]], tuple[Principal, BudgetsConfig, tuple[Cap, ...]]] = {}


def caps_for(principal: Principal, cfg: BudgetsConfig, models: Sequence[str]) -> list[Cap]:
    """Every cap that governs a request of ``principal`` whose plan may use ``models`` (memoised per principal
    object, config and models: the strings and Cap objects were rebuilt on every request)."""
    key = (id(principal), id(cfg), tuple(models))
    hit = _caps_memo.get(key)
    if hit is not None and hit[0] is principal and hit[1] is cfg:
        return list(hit[2])
    caps = _caps_for(principal, cfg, models)
    if len(_caps_memo) >= _CAPS_MEMO_SIZE:
        _caps_memo.clear()
    _caps_memo[key] = (principal, cfg, tuple(caps))
    return caps


def _caps_for(principal: Principal, cfg: BudgetsConfig, models: Sequence[str]) -> list[Cap]:
    caps: list[Cap] = []
    if principal.daily_budget_usd is not None or principal.monthly_budget_usd is not None:
        caps.append(Cap(f"principal:{principal.name}", principal.daily_budget_usd, principal.monthly_budget_usd))
    if principal.key_id and (principal.key_daily_budget_usd is not None or principal.key_monthly_budget_usd is not None):
        caps.append(Cap(f"key:{principal.key_id}", principal.key_daily_budget_usd, principal.key_monthly_budget_usd))
    wanted = {"global": "global"}
    if principal.customer:
        wanted[f"customer:{principal.customer}"] = "customer:*"
    if principal.department:
        wanted[f"department:{principal.department}"] = "department:*"
    if principal.project:
        wanted[f"project:{principal.project}"] = "project:*"
    for m in models:
        wanted[f"model:{m}"] = "model:*"
    for scope, wildcard in wanted.items():
        c = cfg.caps.get(scope) or cfg.caps.get(wildcard)  # a named cap wins over the per-member default
        if c is not None and (c.daily_usd is not None or c.monthly_usd is not None):
            caps.append(Cap(scope, c.daily_usd, c.monthly_usd))
    return caps


def limits_for(principal: Principal) -> list[RateLimit]:
    """The principal's rate limits (shared by its keys) and its key's own."""
    out = []
    if principal.rpm is not None or principal.tpm is not None:
        out.append(RateLimit(f"principal:{principal.name}", principal.rpm, principal.tpm))
    if principal.key_id and (principal.key_rpm is not None or principal.key_tpm is not None):
        out.append(RateLimit(f"key:{principal.key_id}", principal.key_rpm, principal.key_tpm))
    return out


@dataclass(frozen=True, slots=True)
class Grade:
    """What the budgets do to this request: a step (None: nothing), the cap that drove it, and the models that
    leave the plan because their own cap is spent."""

    step: str | None  # "cheaper" | "fallback_only" | None
    scope: str | None = None
    level: float = 0.0  # consumption of the driving cap, 0..1+
    why: str = ""
    spent_models: frozenset[str] = frozenset()

    @property
    def header(self) -> str | None:
        return f"{self.scope} {self.level:.0%} {self.step}" if self.step else None


_What = tuple[str, float, float | None]  # (period, cap USD, projected month USD or None)


def grade(caps: Sequence[Cap], adm: Admission, cfg: BudgetsConfig) -> Grade:
    """Pick the step for the highest consumption across ``caps`` (the projection may raise it)."""
    # (level, scope, what) — ``what`` is formatted by _what only for the cap that drives a step (the message was
    # built for every cap of every request)
    best: tuple[float, str, _What] | None = None
    spent_models: set[str] = set()
    for cap in caps:
        u = adm.usage.get(cap.scope)
        if u is None:
            continue
        levels: list[tuple[float, _What]] = []
        if cap.daily_usd:
            levels.append(((u.daily_spent + u.daily_reserved) / cap.daily_usd, ("daily", cap.daily_usd, None)))
        if cap.monthly_usd:
            levels.append(((u.monthly_spent + u.monthly_reserved) / cap.monthly_usd,
                           ("monthly", cap.monthly_usd, None)))
            projected = project_month(u.monthly_spent, u.past_days, adm.now, cfg.projection_min_days)
            if projected is not None and projected > cap.monthly_usd and cfg.steps:
                levels.append((cfg.steps[0].at, ("monthly", cap.monthly_usd, projected)))
        for level, what in levels:
            if cap.scope.startswith("model:"):
                if level >= 1.0:
                    spent_models.add(cap.scope[len("model:"):])
                continue
            if best is None or level > best[0]:
                best = (level, cap.scope, what)
    step = None
    if best is not None:
        for s in cfg.steps:
            if best[0] >= s.at:
                step = s.action
    if step is None:
        return Grade(None, spent_models=frozenset(spent_models))
    assert best is not None
    return Grade(step, best[1], best[0], f"budget {best[1]} {_what(best[2])} at {best[0]:.0%}: {_WORDS[step]}",
                 frozenset(spent_models))


def _what(w: _What) -> str:
    period, usd, projected = w
    return f"{period} ${usd:g}" + ("" if projected is None else f": projected ${projected:.2f}")


_WORDS = {"cheaper": "cheaper models only", "fallback_only": "the tier's fallback model only"}


def project_month(mtd: float, past_days: Sequence[float], now: float, min_days: int) -> float | None:
    """Month-to-date spend + a robust daily rate (the median of this month's past days) × the days left, today
    included; None until ``min_days`` past days are known (too little history to say)."""
    if len(past_days) < min_days:
        return None
    t = time.gmtime(now)
    days_in_month = calendar.monthrange(t.tm_year, t.tm_mon)[1]
    left = days_in_month - t.tm_mday + 1 - (now % 86400) / 86400  # the rest of today counts as a fraction
    return mtd + statistics.median(past_days) * left


def exclusions(step: str | None, candidates: Sequence[str], fallback: str, cost: dict[str, float],
               spent_models: frozenset[str], reason: str) -> dict[str, str]:
    """Models a budget step takes out of a plan (``cost``: this request's estimate per model). ``cheaper`` keeps
    the cheaper half (at least one) and the fallback; ``fallback_only`` keeps the fallback alone."""
    out = {m: "its model budget is spent" for m in candidates if m in spent_models and m != fallback}
    if step == "fallback_only":
        out.update({m: reason for m in candidates if m != fallback})
    elif step == "cheaper":
        ranked = sorted((m for m in candidates if m != fallback), key=lambda m: cost.get(m, 0.0))
        keep = max(1, len(ranked) // 2)
        out.update({m: reason for m in ranked[keep:]})
    return out
