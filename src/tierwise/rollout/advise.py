"""``tierwise advise``: will routing pay on this traffic? Plain verdicts, each with the numbers behind it.

Seed 003's "Skip Routing When", made checks on the ledger (and on trial results when there are some):

- **not enough traffic** to judge: fewer than ``min_requests`` requests in the window;
- **no task mix yet**: one tier (or direct model names, which routing cannot touch) carries ``mix_share`` of the
  requests or more — there is nothing to route between;
- **one capability needed everywhere**: ``capability_share`` of the spend or more is on tiers that offer no model
  meaningfully cheaper than the flagship (under half its blended price), or whose cheaper models failed the trial;
- **spend too small**: the most routing could save — every request of a routable tier on its tier's cheapest
  model, served tokens priced, projected to 30 days — is below ``engineering_usd_per_month``, what owning routing
  costs (calibration, trials, reviews, on-call). This is an upper bound; real savings are lower;
- **cheaper models fail the trial**: in the trial results, every candidate of the tiers holding most of the spend is
  worse than the incumbent by more than ``tolerance`` even at the top of its 95 % interval.

The thresholds are operator policy, not fitted to any data: change them with the CLI flags.

Trial results (``--trial FILE``, JSON)::

    {"tiers": {"<tier>": {"incumbent": "<model>", "incumbent_quality": 0.91,
      "candidates": {"<model>": {"n": 200, "quality": 0.84, "ci_low": 0.79, "ci_high": 0.89}}}}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from tierwise.rollout.aggregate import TrafficGroup
from tierwise.rollout.pricefile import blended, usage_cost

if TYPE_CHECKING:
    from tierwise.config.schema import TierwiseConfig
    from tierwise.cost.prices import ResolvedPrice


@dataclass(frozen=True, slots=True)
class Thresholds:
    min_requests: int = 1000
    mix_share: float = 0.9
    capability_share: float = 0.8
    engineering_usd_per_month: float = 500.0
    tolerance: float = 0.02
    cheap_ratio: float = 0.5  # "meaningfully cheaper": under this share of the flagship's blended price


@dataclass(slots=True)
class Verdict:
    check: str
    blocks: bool  # True: this reason says do not route (yet)
    says: str
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Advice:
    route: bool
    summary: str
    verdicts: list[Verdict]
    window_days: float

    def as_dict(self) -> dict[str, Any]:
        return {"route": self.route, "summary": self.summary, "window_days": self.window_days,
                "verdicts": [{"check": v.check, "blocks": v.blocks, "says": v.says, "numbers": v.numbers}
                             for v in self.verdicts]}


class TrialFileError(ValueError):
    pass


def load_trial(path: str | Path) -> dict[str, dict[str, Any]]:
    """Per tier: {"incumbent", "incumbent_quality", "candidates": {model: {"quality", "ci_low", "ci_high", "n"}}}."""
    p = Path(path)
    try:
        doc = orjson.loads(p.read_bytes())
    except OSError as exc:
        raise TrialFileError(f"{p}: cannot read: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise TrialFileError(f"{p}: not valid JSON: {exc}") from None
    tiers = doc.get("tiers") if isinstance(doc, dict) else None
    if not isinstance(tiers, dict):
        raise TrialFileError(f"{p}: expected {{\"tiers\": {{tier: {{incumbent_quality, candidates}}}}}}")
    for tier, t in tiers.items():
        if not isinstance(t, dict) or not isinstance(t.get("incumbent_quality"), int | float) \
                or not isinstance(t.get("candidates"), dict):
            raise TrialFileError(f"{p}: tier '{tier}' needs a numeric incumbent_quality and a candidates mapping")
        for model, c in t["candidates"].items():
            if not isinstance(c, dict) or not isinstance(c.get("ci_high", c.get("quality")), int | float):
                raise TrialFileError(f"{p}: tier '{tier}', candidate '{model}' needs quality and ci_high")
    return tiers


def _usd(v: float) -> str:
    return f"${v:,.2f}"


def advise(cfg: TierwiseConfig, groups: list[TrafficGroup], prices: dict[str, ResolvedPrice], flagship: str,
           window_days: float, trial: dict[str, dict[str, Any]] | None = None,
           th: Thresholds = Thresholds()) -> Advice:
    requests = sum(g.requests for g in groups)
    spend = sum(g.cost_usd for g in groups)
    per_month = 30.0 / window_days if window_days > 0 else 0.0
    verdicts: list[Verdict] = []

    verdicts.append(Verdict(
        "enough traffic", requests < th.min_requests,
        f"{requests:,} requests in {window_days:.1f} days" + (
            f": fewer than {th.min_requests:,}, too few to judge a task mix or a saving" if requests < th.min_requests
            else ""),
        {"requests": requests, "min_requests": th.min_requests}))

    by_tier: dict[str, int] = {}
    spend_by_tier: dict[str, float] = {}
    for g in groups:
        key = g.tier or "(direct model names)"
        by_tier[key] = by_tier.get(key, 0) + g.requests
        spend_by_tier[key] = spend_by_tier.get(key, 0.0) + g.cost_usd
    top_tier, top_n = max(by_tier.items(), key=lambda kv: kv[1]) if by_tier else ("-", 0)
    top_share = top_n / requests if requests else 0.0
    verdicts.append(Verdict(
        "task mix", requests > 0 and top_share >= th.mix_share,
        f"{len(by_tier)} tier(s) in use; the largest, '{top_tier}', has {top_share:.0%} of requests"
        + (" — no task mix yet: nothing to route between" if requests and top_share >= th.mix_share else ""),
        {"tiers": by_tier, "largest": top_tier, "largest_share": top_share, "threshold": th.mix_share}))

    flag_blend = blended(prices[flagship])
    failing = _failing_tiers(trial, th.tolerance) if trial else {}
    capability_spend = 0.0
    cheap_tiers: dict[str, str] = {}
    for tier, t in cfg.tiers.items():
        pool = [m for m in t.models if m in prices]
        cheapest = min(pool, key=lambda m: blended(prices[m])) if pool else None
        if cheapest is not None and blended(prices[cheapest]) < th.cheap_ratio * flag_blend and tier not in failing:
            cheap_tiers[tier] = cheapest
    for key, s in spend_by_tier.items():
        if key not in cheap_tiers:
            capability_spend += s
    cap_share = capability_spend / spend if spend > 0 else 0.0
    verdicts.append(Verdict(
        "capability", spend > 0 and cap_share >= th.capability_share,
        f"{cap_share:.0%} of spend ({_usd(capability_spend)}) names models directly or is on tiers with no model under "
        f"{th.cheap_ratio:.0%} of {flagship}'s price" + (" or whose cheaper models failed the trial" if failing else "")
        + (" — one capability is needed almost everywhere: routing can touch only the rest"
           if spend > 0 and cap_share >= th.capability_share else ""),
        {"capability_spend_usd": capability_spend, "share": cap_share, "threshold": th.capability_share,
         "routable_tiers": cheap_tiers}))

    ceiling = 0.0
    for g in groups:
        cheap = cheap_tiers.get(g.tier or "")
        if cheap is None or g.model is None:
            continue
        ceiling += max(0.0, g.cost_usd - usage_cost(prices[cheap], *g.served()) - g.estimated_usd)
    ceiling_month = ceiling * per_month
    verdicts.append(Verdict(
        "spend", ceiling_month < th.engineering_usd_per_month,
        f"spend {_usd(spend)} in the window ({_usd(spend * per_month)}/month); the most routing could save is "
        f"{_usd(ceiling_month)}/month (every routable request on its tier's cheapest model)"
        + (f", below the {_usd(th.engineering_usd_per_month)}/month it costs to own routing"
           if ceiling_month < th.engineering_usd_per_month else ""),
        {"spend_usd": spend, "spend_per_month_usd": spend * per_month, "max_savings_per_month_usd": ceiling_month,
         "engineering_usd_per_month": th.engineering_usd_per_month}))

    if trial is not None:
        tried_spend = sum(spend_by_tier.get(t, 0.0) for t in trial)
        failed_spend = sum(spend_by_tier.get(t, 0.0) for t in failing)
        blocks = tried_spend > 0 and failed_spend >= 0.5 * tried_spend
        detail = "; ".join(f"{t}: {why}" for t, why in failing.items()) or "every tier has a candidate within tolerance"
        verdicts.append(Verdict(
            "trial", blocks,
            f"cheaper models fail the trial on {len(failing)} of {len(trial)} tier(s) "
            f"({_usd(failed_spend)} of {_usd(tried_spend)} tried spend): {detail}",
            {"failing": failing, "tried_spend_usd": tried_spend, "failed_spend_usd": failed_spend,
             "tolerance": th.tolerance}))
    else:
        verdicts.append(Verdict("trial", False, "no trial results (tierwise trial): quality of cheaper models on "
                                "this traffic is unknown — run one before routing", {}))

    blocking = [v for v in verdicts if v.blocks]
    if blocking:
        summary = "routing will not pay yet: " + "; ".join(v.check for v in blocking)
    else:
        summary = (f"routing should pay: up to {_usd(ceiling_month)}/month at stake on "
                   f"{', '.join(cheap_tiers) or '-'}" + ("" if trial else "; confirm quality with tierwise trial"))
    return Advice(not blocking, summary, verdicts, window_days)


def _failing_tiers(trial: dict[str, dict[str, Any]], tolerance: float) -> dict[str, str]:
    """Tiers where every candidate is worse than the incumbent beyond ``tolerance`` at the top of its interval."""
    out = {}
    for tier, t in trial.items():
        inc = float(t["incumbent_quality"])
        cands = t["candidates"]
        if not cands:
            continue
        worst = {m: float(c.get("ci_high", c.get("quality"))) for m, c in cands.items()}
        if all(q < inc - tolerance for q in worst.values()):
            best = max(worst, key=lambda m: worst[m])
            out[tier] = f"best candidate {best} reaches at most {worst[best]:.2f} against the incumbent's {inc:.2f}"
    return out
