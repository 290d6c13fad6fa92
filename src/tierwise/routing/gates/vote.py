"""Self-consistency gate (Yue et al. 2024, "Large Language Model Cascades with Mixture of Thought"):
sample k answers, extract each final answer, confidence = share of samples agreeing with the majority.
The served answer is a sample whose final answer is the majority one."""

from __future__ import annotations

import re
from collections import Counter

from tierwise.config.schema import GateConfig
from tierwise.routing.gates.base import GateContext, GateError
from tierwise.types import JSON, Completion

_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*[:\s]*\(?\s*([^\n.]+?)\s*\)?\s*(?:\.|$)", re.I | re.M)
_HASHES = re.compile(r"####\s*([^\n]+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_CHOICE = re.compile(r"\(?\b([A-E])\b\)?")


def _norm_number(s: str) -> str | None:
    m = _NUMBER.findall(s)
    if not m:
        return None
    v = m[-1].replace(",", "")
    try:
        f = float(v)
    except ValueError:
        return v
    return str(int(f)) if f.is_integer() else repr(f)


def extract_answer(text: str, how: str = "auto") -> str | None:
    """The final answer of a reasoning text; None when there is none to compare."""
    text = text.strip()
    if not text:
        return None
    if how == "text":
        return " ".join(text.lower().split())
    if how == "number":
        return _norm_number(text)
    if how == "choice":
        m = _CHOICE.findall(text)
        return m[-1] if m else None
    if how != "auto":
        found = re.search(how, text, re.S)
        return found.group(1).strip() if found else None
    marked = _HASHES.search(text) or _ANSWER_IS.search(text)
    tail = marked.group(1) if marked else text.splitlines()[-1]
    choice = re.fullmatch(r"\(?([A-E])\)?", tail.strip())
    if choice:
        return choice.group(1)
    num = _norm_number(tail)
    return num if num is not None else " ".join(tail.lower().split())


def agreement(answers: list[str | None]) -> tuple[float, str | None]:
    """(share of all samples agreeing with the majority answer, that answer)."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return 0.0, None
    answer, n = votes.most_common(1)[0]
    return n / len(answers), answer


class VoteGate:
    def __init__(self, cfg: GateConfig) -> None:
        self.threshold = cfg.threshold
        self.samples = cfg.samples
        self.temperature = cfg.temperature
        self.extract = cfg.extract

    def prepare(self, body: JSON) -> None:
        body["n"] = self.samples
        body["temperature"] = self.temperature

    async def confidence(self, ctx: GateContext) -> float:
        choices = ctx.completion.body.get("choices") or []
        texts = [((c.get("message") or {}).get("content") or "") for c in choices]
        if len(texts) < 2:
            raise GateError(f"vote gate needs several samples; model '{ctx.model}' returned {len(texts)}")
        answers = [extract_answer(t, self.extract) for t in texts]
        share, majority = agreement(answers)
        keep_majority(ctx.completion, answers, majority)
        return share


def keep_majority(c: Completion, answers: list[str | None], majority: str | None) -> None:
    """Serve one sample: the first whose final answer is the majority one (index 0 when there is none)."""
    choices = c.body.get("choices") or []
    idx = answers.index(majority) if majority is not None and majority in answers else 0
    chosen = dict(choices[idx])
    chosen["index"] = 0
    c.body["choices"] = [chosen]
    c.text = (chosen.get("message") or {}).get("content") or ""
    c.finish_reason = chosen.get("finish_reason")
