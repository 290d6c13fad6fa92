"""The gate protocol, the context a gate sees, and the factory from configuration."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from tierwise.config.schema import GateConfig
from tierwise.types import JSON, Completion

Ask = Callable[[str, JSON], Awaitable[Completion]]


class GateError(Exception):
    """The gate could not judge (no logprobs offered, verifier failed…): the executor escalates."""


@dataclass(slots=True)
class RungAnswer:
    """What an earlier rung of the same request answered (for gates that use agreement between rungs)."""

    model: str
    text: str
    logprob_confidence: float | None  # exp(mean token log-prob), when the provider gave logprobs


@dataclass(slots=True)
class GateContext:
    request: JSON  # the client's request body (messages etc.)
    completion: Completion  # the rung's answer
    model: str  # the rung's model
    ask: Ask  # call a model through the executor (cost booked on the request), for verifiers
    rung: int = 0  # index of this rung in the cascade
    chain: tuple[str, ...] = ()  # every rung's model, cheap to strong
    history: list[RungAnswer] = field(default_factory=list)  # earlier rungs' answers, in order
    prior: dict[str, float] | None = None  # a learned router's predicted quality per model for this prompt


class Gate(Protocol):
    threshold: float

    def prepare(self, body: JSON) -> None:
        """Adjust the rung's upstream request (ask for logprobs, for k samples…) before it is sent."""
        ...

    async def confidence(self, ctx: GateContext) -> float: ...


CLEAR_SLACK = 1e-12
"""A gate passes when its confidence reaches the threshold to within this. A confidence that has travelled — through
a ledger's JSON, or the replay driver's ``logprobs=[log c]`` that the log-prob gate turns back into ``exp(log c)`` —
can come back one ulp (~1e-16) off, and a calibrated threshold *is* one of those recorded confidences: compared
exactly, the prompt on the boundary could pass offline and escalate live. The engine (:func:`clears`) and the
calibration simulator (``tierwise.lab.cascade_sim``, ``tierwise.lab.calibrate``) use this one rule."""


def clears(confidence: float, threshold: float) -> bool:
    """The cascade's pass rule: ``confidence >= threshold - CLEAR_SLACK``."""
    return confidence >= threshold - CLEAR_SLACK


def hard_fail(c: Completion) -> str | None:
    """Reasons no gate may pass an answer: empty, or cut off at the token limit."""
    if c.finish_reason == "length":
        return "finish_reason=length"
    choices = c.body.get("choices") or [{}]
    message = choices[0].get("message") or {}
    if not c.text.strip() and not message.get("tool_calls"):
        return "empty answer"
    return None


def build_gate(cfg: GateConfig) -> Gate:
    """The gate object for a rung's configuration."""
    if cfg.kind == "logprob":
        from tierwise.routing.gates.logprob import LogprobGate

        return LogprobGate(cfg)
    if cfg.kind == "vote":
        from tierwise.routing.gates.vote import VoteGate

        return VoteGate(cfg)
    if cfg.kind == "verifier":
        from tierwise.routing.gates.verifier import VerifierGate

        return VerifierGate(cfg)
    if cfg.kind == "validator":
        from tierwise.routing.gates.validator import ValidatorGate

        return ValidatorGate(cfg)
    if cfg.kind == "learned":
        from tierwise.routing.gates.learned import LearnedGate

        return LearnedGate(cfg)
    if cfg.kind == "contextual":
        from tierwise.routing.gates.contextual import ContextualGate

        return ContextualGate(cfg)
    raise ValueError(f"unknown gate kind {cfg.kind!r}")
