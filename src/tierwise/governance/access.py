"""What a caller may use: tiers and models by the principal's allow-lists (403 when a request asks for more)."""

from __future__ import annotations

from collections.abc import Iterable

from tierwise.config.schema import TierwiseConfig
from tierwise.errors import APIError
from tierwise.governance.principal import Principal


def check_tier(principal: Principal, tier: str | None, model: str | None, cfg: TierwiseConfig) -> None:
    """Raise 403 when the request names a tier, or (bypassing tiers) a model, the caller may not use."""
    if tier is not None and principal.refuses_tier(tier):
        raise APIError(403, f"this API key may not use tier '{tier}'" + _allowed(principal.allowed_tiers),
                       type="permission_error", code="tier_not_allowed", param="model")
    if tier is None and model is not None:
        why = _refusal(principal, model, cfg)
        if why is not None:
            raise APIError(403, f"model '{model}' is {why}" + ("" if "reserved" in why else
                           _allowed(principal.allowed_models)), type="permission_error", code="model_not_allowed",
                           param="model")


def excluded_models(principal: Principal, models: Iterable[str], cfg: TierwiseConfig) -> dict[str, str]:
    """The models of a plan the caller may not use, each with the reason the ledger records."""
    out = {}
    for m in models:
        why = _refusal(principal, m, cfg)
        if why is not None:
            out[m] = why
    return out


def _refusal(principal: Principal, model: str, cfg: TierwiseConfig) -> str | None:
    """Why the caller may not use ``model``: its key's allow-list, or the model is reserved for value tiers
    (premium may reach flagship models; free is held to cheap and local ones)."""
    if principal.refuses_model(model):
        return "not allowed for this API key"
    mcfg = cfg.models.get(model)
    if mcfg is not None and mcfg.value_tiers is not None and principal.value_tier not in mcfg.value_tiers:
        return f"reserved for value tiers {', '.join(mcfg.value_tiers)}"
    return None


def no_model_left(tier: str) -> APIError:
    return APIError(403, f"this API key may use none of the models of tier '{tier}'",
                    type="permission_error", code="model_not_allowed", param="model")


def _allowed(names: frozenset[str] | None) -> str:
    return f" (allowed: {', '.join(sorted(names))})" if names else ""
