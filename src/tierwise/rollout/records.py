"""What the rollout store holds — captured requests and feedback — and the interface every backend implements.

A capture is keyed by the ledger's request id, so its cost, tokens, latency and status are the ledger row's (join
on ``id``); the capture adds only what the ledger never stores: the (redacted) prompt, the request parameters that
routing reads, and the answer. Feedback is keyed by (request id, source): a second post from the same source
replaces the first (idempotent retries), while a human thumbs and an LLM judge on the same request both stay.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

JSON = dict[str, Any]


@dataclass(slots=True)
class Captured:
    """One captured request (texts already redacted and cut to ``capture.max_chars``)."""

    request_id: str
    ts: float
    tier: str | None
    model: str | None
    principal: str | None
    messages: list[Any]
    answer: str | None = None
    params: JSON = field(default_factory=dict)  # the request body without messages (temperature, tools, ...)
    tier_source: str | None = None
    session_id: str | None = None
    status: str = "ok"

    def body(self) -> JSON:
        """The chat request as the client sent it (minus redactions): what replay feeds to the routing engine."""
        return {**self.params, "messages": self.messages}


@dataclass(slots=True)
class Feedback:
    """A score, label and/or thumbs for one request from one source (``user``, ``judge:<model>``, ``human``...)."""

    request_id: str
    source: str
    ts: float
    score: float | None = None
    label: str | None = None
    thumbs: int | None = None  # +1 / -1
    comment: str | None = None


@runtime_checkable
class RolloutStore(Protocol):
    """Captures and feedback beside the ledger. Writes come from one thread (the capture writer) or from a worker
    thread of the gateway (feedback); reads from any thread on connections of their own."""

    def write_captures(self, rows: list[Captured]) -> None:
        """Insert rows in one transaction; a second row with the same request id replaces the first."""
        ...

    def iter_captured(self, since: float | None = None, until: float | None = None,
                      tiers: list[str] | None = None) -> Iterator[Captured]:
        """Captures with ``since <= ts < until`` (optional bounds), of ``tiers`` when given, in ``ts`` order,
        streamed."""
        ...

    def count_captured(self, since: float | None = None, until: float | None = None) -> int:
        ...

    def purge(self, before: float) -> int:
        """Delete captures with ``ts < before``; returns how many."""
        ...

    def put_feedback(self, fb: Feedback) -> bool:
        """Store ``fb``, replacing an earlier one of the same (request_id, source). True when it was new."""
        ...

    def count_feedback(self, since: float | None = None, until: float | None = None) -> int:
        ...

    def iter_feedback(self, since: float | None = None, until: float | None = None) -> Iterator[Feedback]:
        """Feedback on requests, by the time it was given (``ts``), oldest first."""
        ...

    def close(self) -> None:
        ...
