"""Cost estimate before the call, used to reserve budget; the reported usage settles it afterwards.

Prompt tokens come from the tokenizer; completion tokens from the tier's or model's expectation, capped by the
client's own ``max_tokens`` (a client that allows 50 tokens cannot be billed for 256). The whole prompt is priced
at the plain input rate: whether the provider will hit its cache is unknowable up front, and for OpenAI-style
caches (reads cheaper, no write surcharge) that makes the estimate an upper bound. Anthropic cache *writes* cost
1.25x input, so a request that creates a large cache entry can exceed its estimate by up to 25% on the prompt side.
"""

from __future__ import annotations

from typing import Any

from tierwise.config.schema import ModelConfig
from tierwise.cost.calc import cost_of
from tierwise.cost.prices import ResolvedPrice
from tierwise.cost.tokens import count_chat_tokens
from tierwise.types import Cost, Usage

__all__ = ["estimate", "expected_output"]


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


def estimate(
    body: dict,
    model: ModelConfig,
    price: ResolvedPrice,
    expected_output_tokens: int,
    *,
    model_name: str | None = None,
) -> tuple[Usage, Cost]:
    """Estimated usage and cost of sending ``body`` to ``model``.

    ``model_name`` (the config key) picks the tokenizer when ``model.upstream`` is unset; pass it, since
    :class:`ModelConfig` does not know its own key. Otherwise the request's ``model`` field is used.
    """
    name = model.upstream or model_name or str(body.get("model") or "")
    usage = Usage(
        input_tokens=count_chat_tokens(body, model.tokenizer, name),
        output_tokens=expected_output(body, expected_output_tokens),
    )
    return usage, cost_of(usage, price)
