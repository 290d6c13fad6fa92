"""Provider usage -> Usage -> exact dollars, for the usage shapes OpenAI and Anthropic document.

Dollar amounts are worked out by hand in the comments (tokens x $/1M / 1e6 per bucket) and compared with rel=1e-12.
"""

from __future__ import annotations

import pytest

from tierwise.cost import (
    ResolvedPrice,
    cost_of,
    usage_from_anthropic,
    usage_from_anthropic_stream,
    usage_from_openai,
)
from tierwise.types import Usage

EXACT = {"rel": 1e-12, "abs": 0.0}

GPT4O = ResolvedPrice(input=2.50, output=10.00, cache_read=1.25, cache_write=2.50, source="config")
O_SERIES = ResolvedPrice(input=1.10, output=4.40, cache_read=0.55, cache_write=1.10, source="config")
SONNET = ResolvedPrice(input=3.00, output=15.00, cache_read=0.30, cache_write=3.75, source="config")

# OpenAI chat.completion usage as documented (prompt-caching guide / API reference).
OPENAI_CACHED = {
    "prompt_tokens": 2006,
    "completion_tokens": 300,
    "total_tokens": 2306,
    "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


def test_openai_cached_usage_exact_cost() -> None:
    usage = usage_from_openai(OPENAI_CACHED)
    assert usage == Usage(input_tokens=86, output_tokens=300, cache_read_tokens=1920)
    assert usage.prompt_tokens == 2006 and usage.total_tokens == 2306
    cost = cost_of(usage, GPT4O)
    # input:      (2006 - 1920) =   86 tok x $2.50 / 1e6 = $0.000215
    # cache read:               1920 tok x $1.25 / 1e6 = $0.002400
    # output:                    300 tok x $10  / 1e6 = $0.003000
    # total                                             $0.005615
    assert cost.input_usd == pytest.approx(0.000215, **EXACT)
    assert cost.cache_read_usd == pytest.approx(0.0024, **EXACT)
    assert cost.output_usd == pytest.approx(0.003, **EXACT)
    assert cost.cache_write_usd == 0.0 and cost.reasoning_usd == 0.0
    assert cost.total_usd == pytest.approx(0.005615, **EXACT)


def test_cached_tokens_are_not_double_counted() -> None:
    """Regression: the classic bug bills prompt_tokens at the input rate AND cached_tokens at the cache rate."""
    cost = cost_of(usage_from_openai(OPENAI_CACHED), GPT4O)
    double_counted = (2006 * 2.50 + 1920 * 1.25 + 300 * 10.0) / 1e6  # $0.010415
    cache_ignored = (2006 * 2.50 + 300 * 10.0) / 1e6  # $0.008015
    assert cost.total_usd == pytest.approx(0.005615, **EXACT)
    assert cost.total_usd != pytest.approx(double_counted) and cost.total_usd != pytest.approx(cache_ignored)
    # Every prompt token is billed exactly once, in exactly one bucket.
    usage = usage_from_openai(OPENAI_CACHED)
    assert usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens == 2006


def test_openai_o_series_reasoning_inside_completion() -> None:
    usage = usage_from_openai(
        {
            "prompt_tokens": 1200,
            "completion_tokens": 2500,
            "total_tokens": 3700,
            "prompt_tokens_details": {"cached_tokens": 1024},
            "completion_tokens_details": {"reasoning_tokens": 2048},
        }
    )
    assert usage == Usage(input_tokens=176, output_tokens=2500, cache_read_tokens=1024, reasoning_tokens=2048)
    cost = cost_of(usage, O_SERIES)
    # input:  176 x $1.10 = 193.6  -> $0.0001936
    # cache: 1024 x $0.55 = 563.2  -> $0.0005632
    # output: 2500 (reasoning included, billed as output) x $4.40 = 11000 -> $0.011
    # total 0.0001936 + 0.0005632 + 0.011 = $0.0117568; reasoning is not billed a second time
    assert cost.input_usd == pytest.approx(0.0001936, **EXACT)
    assert cost.cache_read_usd == pytest.approx(0.0005632, **EXACT)
    assert cost.output_usd == pytest.approx(0.011, **EXACT)
    assert cost.reasoning_usd == 0.0
    assert cost.total_usd == pytest.approx(0.0117568, **EXACT)


def test_separate_reasoning_rate_splits_output() -> None:
    usage = Usage(input_tokens=176, output_tokens=2500, cache_read_tokens=1024, reasoning_tokens=2048)
    price = ResolvedPrice(input=1.10, output=4.40, cache_read=0.55, cache_write=1.10, reasoning=8.0)
    cost = cost_of(usage, price)
    # visible output: (2500 - 2048) = 452 x $4.40 = 1988.8 -> $0.0019888
    # reasoning:                     2048 x $8.00 = 16384 -> $0.016384
    assert cost.output_usd == pytest.approx(0.0019888, **EXACT)
    assert cost.reasoning_usd == pytest.approx(0.016384, **EXACT)
    assert cost.total_usd == pytest.approx(0.0001936 + 0.0005632 + 0.0019888 + 0.016384, **EXACT)


def test_reasoning_larger_than_output_is_clamped() -> None:
    price = ResolvedPrice(input=1.0, output=2.0, cache_read=1.0, cache_write=1.0, reasoning=3.0)
    cost = cost_of(Usage(output_tokens=10, reasoning_tokens=500), price)
    assert cost.output_usd == 0.0
    assert cost.reasoning_usd == pytest.approx(10 * 3.0 / 1e6, **EXACT)


# Anthropic Messages usage as documented (prompt caching, "Tracking cache performance").
ANTHROPIC_CACHED = {
    "input_tokens": 50,
    "cache_creation_input_tokens": 1000,
    "cache_read_input_tokens": 2000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 0},
    "output_tokens": 400,
    "service_tier": "standard",
}


def test_anthropic_usage_exact_cost() -> None:
    usage = usage_from_anthropic(ANTHROPIC_CACHED)
    assert usage == Usage(input_tokens=50, output_tokens=400, cache_read_tokens=2000, cache_write_tokens=1000)
    assert usage.prompt_tokens == 3050  # input_tokens excludes both cache fields, so they add up
    cost = cost_of(usage, SONNET)
    # input:         50 x $3.00 =  150 -> $0.00015
    # cache write: 1000 x $3.75 = 3750 -> $0.00375
    # cache read:  2000 x $0.30 =  600 -> $0.0006
    # output:       400 x $15   = 6000 -> $0.006
    # total                              $0.0105
    assert cost.input_usd == pytest.approx(0.00015, **EXACT)
    assert cost.cache_write_usd == pytest.approx(0.00375, **EXACT)
    assert cost.cache_read_usd == pytest.approx(0.0006, **EXACT)
    assert cost.output_usd == pytest.approx(0.006, **EXACT)
    assert cost.total_usd == pytest.approx(0.0105, **EXACT)


def test_anthropic_cache_creation_breakdown_only() -> None:
    usage = usage_from_anthropic(
        {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_creation": {"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 200},
        }
    )
    assert usage.cache_write_tokens == 500


def test_anthropic_stream_delta_is_cumulative() -> None:
    start = {
        "input_tokens": 472,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 1800,
        "output_tokens": 2,
    }
    deltas = [{"output_tokens": 120}, {"output_tokens": 503}]  # cumulative counts, the last one is final
    usage = usage_from_anthropic_stream(start, *deltas)
    assert usage == Usage(input_tokens=472, output_tokens=503, cache_read_tokens=1800)
    cost = cost_of(usage, SONNET)
    # input 472 x $3 = 1416 -> $0.001416; cache read 1800 x $0.30 = 540 -> $0.00054;
    # output 503 x $15 = 7545 -> $0.007545 (NOT 2+120+503 = 625 tokens); total $0.009501
    assert cost.total_usd == pytest.approx(0.009501, **EXACT)


def test_anthropic_stream_delta_with_full_counts_and_nulls() -> None:
    start = {"input_tokens": 472, "cache_read_input_tokens": 1800, "output_tokens": 1}
    delta = {
        "input_tokens": None,  # null keeps the message_start value
        "cache_creation_input_tokens": 64,
        "cache_read_input_tokens": 1800,
        "output_tokens": 503,
    }
    assert usage_from_anthropic_stream(start, delta) == Usage(
        input_tokens=472, output_tokens=503, cache_read_tokens=1800, cache_write_tokens=64
    )
    assert usage_from_anthropic_stream(None, None, "junk") == Usage()  # type: ignore[arg-type]


def test_openai_responses_api_shape() -> None:
    usage = usage_from_openai(
        {
            "input_tokens": 125,
            "output_tokens": 48,
            "total_tokens": 173,
            "input_tokens_details": {"cached_tokens": 98},
            "output_tokens_details": {"reasoning_tokens": 16},
        }
    )
    assert usage == Usage(input_tokens=27, output_tokens=48, cache_read_tokens=98, reasoning_tokens=16)


def test_openai_compatible_cache_write_and_deepseek_fields() -> None:
    # OpenRouter: prompt_tokens includes both cached_tokens (reads) and cache_write_tokens (writes).
    openrouter = usage_from_openai(
        {
            "prompt_tokens": 194,
            "completion_tokens": 2,
            "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 100},
        }
    )
    assert openrouter == Usage(input_tokens=94, output_tokens=2, cache_write_tokens=100)
    deepseek = usage_from_openai(
        {
            "prompt_tokens": 100,
            "completion_tokens": 3,
            "prompt_cache_hit_tokens": 64,
            "prompt_cache_miss_tokens": 36,
        }
    )
    assert deepseek == Usage(input_tokens=36, output_tokens=3, cache_read_tokens=64)


@pytest.mark.parametrize(
    "raw, expected",
    [
        (None, Usage()),
        ([], Usage()),
        ("usage", Usage()),
        ({}, Usage()),
        ({"prompt_tokens": None, "completion_tokens": None, "prompt_tokens_details": None}, Usage()),
        ({"prompt_tokens": "12", "completion_tokens": 3.5, "prompt_tokens_details": "x"}, Usage()),
        ({"prompt_tokens": True, "completion_tokens": -5}, Usage()),
        ({"prompt_tokens": 12.0, "completion_tokens": 4}, Usage(input_tokens=12, output_tokens=4)),
        # cached > prompt: clamp so nothing is billed beyond the reported prompt
        ({"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 50}}, Usage(cache_read_tokens=10)),
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "completion_tokens_details": {"reasoning_tokens": 9},
            },
            Usage(input_tokens=10, output_tokens=5, reasoning_tokens=5),
        ),
    ],
)
def test_openai_garbage_never_raises(raw: object, expected: Usage) -> None:
    assert usage_from_openai(raw) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "raw, expected",
    [
        (None, Usage()),
        (42, Usage()),
        ({"input_tokens": None, "output_tokens": "7", "cache_creation": "x"}, Usage()),
        (
            {"input_tokens": 3, "cache_read_input_tokens": None, "cache_creation_input_tokens": None},
            Usage(input_tokens=3),
        ),
        ({"input_tokens": 3, "cache_creation": {"ephemeral_5m_input_tokens": "9"}}, Usage(input_tokens=3)),
    ],
)
def test_anthropic_garbage_never_raises(raw: object, expected: Usage) -> None:
    assert usage_from_anthropic(raw) == expected  # type: ignore[arg-type]


def test_usage_as_dict_has_every_field_in_order() -> None:
    """The ledger's attempts carry usage.as_dict(): written out by hand for speed, it must stay the dataclass's."""
    import dataclasses

    from tierwise.types import Usage

    u = Usage(1, 2, 3, 4, 5)
    assert list(u.as_dict().items()) == list(dataclasses.asdict(u).items())
