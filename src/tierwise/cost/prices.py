"""Where a model's price comes from: config, local TCO, or the genai-prices catalogue (in that order).

Explicit beats inferred: an operator's ``price:`` block is a negotiated or self-hosted rate the catalogue cannot know;
a ``local:`` block means nobody bills per token at all; only then do we ask genai-prices, which ships a maintained
catalogue inside the wheel. We read the bundled snapshot only and never call its auto-updater, so resolution is
offline and deterministic.

Catalogue caveats, resolved conservatively:

- Long-context tiers (e.g. a higher rate above 200k prompt tokens) are flattened to the base rate; the note on the
  :class:`ResolvedPrice` says so.
- Prices that changed over time resolve to the rate in force now.
- A missing cache-read or cache-write price falls back to the input price (OpenAI, for instance, has no cache-write
  rate because writes are not billed apart).
- Models served by the in-process ``llamacpp`` provider are never looked up: a hosted price for the same weights says
  nothing about what running them here costs. Give them ``local:`` or ``price:``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import urlsplit

from tierwise.config.schema import ModelConfig, ProviderConfig
from tierwise.cost.tco import TCOBreakdown, tco_breakdown

__all__ = ["PriceSource", "ResolvedPrice", "resolve_price"]

PriceSource = Literal["config", "genai-prices", "local-tco"]


@dataclass(frozen=True, slots=True)
class ResolvedPrice:
    """USD per 1M tokens for each billing bucket of :class:`~tierwise.types.Usage`.

    ``reasoning`` is None when reasoning tokens cost the same as other output (every major provider today).
    ``catalogue_ref`` names the genai-prices entry that matched (``provider/model``), so a surprising price can be
    traced; ``note`` records any simplification made while resolving.
    """

    input: float
    output: float
    cache_read: float
    cache_write: float
    reasoning: float | None = None
    source: PriceSource = "config"
    tco: TCOBreakdown | None = None
    catalogue_ref: str | None = None
    note: str | None = None


def resolve_price(model_key: str, model: ModelConfig, provider: ProviderConfig) -> ResolvedPrice | None:
    """The price of ``model``, or None when neither config nor the catalogue knows it.

    Lookup in genai-prices uses the upstream name (``model.upstream or model_key``) and the provider inferred from
    ``provider.base_url`` / ``provider.format``; see :func:`_lookup_catalogue` for the exact order.
    """
    if model.price is not None:
        p = model.price
        return ResolvedPrice(
            input=p.input,
            output=p.output,
            cache_read=p.input if p.cache_read is None else p.cache_read,
            cache_write=p.input if p.cache_write is None else p.cache_write,
            reasoning=p.reasoning,
            source="config",
        )
    if model.local is not None:
        b = tco_breakdown(model.local)
        return ResolvedPrice(
            input=b.input_usd_per_mtok,
            output=b.output_usd_per_mtok,
            cache_read=b.input_usd_per_mtok,
            cache_write=b.input_usd_per_mtok,
            reasoning=None,
            source="local-tco",
            tco=b,
        )
    if provider.format == "llamacpp":
        return None
    return _lookup_catalogue(model.upstream or model_key, provider)


_LOOPBACK_HOSTS = re.compile(r"^(localhost|127\.\d+\.\d+\.\d+|\[?::1\]?|0\.0\.0\.0)$", re.IGNORECASE)


def _is_local_url(base_url: str | None) -> bool:
    if not base_url:
        return True
    host = urlsplit(base_url).hostname or ""
    return bool(_LOOPBACK_HOSTS.match(host))


def _lookup_catalogue(model_ref: str, provider: ProviderConfig) -> ResolvedPrice | None:
    """Find ``model_ref`` in the bundled genai-prices snapshot.

    1. If ``base_url`` identifies a catalogue provider (api.openai.com, openrouter.ai, api.together.xyz, ...), only
       that provider (and the providers it officially resells) is searched: another vendor's list price would be
       the wrong bill.
    2. Otherwise (self-hosted proxy, loopback test server) try the provider named by the wire format
       (``openai`` / ``anthropic``), then genai-prices' own model-name inference (``claude*`` -> Anthropic,
       ``gemini*`` -> Google, ...), i.e. the model vendor's list price.
    """
    from genai_prices import data_snapshot  # lazy: the catalogue is ~30k lines of Python

    snapshot = data_snapshot.get_snapshot()
    attempts: list[dict[str, Any]] = []
    if provider.base_url and not _is_local_url(provider.base_url):
        try:
            snapshot.find_provider(None, None, provider.base_url)
        except LookupError:
            pass
        else:
            attempts.append({"provider_api_url": provider.base_url})
    if not attempts:
        if provider.format in ("openai", "anthropic"):
            attempts.append({"provider_id": provider.format})
        attempts.append({})

    for attempt in attempts:
        try:
            cat_provider, cat_model = snapshot.find_provider_model(
                model_ref, None, attempt.get("provider_id"), attempt.get("provider_api_url")
            )
        except LookupError:
            continue
        resolved = _from_catalogue(cat_model.get_prices(datetime.now(tz=UTC)))
        if resolved is not None:
            return replace(resolved, catalogue_ref=f"{cat_provider.id}/{cat_model.id}")
    return None


def _rate(model_price: Any, *keys: str) -> tuple[float | None, bool]:
    """First set price among ``keys`` as float, and whether it was tiered (then its base rate is used)."""
    for key in keys:
        value = getattr(model_price, key, None)
        if value is None:
            continue
        if isinstance(value, Decimal):
            return float(value), False
        base = getattr(value, "base", None)  # genai_prices.types.TieredPrices
        if isinstance(base, Decimal):
            return float(base), True
    return None, False


def _from_catalogue(model_price: Any) -> ResolvedPrice | None:
    inp, t_in = _rate(model_price, "input_mtok", "input_text_mtok")
    out, t_out = _rate(model_price, "output_mtok", "output_text_mtok")
    if inp is None or out is None:  # no per-token price (e.g. subscription-only or per-request models)
        return None
    cache_read, t_cr = _rate(model_price, "cache_read_mtok", "cache_text_read_mtok")
    cache_write, t_cw = _rate(model_price, "cache_write_mtok", "cache_write_5m_mtok", "cache_text_write_mtok")
    reasoning, t_r = _rate(model_price, "output_reasoning_mtok", "output_text_reasoning_mtok")
    tiered = t_in or t_out or t_cr or t_cw or t_r
    return ResolvedPrice(
        input=inp,
        output=out,
        cache_read=inp if cache_read is None else cache_read,
        cache_write=inp if cache_write is None else cache_write,
        reasoning=reasoning,
        source="genai-prices",
        note="long-context tier prices ignored; base rates used" if tiered else None,
    )
