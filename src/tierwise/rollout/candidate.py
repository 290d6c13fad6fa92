"""A candidate routing policy, and the two ways to try it on live traffic: ``shadow:`` and ``canary:``.

A candidate is a set of tier blocks (the same ``TierConfig`` as ``tiers:``) that replace the incumbent's tiers of the
same name; tiers it does not name keep the incumbent's policy. The candidate runs through the very same
:class:`~tierwise.routing.engine.RoutingEngine` as the incumbent (:func:`candidate_config` builds the configuration
that engine is given), so what a shadow records and what a canary serves is what the candidate would do in
production, not a re-implementation of it.

This module imports only pydantic at import time: ``config/schema.py`` imports it, and the ``TierConfig`` forward
reference is resolved there (:func:`resolve_forward_refs`), which keeps the import graph acyclic.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from tierwise.config.schema import TierConfig, TierwiseConfig

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShadowConfig(_Strict):
    """Serve the current policy; let a candidate policy decide in parallel and record what it would have done.

    The candidate's decision runs after the served request's own routing, as a background task: it never delays,
    changes or fails the answer. With ``call_share`` > 0 a sampled share of requests is also sent to the candidate's
    choice (non-streamed, its answer discarded), booked on the ledger with ``principal: shadow:<name>`` and tag
    ``billing: shadow``, against a daily budget of its own.
    """

    name: str = Field(default="shadow", pattern=_NAME, description="names this shadow's records")
    enabled: bool = True
    tiers: dict[str, TierConfig] = Field(
        min_length=1, description="candidate tier blocks; each replaces the incumbent tier of the same name")
    call_share: float = Field(default=0.0, description="share of requests also sent to the candidate, in [0, 1]")
    daily_budget_usd: float = Field(
        default=0.0, ge=0, description="shadow calls stop for the rest of the UTC day once they have cost this")
    max_in_flight: PositiveInt = Field(
        default=4, description="shadow calls running at once; a request arriving beyond it is not shadow-called")
    timeout_s: PositiveFloat = Field(default=30.0, description="a shadow call is abandoned after this")
    queue_max: PositiveInt = Field(
        default=10_000, description="shadow records waiting to be written; beyond it they are dropped (and counted)")

    @field_validator("call_share")
    @classmethod
    def _share(cls, v: float) -> float:
        return _check_share("shadow.call_share", v)

    @model_validator(mode="after")
    def _budget(self) -> ShadowConfig:
        if self.call_share > 0 and self.daily_budget_usd <= 0:
            raise ValueError("shadow.call_share > 0 calls the candidate for real: give it shadow.daily_budget_usd "
                             "(its own daily budget in USD)")
        return self


class CanaryConfig(_Strict):
    """Send a share of traffic, sticky per session or principal, to a candidate policy; record the arm on the ledger.

    ``share`` is where the canary starts: once ``tierwise canary promote|rollback|set-share`` has recorded a share
    for ``name`` in the arms store, every gateway uses that instead (read every ``refresh_s``), with no restart.
    """

    name: str = Field(pattern=_NAME, description="the canary's name (ledger arm 'canary:<name>' / 'control:<name>')")
    share: float = Field(description="fraction of traffic in [0, 1] routed by the candidate (0.05 = 5 %)")
    sticky: Literal["session", "principal"] = Field(
        default="session",
        description="what keeps a caller in one arm: session (X-Session-Id / user; the principal when the request "
                    "has none) or principal")
    tiers: dict[str, TierConfig] = Field(
        min_length=1, description="candidate tier blocks; each replaces the incumbent tier of the same name")
    refresh_s: PositiveFloat = Field(default=2.0, description="how often gateways re-read the canary's share")

    @field_validator("share")
    @classmethod
    def _share(cls, v: float) -> float:
        return _check_share("canary.share", v)


def _check_share(what: str, v: float) -> float:
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{what} is a fraction of traffic in [0, 1] (0.05 = 5 %), got {v:g}")
    return v


def resolve_forward_refs(tier_config: type[Any]) -> None:
    """Called by ``config/schema.py`` once ``TierConfig`` exists."""
    for model in (ShadowConfig, CanaryConfig):
        model.model_rebuild(_types_namespace={"TierConfig": tier_config})


def candidate_config(cfg: TierwiseConfig, tiers: dict[str, TierConfig]) -> TierwiseConfig:
    """``cfg`` with the candidate's tier blocks in place of the incumbent's (a copy; ``cfg`` is not changed)."""
    return cfg.model_copy(update={"tiers": {**cfg.tiers, **tiers}})


def candidate_problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, message) for candidate tiers that name an unknown tier or model (the loader's cross-check)."""
    from tierwise.config.load import _tier_references

    tiers, models = data.get("tiers"), data.get("models")

    def unknown_model(name: Any) -> bool:
        return isinstance(name, str) and isinstance(models, dict) and name not in models

    out: list[tuple[str, str]] = []
    for section in ("shadow", "canary"):
        block = data.get(section)
        cand = block.get("tiers") if isinstance(block, dict) else None
        if not isinstance(cand, dict):
            continue
        for tname, raw in cand.items():
            if isinstance(tiers, dict) and tname not in tiers:
                out.append((f"{section}.tiers.{tname}", f"unknown tier '{tname}': a candidate replaces tiers of "
                            "tiers:, it cannot add new ones"))
                continue
            for p in _tier_references(str(tname), raw if isinstance(raw, dict) else {}, unknown_model):
                out.append((f"{section}.{p.path}", p.message))
    return out


def arm_tag(name: str, canary: bool) -> str:
    """The ledger ``arm`` value of a request in canary ``name``."""
    return f"{'canary' if canary else 'control'}:{name}"


def check_name(name: str) -> str:
    """A canary/shadow name as the CLI receives it; raises ValueError on anything else."""
    if not re.match(_NAME, name):
        raise ValueError(f"'{name}' is not a canary name (letters, digits, '_', '.', '-'; at most 64)")
    return name
