"""Provider usage objects -> tierwise :class:`~tierwise.types.Usage`.

Cached prompt tokens are where gateways most often mis-bill (2-7x), because the two big wire formats disagree on
whether the headline prompt count *includes* the cached part. This module is the one place that knows:

OpenAI Chat Completions (``CompletionUsage`` in the openai SDKs; docs: platform.openai.com/docs/api-reference/chat
/object#usage and the prompt-caching guide)::

    {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
     "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
     "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                   "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}

``prompt_tokens`` INCLUDES ``cached_tokens`` and ``completion_tokens`` INCLUDES ``reasoning_tokens``. Streams carry the
same object in the last chunk when ``stream_options.include_usage`` is set. Also understood, since OpenAI-compatible
upstreams emit them: the Responses API shape (``input_tokens`` incl. ``input_tokens_details.cached_tokens``,
``output_tokens_details.reasoning_tokens``), OpenRouter's ``prompt_tokens_details.cache_write_tokens`` (part of
``prompt_tokens``; openrouter.ai/docs/use-cases/usage-accounting) and DeepSeek's ``prompt_cache_hit_tokens``.

Anthropic Messages (``Usage`` in anthropic-sdk-python ``types/usage.py``; docs: docs.anthropic.com prompt caching,
"Tracking cache performance": total input = cache_read_input_tokens + cache_creation_input_tokens + input_tokens)::

    {"input_tokens": 21, "cache_creation_input_tokens": 188086, "cache_read_input_tokens": 0,
     "cache_creation": {"ephemeral_5m_input_tokens": 188086, "ephemeral_1h_input_tokens": 0},
     "output_tokens": 393, "service_tier": "standard"}

``input_tokens`` EXCLUDES both cache fields. Streaming: ``message_start.message.usage`` has the input side and a
provisional ``output_tokens``; each ``message_delta.usage`` is CUMULATIVE (``MessageDeltaUsage``: "The cumulative number
of output tokens"), so the last delta replaces, never adds to, earlier counts. Extended-thinking tokens are billed as
output and not reported apart, so ``reasoning_tokens`` stays 0 for Anthropic.

Every function here is total: missing keys, ``null``, strings, floats, booleans, negative numbers or a non-dict usage
all count as 0 instead of raising, because a malformed usage block must never fail a request that already succeeded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tierwise.types import Usage

__all__ = ["usage_from_anthropic", "usage_from_anthropic_stream", "usage_from_openai"]


def _int(value: Any) -> int:
    """A token count, or 0 for anything that is not a non-negative integer (bool excluded: True is not 1 token).

    Integral floats (``12.0``, as some JSON encoders emit) are accepted; other floats and strings are not guessed at.
    """
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value if value > 0 else 0
    if isinstance(value, float) and value.is_integer() and value > 0:
        return int(value)
    return 0


def _has(mapping: Mapping[str, Any], key: str) -> bool:
    """True when ``key`` holds a usable count (so a zero can be told apart from "not reported")."""
    value = mapping.get(key)
    return not isinstance(value, bool) and isinstance(value, int | float)


def _sub(mapping: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = mapping.get(key)
    return value if isinstance(value, Mapping) else {}


def usage_from_openai(usage: dict | None) -> Usage:
    """Convert an OpenAI(-compatible) ``usage`` object; cached and cache-written tokens move out of ``input_tokens``.

    Chat Completions and Responses shapes are both accepted (``prompt_tokens`` wins when both are present).
    Inconsistent reports are clamped rather than trusted: cached + cache-written never exceed the prompt count and
    reasoning never exceeds the completion count, so the total bill can never exceed what the headline counts say.
    """
    if not isinstance(usage, Mapping):
        return Usage()
    if _has(usage, "prompt_tokens") or not _has(usage, "input_tokens"):
        prompt = _int(usage.get("prompt_tokens"))
        completion = _int(usage.get("completion_tokens"))
        prompt_details = _sub(usage, "prompt_tokens_details")
        completion_details = _sub(usage, "completion_tokens_details")
    else:  # Responses API
        prompt = _int(usage.get("input_tokens"))
        completion = _int(usage.get("output_tokens"))
        prompt_details = _sub(usage, "input_tokens_details")
        completion_details = _sub(usage, "output_tokens_details")

    if _has(prompt_details, "cached_tokens"):
        cache_read = _int(prompt_details.get("cached_tokens"))
    else:  # DeepSeek reports the split at top level
        cache_read = _int(usage.get("prompt_cache_hit_tokens"))
    cache_write = _int(prompt_details.get("cache_write_tokens"))
    reasoning = _int(completion_details.get("reasoning_tokens"))

    cache_read = min(cache_read, prompt)
    cache_write = min(cache_write, prompt - cache_read)
    return Usage(
        input_tokens=prompt - cache_read - cache_write,
        output_tokens=completion,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=min(reasoning, completion),
    )


def _anthropic_cache_write(usage: Mapping[str, Any]) -> int:
    """``cache_creation_input_tokens``, or the sum of the per-TTL ``cache_creation`` breakdown when only that is sent."""
    if _has(usage, "cache_creation_input_tokens"):
        return _int(usage.get("cache_creation_input_tokens"))
    breakdown = _sub(usage, "cache_creation")
    return _int(breakdown.get("ephemeral_5m_input_tokens")) + _int(breakdown.get("ephemeral_1h_input_tokens"))


def usage_from_anthropic(usage: dict | None) -> Usage:
    """Convert an Anthropic Messages ``usage`` object (its ``input_tokens`` already excludes cache reads/writes).

    1-hour cache writes (``cache_creation.ephemeral_1h_input_tokens``) cost 2x input instead of 1.25x, but
    :class:`Usage` has a single cache-write bucket, so they are priced at the model's ``cache_write`` rate.
    """
    if not isinstance(usage, Mapping):
        return Usage()
    return Usage(
        input_tokens=_int(usage.get("input_tokens")),
        output_tokens=_int(usage.get("output_tokens")),
        cache_read_tokens=_int(usage.get("cache_read_input_tokens")),
        cache_write_tokens=_anthropic_cache_write(usage),
        reasoning_tokens=0,
    )


_ANTHROPIC_COUNT_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


def usage_from_anthropic_stream(
    message_start_usage: dict | None, *message_delta_usages: dict | None
) -> Usage:
    """Final usage of an Anthropic stream from ``message_start.message.usage`` and the ``message_delta.usage`` objects.

    Delta counts are cumulative, so each reported field *replaces* the value so far (summing deltas is the classic
    stream over-count, e.g. when server tools produce several ``message_delta`` events). Fields a delta leaves out or
    sets to null keep the ``message_start`` value.
    """
    merged: dict[str, Any] = dict(message_start_usage) if isinstance(message_start_usage, Mapping) else {}
    for delta in message_delta_usages:
        if not isinstance(delta, Mapping):
            continue
        for key in _ANTHROPIC_COUNT_KEYS:
            if _has(delta, key):
                merged[key] = delta[key]
        if isinstance(delta.get("cache_creation"), Mapping):
            merged["cache_creation"] = delta["cache_creation"]
            if not _has(delta, "cache_creation_input_tokens"):
                merged.pop("cache_creation_input_tokens", None)
    return usage_from_anthropic(merged)
