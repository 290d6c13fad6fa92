"""Cost estimate before the call, used to reserve budget; the reported usage settles it afterwards.

:class:`tierwise.pricing.RequestEstimator` makes the estimate (one prompt count per encoding per request); this
module holds the completion-length rule it applies.

Prompt tokens come from the tokenizer; completion tokens from the tier's or model's expectation, capped by the
client's own ``max_tokens`` (a client that allows 50 tokens cannot be billed for 256). The whole prompt is priced
at the plain input rate: whether the provider will hit its cache is unknowable up front, and for OpenAI-style
caches (reads cheaper, no write surcharge) that makes the estimate an upper bound. Anthropic cache *writes* cost
1.25x input, so a request that creates a large cache entry can exceed its estimate by up to 25% on the prompt side.
"""

from __future__ import annotations

from typing import Any

__all__ = ["completion_limit", "expected_output"]


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def expected_output(body: dict, expected_output_tokens: int) -> int:
    """Completion tokens to expect: the expectation, capped by ``max_completion_tokens`` (or ``max_tokens``), times ``n``.

    ``max_completion_tokens`` wins over the deprecated ``max_tokens`` when both are sent, as OpenAI does.
    Malformed limits are ignored (the upstream will reject them; the estimate should not).
    """
    limit = _positive_int(body.get("max_completion_tokens")) or _positive_int(body.get("max_tokens"))
    per_choice = (
        max(0, expected_output_tokens) if limit is None else min(limit, max(0, expected_output_tokens))
    )
    return per_choice * (_positive_int(body.get("n")) or 1)


def completion_limit(body: dict, *, cap: int | None = None, floor: int | None = None) -> int | None:
    """The most completion tokens the request allows, over all ``n`` choices: its ``max_completion_tokens`` (or
    ``max_tokens``), lowered to a model's ``max_output`` (``cap``) and raised to a reasoning model's ``floor`` as
    the executor adjusts it for that model; None when the request sets no limit.

    Budgets reserve up to this, not the expectation: a reservation that can be smaller than the real cost would let
    spend pass a cap by more than the reservations in flight."""
    limit = _positive_int(body.get("max_completion_tokens")) or _positive_int(body.get("max_tokens"))
    if limit is None:
        return None
    if cap is not None:
        limit = min(limit, cap)
    if floor is not None:
        limit = max(limit, floor)
    return limit * (_positive_int(body.get("n")) or 1)
