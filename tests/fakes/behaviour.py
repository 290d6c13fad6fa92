"""What the fake upstream answers and how it misbehaves: plain data, shared by both wire formats.

Token accounting follows the providers' documented semantics so adapters and the cost model can be tested
against exact numbers: ``prompt_tokens`` is the *whole* prompt (OpenAI's headline count, cached tokens included);
the Anthropic view of the same numbers is ``input_tokens = prompt - cached - cache_creation``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import orjson

JSON = dict[str, Any]
Reply = str | Callable[[JSON], str]

_PIECE_RE = re.compile(r"\s*\S+|\s+")


@dataclass(frozen=True, slots=True)
class Behaviour:
    """Settings for every request until changed. Immutable: a setter swaps the whole object (no torn reads)."""

    reply: Reply = "Hello! How can I help you today?"
    tool_calls: tuple[JSON, ...] | None = None  # ({"name", "arguments": dict|str, "id"?}, ...) -> tool-call answer
    prompt_tokens: int | None = None  # None: estimated from the request size
    completion_tokens: int | None = None  # None: number of reply pieces (+ reasoning_tokens)
    cached_tokens: int = 0  # cache reads (part of prompt_tokens)
    cache_creation_tokens: int = 0  # cache writes (Anthropic only; part of prompt_tokens)
    reasoning_tokens: int = 0  # part of completion_tokens (OpenAI only)
    latency_s: float = 0.0  # before response headers
    ttft_s: float = 0.0  # streams: after headers, before the first content chunk
    inter_chunk_s: float = 0.0  # streams: between content chunks
    logprob: float | Callable[[JSON], float] = -0.25  # every token's log-prob when asked (or per request)
    include_usage_in_stream: bool = True  # False: behave like a server that ignores stream_options.include_usage
    embeddings_usage: bool = True  # False: /v1/embeddings answers without a usage object (some servers do)
    api_key: str | None = None  # when set, requests without this key get a 401
    models: tuple[str, ...] = ("fake-model", "fake-model-large")
    record: bool = True  # keep received requests (turn off for throughput benchmarks)

    def updated(self, **changes: Any) -> Behaviour:
        if "tool_calls" in changes and changes["tool_calls"] is not None:
            changes["tool_calls"] = tuple(changes["tool_calls"])
        if "models" in changes:
            changes["models"] = tuple(changes["models"])
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown behaviour setting(s): {sorted(unknown)}")
        return replace(self, **changes)

    def as_json(self) -> JSON:
        d = asdict(self)
        for key in ("reply", "logprob"):
            if callable(d[key]):
                d[key] = "<function>"
        return d


FAULT_KINDS = frozenset(
    {"http_error", "delay", "disconnect_mid_stream", "garbage_body", "close_connection", "empty_length",
     "stream_error", "raw"}
)


@dataclass(frozen=True, slots=True)
class Fault:
    """A one-shot misbehaviour, consumed by the next chat request (FIFO)."""

    kind: str
    status: int = 500
    body: Any = None  # http_error/raw: JSON (dict) or text; http_error None = the format's standard error object
    retry_after: float | str | None = None  # http_error: Retry-After header (seconds or HTTP date)
    retry_after_ms: float | None = None  # http_error: retry-after-ms header
    seconds: float = 0.0  # delay
    after_chunks: int = 1  # disconnect_mid_stream / stream_error: content chunks sent first
    error_type: str = "overloaded_error"  # stream_error: error.type of the in-stream error event
    content_type: str = "application/json"  # raw

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {sorted(FAULT_KINDS)}")

    @classmethod
    def from_json(cls, d: JSON) -> Fault:
        return cls(**d)


@dataclass(slots=True)
class Answer:
    """One request's answer, computed once, rendered by either wire format."""

    pieces: list[str]  # content chunks (their concatenation is the text)
    tool_calls: list[JSON]  # [{"id", "name", "arguments": str}]
    finish: str  # OpenAI finish_reason: stop | length | tool_calls
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cache_creation_tokens: int
    reasoning_tokens: int
    logprobs: bool
    logprob: float
    extra: JSON = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def split_pieces(text: str) -> list[str]:
    """Word-ish tokens, leading whitespace attached: 'Hello there' -> ['Hello', ' there']."""
    return _PIECE_RE.findall(text)


def estimate_prompt_tokens(body: JSON) -> int:
    """Deterministic stand-in for a tokenizer: ~4 bytes of serialised messages per token."""
    return max(1, len(orjson.dumps(body.get("messages") or [])) // 4)


def _tool_calls(b: Behaviour, counter: int) -> list[JSON]:
    calls = []
    for i, call in enumerate(b.tool_calls or ()):
        args = call.get("arguments", {})
        calls.append({
            "id": call.get("id") or f"call_fake{counter}_{i}",
            "name": call["name"],
            "arguments": args if isinstance(args, str) else orjson.dumps(args).decode(),
        })
    return calls


def make_answer(b: Behaviour, body: JSON, counter: int, *, empty_length: bool = False) -> Answer:
    """What to answer to ``body`` under ``b`` (max_tokens truncation included, as real servers do)."""
    text = b.reply(body) if callable(b.reply) else b.reply
    pieces = split_pieces(text)
    calls = _tool_calls(b, counter)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    finish = "tool_calls" if calls else "stop"
    reasoning = b.reasoning_tokens
    if empty_length:
        pieces, calls, finish = [], [], "length"
        reasoning = limit if isinstance(limit, int) else (b.reasoning_tokens or 16)
    elif isinstance(limit, int) and 0 < limit < len(pieces) + reasoning:
        pieces = pieces[: max(0, limit - reasoning)]
        finish = "length"
    completion = b.completion_tokens if b.completion_tokens is not None else len(pieces) + reasoning
    if empty_length:
        completion = max(completion, reasoning)
    prompt = b.prompt_tokens if b.prompt_tokens is not None else estimate_prompt_tokens(body)
    return Answer(
        pieces=pieces,
        tool_calls=calls,
        finish=finish,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=b.cached_tokens,
        cache_creation_tokens=b.cache_creation_tokens,
        reasoning_tokens=reasoning,
        logprobs=bool(body.get("logprobs")),
        logprob=b.logprob(body) if callable(b.logprob) else b.logprob,
    )


def split_arguments(arguments: str, parts: int = 3) -> list[str]:
    """Tool-call arguments cut into fragments, the way streams deliver them."""
    if not arguments:
        return []
    step = max(1, -(-len(arguments) // parts))
    return [arguments[i : i + step] for i in range(0, len(arguments), step)]
