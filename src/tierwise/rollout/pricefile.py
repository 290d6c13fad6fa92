"""Price tables for counterfactuals and re-pricing: a YAML file, the bundled genai-prices catalogue, the flagship.

A price table file maps model names to USD per 1M tokens, in the shape of a model's ``price:`` block::

    prices:                       # (the top-level key is optional)
      large: {input: 2.0, output: 8.0, cache_read: 0.5}
      small: {input: 0.1, output: 0.4}

Missing cache rates default to the input rate, a missing reasoning rate to the output rate — as in tierwise.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tierwise.cost.calc import cost_of
from tierwise.cost.prices import ResolvedPrice, resolve_price
from tierwise.types import Usage

if TYPE_CHECKING:
    from tierwise.config.schema import TierwiseConfig


class PriceFileError(ValueError):
    """A price table that cannot be used; the message names the file and the entry."""


def load_price_table(path: str | Path) -> dict[str, ResolvedPrice]:
    """Read a price table file (see the module docstring); :class:`PriceFileError` on any problem."""
    import yaml
    from pydantic import ValidationError

    from tierwise.config.schema import ModelConfig

    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PriceFileError(f"{p}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise PriceFileError(f"{p}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if isinstance(doc, dict) and set(doc) == {"prices"}:
        doc = doc["prices"]
    if not isinstance(doc, dict) or not doc:
        raise PriceFileError(f"{p}: expected a mapping of model name -> {{input, output, ...}} (USD per 1M tokens)")
    out: dict[str, ResolvedPrice] = {}
    for name, entry in doc.items():
        try:
            model = ModelConfig(provider="-", price=entry)
        except ValidationError as exc:
            why = "; ".join(f"{'.'.join(str(x) for x in e['loc'][1:]) or 'price'}: {e['msg']}"
                            for e in exc.errors()[:3])
            raise PriceFileError(f"{p}: model '{name}': {why}") from None
        price = resolve_price(str(name), model, None)  # type: ignore[arg-type]  # a config price needs no provider
        assert price is not None
        out[str(name)] = price
    return out


def configured_prices(cfg: TierwiseConfig) -> dict[str, ResolvedPrice]:
    """Each configured model's price, as the gateway resolves it (config, local TCO, genai-prices), without the
    tokenizers a :class:`~tierwise.pricing.PriceBook` loads (reports need prices only: 0.7 s saved per run)."""
    out: dict[str, ResolvedPrice] = {}
    for name, model in cfg.models.items():
        price = resolve_price(name, model, cfg.providers[model.provider])
        if price is None:
            raise PriceFileError(f"no price known for model '{name}' (give it a price: block)")
        out[name] = price
    return out


def catalogue_prices(cfg: TierwiseConfig) -> dict[str, ResolvedPrice]:
    """Each configured model's price in the installed genai-prices catalogue (ignoring ``price:`` overrides), for
    models the catalogue knows: what a newer genai-prices would bill."""
    from tierwise.cost.prices import _lookup_catalogue

    out: dict[str, ResolvedPrice] = {}
    for name, model in cfg.models.items():
        provider = cfg.providers[model.provider]
        if provider.format == "llamacpp" or model.local is not None:
            continue
        found = _lookup_catalogue(model.upstream or name, provider)
        if found is not None:
            out[name] = found
    return out


def blended(price: ResolvedPrice) -> float:
    """USD per 1M tokens at a 3:1 input:output mix: how "expensive" a model is, to find the flagship."""
    return 0.75 * price.input + 0.25 * price.output


def flagship_of(prices: dict[str, ResolvedPrice]) -> str:
    """The most expensive configured model (blended price): what "everything goes to the flagship" means."""
    return max(prices, key=lambda m: (blended(prices[m]), m))


def usage_cost(price: ResolvedPrice, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int,
               reasoning: int) -> float:
    """The cost of summed token counts at ``price`` (cost is linear in tokens, so sums re-price exactly, save for
    reasoning, which is clamped per request by the live cost model and per sum here)."""
    return cost_of(Usage(input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=cache_read,
                         cache_write_tokens=cache_write, reasoning_tokens=reasoning), price).total_usd
