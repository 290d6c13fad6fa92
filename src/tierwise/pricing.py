"""Prices of every configured model, resolved once at start-up, and the per-request estimate/settle calls.

Estimation counts the prompt once per tokenizer encoding per request (models sharing an encoding share the count),
so the ``cheapest`` policy and budget reservations cost one tokenisation, not one per candidate.
"""

from __future__ import annotations

import re

from tierwise.config.schema import TierwiseConfig
from tierwise.cost import (
    ResolvedPrice,
    completion_limit,
    cost_of,
    count_chat_tokens,
    encoding_for,
    expected_output,
    get_encoding,
    resolve_price,
)
from tierwise.types import JSON, Cost, Usage

_OPENAI_MODEL = re.compile(r"^(?:ft:)?(?:gpt-|chatgpt-|o\d|text-|davinci|babbage|codex-)")


class PriceBook:
    def __init__(self, cfg: TierwiseConfig) -> None:
        self.cfg = cfg
        self.prices: dict[str, ResolvedPrice] = {}
        self._encodings: dict[str, str] = {}
        approximate: list[str] = []
        for name, model in cfg.models.items():
            price = resolve_price(name, model, cfg.providers[model.provider])
            if price is None:  # the loader already refuses this; keep the invariant local too
                raise ValueError(f"no price known for model '{name}'")
            self.prices[name] = price
            upstream = model.upstream or name
            if model.tokenizer or _OPENAI_MODEL.match(upstream.lower().rsplit("/", 1)[-1]):
                self._encodings[name] = encoding_for(upstream, model.tokenizer)
            else:
                approximate.append(name)
        # Non-OpenAI models (Claude, Llama, Qwen…) are counted with an OpenAI encoding only as an approximation:
        # reuse one the config loads anyway (each costs 40-80 MB of RSS), else the smaller cl100k.
        loaded = set(self._encodings.values())
        fallback = "o200k_base" if "o200k_base" in loaded else "cl100k_base"
        for name in approximate:
            self._encodings[name] = fallback
        for enc in set(self._encodings.values()):
            get_encoding(enc)  # load the BPE tables now, not on the first request (0.1-0.3 s, 40-80 MB each)

    def encoding(self, model: str) -> str:
        """The tiktoken encoding used to estimate this model's token counts."""
        return self._encodings[model]

    def cost(self, model: str, usage: Usage) -> Cost:
        return cost_of(usage, self.prices[model])

    def estimator(self, body: JSON, tier: str | None) -> RequestEstimator:
        return RequestEstimator(self, body, tier)


class RequestEstimator:
    """Estimated cost of one request on any candidate model; memoises the prompt token count per encoding and the
    usage and cost per model (admission, the engine and the record each ask for the same model's estimate)."""

    __slots__ = ("_book", "_body", "_tier", "_counts", "_usages", "_costs")

    def __init__(self, book: PriceBook, body: JSON, tier: str | None) -> None:
        self._book = book
        self._body = body
        self._tier = tier
        self._counts: dict[str, int] = {}
        self._usages: dict[str, Usage] = {}
        self._costs: dict[str, float] = {}

    def prompt_tokens(self, model: str) -> int:
        enc = self._book._encodings[model]
        n = self._counts.get(enc)
        if n is None:
            n = self._counts[enc] = count_chat_tokens(self._body, enc, self._book.cfg.upstream_name(model))
        return n

    def usage(self, model: str) -> Usage:
        """The estimated usage (do not mutate: it is shared by every caller of this estimator)."""
        usage = self._usages.get(model)
        if usage is None:
            cfg = self._book.cfg
            expected = cfg.models[model].expected_output_tokens
            if self._tier is not None:
                expected = cfg.tiers[self._tier].expected_output_tokens or expected
            usage = self._usages[model] = Usage(input_tokens=self.prompt_tokens(model),
                                                output_tokens=expected_output(self._body, expected))
        return usage

    def ceiling(self, model: str) -> float:
        """The cost if the completion runs to the request's own limit (``completion_limit``), else the estimate:
        what budgets reserve, so that a request whose client bounds its completion never costs more than its
        reservation (the estimate caps the completion at the tier's expectation, which a client may exceed)."""
        usage = self.usage(model)
        m = self._book.cfg.models[model]
        limit = completion_limit(self._body, cap=m.max_output, floor=m.completion_floor if m.reasoning else None)
        if limit is None or limit <= usage.output_tokens:
            return self(model)
        return self._book.cost(model, Usage(input_tokens=usage.input_tokens, output_tokens=limit)).total_usd

    def __call__(self, model: str) -> float:
        cost = self._costs.get(model)
        if cost is None:
            cost = self._costs[model] = self._book.cost(model, self.usage(model)).total_usd
        return cost
