"""Plain-text price report for ``tierwise price``: where a price comes from and what a given usage costs."""

from __future__ import annotations

from tierwise.cost.calc import cost_of
from tierwise.cost.prices import ResolvedPrice
from tierwise.types import Usage

__all__ = ["price_report"]


def _usd(value: float) -> str:
    return f"${value:.6f}" if value < 100 else f"${value:,.2f}"


def price_report(model_key: str, resolved: ResolvedPrice, usage: Usage) -> str:
    """Per-1M prices, their source (with the TCO breakdown for local models) and the itemised cost of ``usage``."""
    source = resolved.source + (f" ({resolved.catalogue_ref})" if resolved.catalogue_ref else "")
    lines = [f"model        {model_key}", f"source       {source}"]
    if resolved.note:
        lines.append(f"note         {resolved.note}")
    lines += [
        "",
        "price per 1M tokens",
        f"  input        {_usd(resolved.input)}",
        f"  output       {_usd(resolved.output)}",
        f"  cache read   {_usd(resolved.cache_read)}",
        f"  cache write  {_usd(resolved.cache_write)}",
        "  reasoning    " + ("same as output" if resolved.reasoning is None else _usd(resolved.reasoning)),
    ]
    if resolved.tco is not None:
        lines += ["", "total cost of ownership"] + [f"  {line}" for line in resolved.tco.lines()]

    cost = cost_of(usage, resolved)
    reasoning_apart = resolved.reasoning is not None
    output_tokens = usage.output_tokens - (
        min(usage.reasoning_tokens, usage.output_tokens) if reasoning_apart else 0
    )
    rows = [
        ("input", usage.input_tokens, resolved.input, cost.input_usd),
        ("cache read", usage.cache_read_tokens, resolved.cache_read, cost.cache_read_usd),
        ("cache write", usage.cache_write_tokens, resolved.cache_write, cost.cache_write_usd),
        ("output", output_tokens, resolved.output, cost.output_usd),
    ]
    if reasoning_apart:
        rows.append(
            (
                "reasoning",
                min(usage.reasoning_tokens, usage.output_tokens),
                resolved.reasoning or 0.0,
                cost.reasoning_usd,
            )
        )
    lines += ["", "cost of usage"]
    for label, tokens, rate, usd in rows:
        lines.append(f"  {label:<12} {tokens:>12,} tok x {_usd(rate)}/1M = {_usd(usd)}")
    if usage.reasoning_tokens and not reasoning_apart:
        lines.append(f"  (output includes {usage.reasoning_tokens:,} reasoning tokens at the output rate)")
    lines.append(f"  {'total':<12} {usage.total_tokens:>12,} tok = {_usd(cost.total_usd)}")
    return "\n".join(lines)
