"""What a caller may use: tiers and models by the principal's allow-lists (403 when a request asks for more)."""

from __future__ import annotations

from collections.abc import Iterable

from tierwise.errors import APIError
from tierwise.governance.principal import Principal


def check_tier(principal: Principal, tier: str | None, model: str | None) -> None:
    """Raise 403 when the request names a tier, or (bypassing tiers) a model, the caller may not use."""
    if tier is not None and principal.refuses_tier(tier):
        raise APIError(403, f"this API key may not use tier '{tier}'" + _allowed(principal.allowed_tiers),
                       type="permission_error", code="tier_not_allowed", param="model")
    if tier is None and model is not None and principal.refuses_model(model):
        raise APIError(403, f"this API key may not use model '{model}'" + _allowed(principal.allowed_models),
                       type="permission_error", code="model_not_allowed", param="model")


def excluded_models(principal: Principal, models: Iterable[str]) -> dict[str, str]:
    """The models of a plan the caller may not use, each with the reason the ledger records."""
    return {m: "not allowed for this API key" for m in models if principal.refuses_model(m)}


def no_model_left(tier: str) -> APIError:
    return APIError(403, f"this API key may use none of the models of tier '{tier}'",
                    type="permission_error", code="model_not_allowed", param="model")


def _allowed(names: frozenset[str] | None) -> str:
    return f" (allowed: {', '.join(sorted(names))})" if names else ""
