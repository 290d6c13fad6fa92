"""Mean token log-prob gate: confidence = exp(mean log p) of the answer's tokens (the geometric-mean token
probability). Cheap (no extra call) and, on multiple-choice and short answers, well correlated with correctness."""

from __future__ import annotations

import math

from tierwise.config.schema import GateConfig
from tierwise.routing.gates.base import GateContext, GateError
from tierwise.types import JSON


def mean_logprob_confidence(logprobs: list[float]) -> float:
    """exp of the mean token log-prob, in [0, 1]."""
    if not logprobs:
        raise GateError("no token log-probs in the answer")
    return math.exp(min(0.0, sum(logprobs) / len(logprobs)))


class LogprobGate:
    def __init__(self, cfg: GateConfig) -> None:
        self.threshold = cfg.threshold

    def prepare(self, body: JSON) -> None:
        body["logprobs"] = True

    async def confidence(self, ctx: GateContext) -> float:
        if ctx.completion.logprobs is None:
            raise GateError(f"model '{ctx.model}' returned no logprobs (does its provider offer them?)")
        return mean_logprob_confidence(ctx.completion.logprobs)
