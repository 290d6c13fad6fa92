"""How ``tierwise trial`` scores an answer, in [0, 1].

- ``exact``: the answer equals the reference (the labelling file's ``reference`` when given, else the incumbent's
  answer), surrounding whitespace ignored.
- ``normalised``: equal after case-folding, dropping punctuation and collapsing whitespace; two numbers are equal when
  their values are (``3.0`` = ``3``).
- ``contains``: the normalised reference appears in the normalised answer as whole words (short-answer questions
  answered in a sentence: "The capital is Paris." for "Paris").
- ``json``: the answer parses as JSON (fenced ```json blocks accepted); ``regex:PATTERN``: ``re.search`` finds it.
  These judge the incumbent's answer by the same rule.
- ``llm:MODEL``: a judge model compares the candidate's answer with the incumbent's under a rubric, twice with the
  positions swapped (judges prefer a position; averaging both orders cancels that). Each order scores 1 when the
  candidate is judged better or equal (TIE), 0 when worse; the quality is their mean: "as good as the incumbent".
  The judge's calls are priced and booked against the trial's budget.
- ``labels``: human labels from the file (``labels: {model: quality}``); unlabelled pairs are left out and counted.

For ``exact``, ``normalised``, ``contains``, ``llm`` and ``labels`` the incumbent's quality is the file's ``quality`` label when
given, else 1: the incumbent is the reference the candidates are measured against.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass

DEFAULT_RUBRIC = (
    "You compare two answers to the same request. Judge correctness first, then completeness and following the "
    "request's instructions; ignore length and style unless the request asks for them. Reply with one line: "
    "'VERDICT: A' if answer A is better, 'VERDICT: B' if answer B is better, 'VERDICT: TIE' if they are equally good."
)

_PUNCT = str.maketrans("", "", string.punctuation)
_VERDICT = re.compile(r"VERDICT\s*:\s*(A|B|TIE)\b", re.IGNORECASE)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


@dataclass(frozen=True, slots=True)
class Judge:
    kind: str  # exact | normalised | contains | json | regex | llm | labels
    arg: str | None = None  # the regex, or the judge model

    @property
    def rules_incumbent(self) -> bool:
        """True when the incumbent's answer is judged by the same rule (validity judges)."""
        return self.kind in ("json", "regex")


def parse_judge(text: str) -> Judge:
    """``exact``, ``normalised``, ``json``, ``regex:PATTERN``, ``llm:MODEL`` or ``labels``; ValueError otherwise."""
    kind, _, arg = text.partition(":")
    if kind in ("exact", "normalised", "contains", "json", "labels") and not arg:
        return Judge(kind)
    if kind == "regex" and arg:
        try:
            re.compile(arg)
        except re.error as exc:
            raise ValueError(f"--judge regex:{arg}: not a regular expression: {exc}") from None
        return Judge(kind, arg)
    if kind == "llm" and arg:
        return Judge(kind, arg)
    raise ValueError(f"--judge {text!r}: use exact, normalised, contains, json, regex:PATTERN, llm:MODEL or labels")


def normalise(text: str) -> str:
    return " ".join(text.casefold().translate(_PUNCT).split())


def _number(text: str) -> float | None:
    try:
        return float(text.strip().replace(",", ""))
    except ValueError:
        return None


def rule_score(judge: Judge, answer: str, reference: str) -> float:
    """Score of ``answer`` under a rule judge (not llm/labels)."""
    if judge.kind == "exact":
        return float(answer.strip() == reference.strip())
    if judge.kind == "normalised":
        a, b = _number(answer), _number(reference)
        if a is not None and b is not None:
            return float(a == b)
        return float(normalise(answer) == normalise(reference))
    if judge.kind == "contains":
        ref = normalise(reference)
        return float(bool(ref) and f" {ref} " in f" {normalise(answer)} ")
    if judge.kind == "json":
        m = _FENCE.match(answer.strip())
        try:
            json.loads(m.group(1) if m else answer)
        except ValueError:
            return 0.0
        return 1.0
    if judge.kind == "regex":
        assert judge.arg is not None
        return float(re.search(judge.arg, answer, re.S) is not None)
    raise ValueError(f"{judge.kind} is not a rule judge")


def judge_messages(rubric: str, request: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": rubric},
        {"role": "user", "content": f"REQUEST:\n{request}\n\nANSWER A:\n{answer_a}\n\nANSWER B:\n{answer_b}"},
    ]


def verdict(text: str) -> str | None:
    """A, B or TIE from the judge's reply (its last verdict line), None when it gave none."""
    found = _VERDICT.findall(text)
    return found[-1].upper() if found else None


def pair_score(first: str | None, second: str | None) -> float | None:
    """Candidate quality from the two orders: ``first`` judged (A=incumbent, B=candidate), ``second`` judged
    (A=candidate, B=incumbent). None when neither order gave a verdict."""
    scores = []
    if first is not None:
        scores.append(0.0 if first == "A" else 1.0)
    if second is not None:
        scores.append(0.0 if second == "B" else 1.0)
    return sum(scores) / len(scores) if scores else None
