"""The one interface a cascade runs through: what :mod:`tierwise.routing.cascade` may ask of the executor.

A cascade decides *which* rung serves; the executor owns *how* a model is called (retries, deadline sharing,
booking, cooldowns, session pins). The cascade sees only this protocol — as a variant sits behind one interface in
TensorZero — so it never reaches into the executor's private methods, and the two modules do not import each other
(:class:`~tierwise.routing.executor.Executor` implements it; the executor imports the cascade lazily to run one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from tierwise.types import JSON, Attempt, Completion, UpstreamError

if TYPE_CHECKING:
    from tierwise.routing.executor import Call


class CascadeHost(Protocol):
    gate_cache: dict[int, tuple[Any, list[Any]]]  # gates built once per cascade config (see cascade.gates_for)

    def rung_body(self, call: Call, model: str, request: JSON | None = None) -> JSON:
        """The upstream body for ``model`` (the client's request, or ``request`` for a verifier)."""
        ...

    def cooling_down(self, model: str) -> bool:
        """Whether ``model`` is in a failure cooldown now."""
        ...

    async def call_model(self, call: Call, model: str, body: JSON, after: Sequence[str]) -> tuple[Completion, Attempt]:
        """Call ``model`` with retries within its share of the deadline (``after``: the models still to come)."""
        ...

    def serve(self, call: Call, model: str, latency_ms: float | None) -> None:
        """``model``'s answer is the one served: book the success on the record and the model's health."""
        ...

    def book_cancelled(self, call: Call, model: str, latency_ms: float, why: str) -> Attempt:
        """Book a call abandoned in flight (a hedge's loser) at its estimated cost."""
        ...

    def empty_length(self, call: Call, model: str, att: Attempt) -> UpstreamError:
        """Book an empty, length-truncated answer as a failure; the error to report."""
        ...

    async def fallback_chain(self, call: Call, candidates: list[str]) -> Completion:
        """The last resort after the rungs: down ``candidates`` like a priority tier."""
        ...
