"""Verifier gate (AutoMix-style self-verification): a cheap model is asked whether the answer is right; the
confidence is the share of "yes" judgements. The verifier's tokens are booked on the request like any call."""

from __future__ import annotations

import re

from tierwise.config.schema import GateConfig
from tierwise.requests import prompt_text
from tierwise.routing.gates.base import GateContext, GateError
from tierwise.types import JSON

_YES = re.compile(r"^\W*(yes|correct|true)\b", re.I)
_NO = re.compile(r"^\W*(no|incorrect|false|wrong)\b", re.I)

PROMPT = (
    "You are a strict grader. Decide whether the proposed answer correctly and completely answers the question.\n\n"
    "Question:\n{question}\n\nProposed answer:\n{answer}\n\n"
    "Is the proposed answer correct? Reply with exactly one word: yes or no."
)


def verdict(text: str) -> bool | None:
    if _YES.search(text):
        return True
    if _NO.search(text):
        return False
    return None


class VerifierGate:
    def __init__(self, cfg: GateConfig) -> None:
        self.threshold = cfg.threshold
        self.model = cfg.verifier_model
        self.samples = cfg.verifier_samples

    def prepare(self, body: JSON) -> None:
        return None

    async def confidence(self, ctx: GateContext) -> float:
        prompt = PROMPT.format(question=prompt_text(ctx.request, 1 << 30), answer=ctx.completion.text)
        body: JSON = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 4,
                      "temperature": 0.0 if self.samples == 1 else 0.7}
        if self.samples > 1:
            body["n"] = self.samples
        judged = await ctx.ask(self.model or ctx.model, body)
        texts = [((c.get("message") or {}).get("content") or "") for c in judged.body.get("choices") or []]
        votes = [v for v in map(verdict, texts) if v is not None]
        if not votes:
            raise GateError(f"verifier gave no yes/no verdict: {texts[:1]!r}")
        return sum(votes) / len(texts)
