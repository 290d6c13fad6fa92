"""Price resolution (config -> local TCO -> genai-prices), TCO arithmetic and the price report."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import genai_prices
import pytest

from tierwise.config.schema import LocalTCO, ModelConfig, ProviderConfig, TokenPrice
from tierwise.cost import ResolvedPrice, cost_of, price_report, resolve_price, tco_breakdown
from tierwise.types import Usage

EXACT = {"rel": 1e-12, "abs": 0.0}
OPENAI = ProviderConfig(format="openai", base_url="https://api.openai.com/v1")
ANTHROPIC = ProviderConfig(format="anthropic", base_url="https://api.anthropic.com")
LOOPBACK = ProviderConfig(format="openai", base_url="http://127.0.0.1:8771/v1")
LLAMACPP = ProviderConfig(format="llamacpp")

TCO = LocalTCO(
    hardware_usd=3000,
    depreciation_years=3,
    watts=300,
    usd_per_kwh=0.15,
    maintenance_usd_per_year=200,
    tokens_per_second=50,
    utilisation=0.5,
    input_token_weight=0.1,
)


def _catalogue_rate(model_ref: str, provider_id: str, **tokens: int) -> float:
    """The catalogue's own answer: price genai-prices computes for 1M tokens of one kind."""
    calc = genai_prices.calc_price(genai_prices.Usage(**tokens), model_ref, provider_id=provider_id)
    return float(calc.total_price)


def test_config_price_wins_and_defaults_cache_to_input() -> None:
    model = ModelConfig(provider="p", upstream="gpt-4o", price=TokenPrice(input=1.0, output=2.0))
    price = resolve_price("fast", model, OPENAI)
    assert price == ResolvedPrice(
        input=1.0, output=2.0, cache_read=1.0, cache_write=1.0, reasoning=None, source="config"
    )


def test_config_price_keeps_explicit_cache_and_reasoning() -> None:
    tp = TokenPrice(input=3, output=15, cache_read=0.3, cache_write=3.75, reasoning=20)
    price = resolve_price("m", ModelConfig(provider="p", price=tp), ANTHROPIC)
    assert (price.cache_read, price.cache_write, price.reasoning) == (0.3, 3.75, 20)


def test_tco_numbers_by_hand() -> None:
    # hardware:    3000 / (3 x 8760 h)     = 0.114155251141553 $/h
    # power:       300 W / 1000 x 0.15     = 0.045             $/h
    # maintenance: 200 / 8760 h            = 0.022831050228311 $/h
    # total                                = 0.181986301369863 $/h
    # tokens/h:    50 tok/s x 3600 x 0.5   = 90,000
    # output:      0.181986301369863 / 90,000 x 1e6 = 2.02207001522070 $/1M; input = x 0.1 = 0.202207001522070 $/1M
    hardware = Fraction(3000, 3 * 8760)
    power = Fraction(300, 1000) * Fraction(15, 100)
    maintenance = Fraction(200, 8760)
    output = (hardware + power + maintenance) / 90_000 * 1_000_000
    b = tco_breakdown(TCO)
    assert b.hardware_usd_per_hour == pytest.approx(float(hardware), **EXACT)
    assert b.power_usd_per_hour == pytest.approx(0.045, **EXACT)
    assert b.maintenance_usd_per_hour == pytest.approx(float(maintenance), **EXACT)
    assert b.tokens_per_hour == 90_000
    assert b.output_usd_per_mtok == pytest.approx(float(output), **EXACT)
    assert b.output_usd_per_mtok == pytest.approx(2.02207001522070, rel=1e-13)
    assert b.input_usd_per_mtok == pytest.approx(float(output) / 10, **EXACT)

    price = resolve_price("local-small", ModelConfig(provider="llm", local=TCO), LLAMACPP)
    assert price is not None and price.source == "local-tco" and price.tco == b
    assert price.output == b.output_usd_per_mtok and price.input == b.input_usd_per_mtok
    assert price.cache_read == price.input and price.reasoning is None


def test_genai_prices_gpt_4o_mini_matches_catalogue() -> None:
    price = resolve_price("cheap", ModelConfig(provider="openai", upstream="gpt-4o-mini"), OPENAI)
    assert (
        price is not None and price.source == "genai-prices" and price.catalogue_ref == "openai/gpt-4o-mini"
    )
    assert price.input == pytest.approx(_catalogue_rate("gpt-4o-mini", "openai", input_tokens=10**6), **EXACT)
    assert price.output == pytest.approx(
        _catalogue_rate("gpt-4o-mini", "openai", output_tokens=10**6), **EXACT
    )
    # genai-prices counts cache reads inside input_tokens, like OpenAI does.
    cache_read = _catalogue_rate("gpt-4o-mini", "openai", input_tokens=10**6, cache_read_tokens=10**6)
    assert price.cache_read == pytest.approx(cache_read, **EXACT)
    assert (price.input, price.output, price.cache_read) == (0.15, 0.6, 0.075)  # genai-prices 0.2.3 catalogue
    assert price.cache_write == price.input  # OpenAI bills no cache-write surcharge


def test_genai_prices_claude_haiku_matches_catalogue_incl_cache_write() -> None:
    price = resolve_price("claude-3-5-haiku-20241022", ModelConfig(provider="anthropic"), ANTHROPIC)
    assert price is not None and price.catalogue_ref == "anthropic/claude-3-5-haiku-latest"
    ref = "claude-3-5-haiku-20241022"
    assert price.input == pytest.approx(_catalogue_rate(ref, "anthropic", input_tokens=10**6), **EXACT)
    assert price.cache_write == pytest.approx(
        _catalogue_rate(ref, "anthropic", input_tokens=10**6, cache_write_tokens=10**6), **EXACT
    )
    assert (price.input, price.output, price.cache_read, price.cache_write) == (0.8, 4.0, 0.08, 1.0)


def test_whole_bill_agrees_with_genai_prices() -> None:
    price = resolve_price("gpt-4o", ModelConfig(provider="openai"), OPENAI)
    ours = cost_of(Usage(input_tokens=86, cache_read_tokens=1920, output_tokens=300), price).total_usd
    theirs = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=2006, cache_read_tokens=1920, output_tokens=300),
        "gpt-4o",
        provider_id="openai",
    ).total_price
    assert theirs == Decimal("0.005615")
    assert ours == pytest.approx(float(theirs), **EXACT)


def test_provider_inference() -> None:
    bare = ModelConfig(provider="x")
    # A loopback OpenAI-compatible server: fall back to the wire format's vendor.
    assert resolve_price("gpt-4o-mini", bare, LOOPBACK).catalogue_ref == "openai/gpt-4o-mini"
    # Vendor inferred from the model name when the format's vendor does not sell it.
    assert resolve_price("claude-3-5-haiku-20241022", bare, LOOPBACK).catalogue_ref.startswith("anthropic/")
    # base_url names a provider that does not sell the model: another vendor's price would be wrong.
    mistral = ProviderConfig(format="openai", base_url="https://api.mistral.ai/v1")
    assert resolve_price("claude-3-5-haiku", bare, mistral) is None
    openrouter = ProviderConfig(format="openai", base_url="https://openrouter.ai/api/v1")
    assert resolve_price("anthropic/claude-3.5-haiku", bare, openrouter).catalogue_ref.startswith(
        "openrouter/"
    )


def test_unknown_model_and_llamacpp_resolve_to_none() -> None:
    assert resolve_price("no-such-model-xyz", ModelConfig(provider="x"), OPENAI) is None
    assert resolve_price("smollm2", ModelConfig(provider="x"), LOOPBACK) is None
    # In-process llama.cpp is never priced from a hosted catalogue, even under a catalogue name.
    assert resolve_price("gpt-4o", ModelConfig(provider="x"), LLAMACPP) is None


def test_tiered_catalogue_price_uses_base_rate_and_says_so() -> None:
    price = resolve_price("claude-sonnet-4-5", ModelConfig(provider="x"), ANTHROPIC)
    assert price is not None and (price.input, price.output, price.cache_read, price.cache_write) == (
        3,
        15,
        0.3,
        3.75,
    )
    assert price.note and "tier" in price.note


def test_price_report_local_and_catalogue() -> None:
    local = resolve_price("local-small", ModelConfig(provider="llm", local=TCO), LLAMACPP)
    text = price_report("local-small", local, Usage(input_tokens=1000, output_tokens=500))
    assert "local-tco" in text and "hardware" in text and "90,000 tokens/h" in text
    # 1000 x 0.20220700152207 + 500 x 2.0220700152207 = 1213.24200913242 / 1e6 = $0.001213
    assert "$0.001213" in text

    hosted = resolve_price("gpt-4o", ModelConfig(provider="openai"), OPENAI)
    text = price_report("gpt-4o", hosted, Usage(input_tokens=86, cache_read_tokens=1920, output_tokens=300))
    assert "genai-prices (openai/gpt-4o)" in text and "$1.250000" in text and "$0.005615" in text
    assert "hardware" not in text
