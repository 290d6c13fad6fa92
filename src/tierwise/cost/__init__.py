"""Cost model: provider usage -> normalised tokens, prices (config, local TCO, genai-prices), costs and estimates.

Importing this package is cheap: the price catalogue and the BPE tables load on first use.
"""

from tierwise.cost.calc import cost_of
from tierwise.cost.estimate import completion_limit, expected_output
from tierwise.cost.prices import PriceSource, ResolvedPrice, resolve_price
from tierwise.cost.report import price_report
from tierwise.cost.tco import TCOBreakdown, tco_breakdown
from tierwise.cost.tokens import (
    SUPPORTED_ENCODINGS,
    TokenizerUnavailable,
    count_chat_tokens,
    count_text_tokens,
    encoding_for,
    get_encoding,
)
from tierwise.cost.usage import usage_from_anthropic, usage_from_anthropic_stream, usage_from_openai

__all__ = [
    "SUPPORTED_ENCODINGS",
    "PriceSource",
    "ResolvedPrice",
    "TCOBreakdown",
    "TokenizerUnavailable",
    "completion_limit",
    "cost_of",
    "count_chat_tokens",
    "count_text_tokens",
    "encoding_for",
    "expected_output",
    "get_encoding",
    "price_report",
    "resolve_price",
    "tco_breakdown",
    "usage_from_anthropic",
    "usage_from_anthropic_stream",
    "usage_from_openai",
]
