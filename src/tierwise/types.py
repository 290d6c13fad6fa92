"""Core value types shared by the engine, the providers, the cost model and the ledger.

Requests and responses travel as plain OpenAI-shaped dicts: the gateway passes unknown fields through untouched,
and re-validating every body with pydantic on the hot path would cost more than the whole routing decision. The
types here are the few things the engine itself must understand: token usage, cost, what happened on each attempt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

JSON = dict[str, Any]


@dataclass(slots=True)
class Usage:
    """Tokens of one provider call, normalised across wire formats.

    The split is the one prices are quoted in, so cost = sum(tokens x rate) with no double counting:

    - ``input_tokens``: prompt tokens billed at the plain input rate (cache reads and writes excluded).
      OpenAI reports ``prompt_tokens`` *including* ``cached_tokens``; Anthropic reports ``input_tokens``
      *excluding* cache reads and cache creation. Adapters convert both to this meaning.
    - ``cache_read_tokens`` / ``cache_write_tokens``: prompt tokens read from / written to the provider's cache.
    - ``output_tokens``: all completion tokens, reasoning included (that is how both providers bill them).
    - ``reasoning_tokens``: the part of ``output_tokens`` spent on hidden reasoning (informational unless the
      model has a separate reasoning price).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        """All prompt tokens, as OpenAI's ``usage.prompt_tokens`` reports them."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )

    def to_openai(self) -> JSON:
        """The OpenAI ``usage`` object (with the detail blocks the client SDKs understand)."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cache_read_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }

    def as_dict(self) -> dict[str, int]:
        # spelled out: dataclasses.asdict (recursive, deep-copying) cost ~5 us per ledger row
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cache_read_tokens": self.cache_read_tokens, "cache_write_tokens": self.cache_write_tokens,
                "reasoning_tokens": self.reasoning_tokens}


@dataclass(slots=True)
class Cost:
    """Dollar cost of one call, itemised so an invoice can be reconciled line by line."""

    input_usd: float = 0.0
    output_usd: float = 0.0
    cache_read_usd: float = 0.0
    cache_write_usd: float = 0.0
    reasoning_usd: float = 0.0  # only non-zero when the model prices reasoning apart from output
    # tierwise's pre-call estimate, booked where no usage could be known (a call cut off in flight by a client
    # hang-up or a crash) because the upstream may bill it anyway
    estimated_usd: float = 0.0

    @property
    def total_usd(self) -> float:
        return (self.input_usd + self.output_usd + self.cache_read_usd + self.cache_write_usd + self.reasoning_usd
                + self.estimated_usd)

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.input_usd + other.input_usd,
            self.output_usd + other.output_usd,
            self.cache_read_usd + other.cache_read_usd,
            self.cache_write_usd + other.cache_write_usd,
            self.reasoning_usd + other.reasoning_usd,
            self.estimated_usd + other.estimated_usd,
        )


class ErrorKind(StrEnum):
    """Why a provider call failed; decides whether the executor retries, falls back or gives up."""

    RATE_LIMIT = "rate_limit"  # 429: retry after Retry-After, then fall back
    SERVER = "server"  # 5xx: retry with backoff, then fall back
    TIMEOUT = "timeout"  # connect/read timeout: retry, then fall back
    CONNECTION = "connection"  # refused/reset/disconnect: retry, then fall back
    BAD_RESPONSE = "bad_response"  # upstream sent something that is not its protocol: fall back, no retry
    # 401/402/403: the upstream refused tierwise's own credentials or account — the operator's fault, not the
    # caller's: no retry on that model (the key will not get better), fall back, count toward its cooldown
    AUTH = "auth"
    # 404/405/410: the upstream has no such model or endpoint — the operator's config (tierwise chose the upstream
    # model name and URL, not the caller): no retry, fall back, count toward the model's cooldown
    NOT_FOUND = "not_found"
    CLIENT = "client"  # other 4xx (400, 413, 422, …): the request itself is wrong; return it, no fallback
    EMPTY_LENGTH = "empty_length"  # finish_reason=length with no content (reasoning ran out of tokens)

    @property
    def retryable(self) -> bool:
        return self in (ErrorKind.RATE_LIMIT, ErrorKind.SERVER, ErrorKind.TIMEOUT, ErrorKind.CONNECTION)

    @property
    def falls_back(self) -> bool:
        return self is not ErrorKind.CLIENT


class UpstreamError(Exception):
    """A failed provider call, with what the executor needs to decide what to do next."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        body: JSON | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s
        self.body = body  # the upstream's error object, when it sent a parseable one (never forwarded raw)

    def __repr__(self) -> str:
        return f"UpstreamError({self.kind.value}, status={self.status}, {self.message!r})"


@dataclass(slots=True)
class Completion:
    """A finished, non-streaming chat completion in OpenAI shape plus what the engine needs from it."""

    body: JSON  # OpenAI ``chat.completion`` object as the adapter normalised it
    usage: Usage
    finish_reason: str | None
    text: str  # first choice's content ('' when the answer is only tool calls)
    logprobs: list[float] | None = None  # per-token log-probs of the first choice, when requested/offered
    billed_usd: float | None = None  # the provider's own cost figure when it reports one (replay, OpenRouter)


@dataclass(slots=True)
class StreamChunk:
    """One normalised streaming chunk: an OpenAI ``chat.completion.chunk`` dict, plus usage if this chunk had it."""

    body: JSON
    usage: Usage | None = None
    text: str = ""  # content delta of the first choice
    finish_reason: str | None = None
    # the prompt's usage as the upstream reported it before the answer (Anthropic's message_start), output 0
    prompt_usage: Usage | None = None


@dataclass(slots=True)
class Attempt:
    """One call to one model, as recorded in the ledger."""

    model: str
    outcome: str  # "ok" | ErrorKind value | "skipped_cooldown" | "client_cancelled" | "gate_failed"
    status: int | None = None
    error: str | None = None
    latency_ms: float = 0.0
    retry: int = 0
    usage: Usage | None = None
    cost_usd: float = 0.0
    confidence: float | None = None  # cascade rungs: the gate's confidence in this answer

    def as_dict(self) -> JSON:
        d: JSON = {"model": self.model, "outcome": self.outcome, "latency_ms": round(self.latency_ms, 3)}
        if self.confidence is not None:
            d["confidence"] = self.confidence  # full precision: calibrated thresholds are compared with it
        if self.retry:
            d["retry"] = self.retry
        if self.status is not None:
            d["status"] = self.status
        if self.error:
            d["error"] = self.error
        if self.usage is not None:
            d["usage"] = self.usage.as_dict()
            d["cost_usd"] = self.cost_usd
        return d


@dataclass(slots=True)
class LedgerRecord:
    """Everything the operator needs to know about one request: one row in the ledger."""

    id: str
    ts: float  # unix seconds when the request arrived
    principal: str = "anonymous"
    tier: str | None = None
    tier_source: str | None = None  # header | endpoint | model | default | semantic | learned | pin
    requested_model: str | None = None
    model: str | None = None  # the model that served the answer
    attempts: list[Attempt] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost: Cost = field(default_factory=Cost)
    estimated_cost_usd: float = 0.0
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    fallbacks: int = 0
    escalations: int = 0
    session_id: str | None = None
    stream: bool = False
    status: str = "ok"  # ok | error | client_cancelled
    http_status: int = 200
    error: str | None = None
    notes: list[str] = field(default_factory=list)  # e.g. "max_tokens raised to floor 4096", "re-pinned: …"
    # Attribution (ledger schema 2): who the spend belongs to, from the caller's principal, and the caller's own
    # labels (X-Tierwise-Tags header, OpenAI ``metadata``). Last in the row so CSV columns of schema 1 keep their place.
    key_id: str | None = None
    customer: str | None = None
    department: str | None = None
    project: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # Margin (ledger schema 3): what the caller earns for this request (its principal's revenue per request), booked
    # on answered requests only — a failed, rejected or cancelled request earns nothing. None: no revenue configured.
    revenue_usd: float | None = None
    # Canary (ledger schema 4): the arm that routed this request, 'canary:<name>' or 'control:<name>'; None: no canary.
    arm: str | None = None

    def as_row(self) -> JSON:
        """Flat JSON-able dict (the JSONL export format and the SQLite column set)."""
        return {
            "id": self.id,
            "ts": self.ts,
            "principal": self.principal,
            "tier": self.tier,
            "tier_source": self.tier_source,
            "requested_model": self.requested_model,
            "model": self.model,
            "attempts": [a.as_dict() for a in self.attempts],
            "input_tokens": self.usage.input_tokens,
            "output_tokens": self.usage.output_tokens,
            "cache_read_tokens": self.usage.cache_read_tokens,
            "cache_write_tokens": self.usage.cache_write_tokens,
            "reasoning_tokens": self.usage.reasoning_tokens,
            "cost_usd": self.cost.total_usd,
            "cost_breakdown": {
                "input": self.cost.input_usd,
                "output": self.cost.output_usd,
                "cache_read": self.cost.cache_read_usd,
                "cache_write": self.cost.cache_write_usd,
                "reasoning": self.cost.reasoning_usd,
                "estimated": self.cost.estimated_usd,
            },
            "estimated_cost_usd": self.estimated_cost_usd,
            "ttft_ms": self.ttft_ms,
            "latency_ms": self.latency_ms,
            "fallbacks": self.fallbacks,
            "escalations": self.escalations,
            "session_id": self.session_id,
            "stream": self.stream,
            "status": self.status,
            "http_status": self.http_status,
            "error": self.error,
            "notes": self.notes,
            "key_id": self.key_id,
            "customer": self.customer,
            "department": self.department,
            "project": self.project,
            "tags": self.tags,
            "revenue_usd": self.revenue_usd,
            "arm": self.arm,
        }
