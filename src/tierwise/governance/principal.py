"""The caller a request is attributed to and governed as."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: what the ledger attributes spend to and what access rules and limits apply to.

    Built once per request from the authenticated key (or the static key list, or nothing on an open gateway) and
    immutable from then on, so that every decision about one request sees the same caller.

    For a virtual key (:mod:`tierwise.governance.auth`) the key's overrides are already applied: a key can narrow
    its principal's access and limits, never widen them (``allowed_tiers``/``allowed_models`` are the principal's
    lists intersected with the key's; each limit is the key's own where it sets one, capped by the principal's).
    """

    name: str
    key_id: str | None = None
    customer: str | None = None
    department: str | None = None
    project: str | None = None
    value_tier: str | None = None  # e.g. free / standard / premium
    allowed_tiers: frozenset[str] | None = None  # None: every tier
    allowed_models: frozenset[str] | None = None  # None: every model
    revenue_per_request_usd: float | None = None
    # the principal's limits, shared by all its keys (scope ``principal:<name>``); None: no limit
    daily_budget_usd: float | None = None
    monthly_budget_usd: float | None = None
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute (prompt + completion)
    # the key's own limits on top (scope ``key:<id>``), never above its principal's; None: none of its own
    key_daily_budget_usd: float | None = None
    key_monthly_budget_usd: float | None = None
    key_rpm: int | None = None
    key_tpm: int | None = None

    def refuses_tier(self, tier: str) -> bool:
        return self.allowed_tiers is not None and tier not in self.allowed_tiers

    def refuses_model(self, model: str) -> bool:
        return self.allowed_models is not None and model not in self.allowed_models


ANONYMOUS = Principal("anonymous")  # an open gateway's callers
UNAUTHENTICATED = Principal("unauthenticated")  # refused before a key could be checked
