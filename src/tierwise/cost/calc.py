"""Usage x price -> itemised cost. One multiplication per bucket, nothing else.

Because :class:`~tierwise.types.Usage` already splits prompt tokens into disjoint buckets (plain input, cache read,
cache write), summing ``tokens x rate`` over the buckets cannot bill a cached token twice. The only overlap left is
reasoning inside output, handled explicitly below.
"""

from __future__ import annotations

from tierwise.cost.prices import ResolvedPrice
from tierwise.types import Cost, Usage

__all__ = ["cost_of"]

_PER = 1_000_000


def cost_of(usage: Usage, price: ResolvedPrice) -> Cost:
    """Dollar cost of ``usage`` at ``price`` (USD per 1M tokens), per bucket.

    If the model prices reasoning apart (``price.reasoning`` set), ``reasoning_usd`` covers the reasoning tokens and
    ``output_usd`` the rest of the output; otherwise all output tokens, reasoning included, are in ``output_usd`` and
    ``reasoning_usd`` is 0. Reasoning is clamped to the output count so a bad report cannot create extra spend.
    """
    output_tokens = usage.output_tokens
    reasoning_usd = 0.0
    if price.reasoning is not None:
        reasoning_tokens = min(usage.reasoning_tokens, output_tokens)
        output_tokens -= reasoning_tokens
        reasoning_usd = reasoning_tokens * price.reasoning / _PER
    return Cost(
        input_usd=usage.input_tokens * price.input / _PER,
        output_usd=output_tokens * price.output / _PER,
        cache_read_usd=usage.cache_read_tokens * price.cache_read / _PER,
        cache_write_usd=usage.cache_write_tokens * price.cache_write / _PER,
        reasoning_usd=reasoning_usd,
    )
