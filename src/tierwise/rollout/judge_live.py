"""``tierwise judge``: sampled LLM-judge labels for live traffic, stored beside the ledger as feedback.

Users rarely rate answers, and re-calibration (``tierwise calibrate --from-ledger``) and canary reports need labels.
This draws a deterministic sample of the captured, answered requests of a window (a hash of the request id and a
seed, so the same command picks the same requests and a re-run only pays for what it has not judged yet), asks a
judge model — through the real providers, within its own budget — to grade the served answer against a rubric, and
stores the grade as feedback from source ``judge:<model>`` (one per request and source: idempotent). Each judge
call (answer, tokens, cost) is appended to ``<out>/judgements.jsonl``, so what the labels cost is on record.

An absolute grade of one answer is a weaker signal than the position-swapped comparison ``tierwise trial`` runs;
it is meant for drift and re-calibration on volume, with human or trial labels where it matters.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tierwise.config.schema import TierwiseConfig

JUDGE_RUBRIC = (
    "You grade one answer to a request. Judge correctness first, then whether it does what was asked, then "
    "clarity. Ignore length and style unless they make the answer wrong or unusable. Think briefly, then end with "
    "one line 'SCORE: N', N an integer from 0 (wrong or useless) to 10 (fully correct and helpful)."
)
_SCORE = re.compile(r"SCORE\s*:\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def grade(text: str | None) -> float | None:
    """The judge's last ``SCORE: N`` as a score in [0, 1]; None when it gave none."""
    found = _SCORE.findall(text or "")
    return min(1.0, max(0.0, float(found[-1]) / 10.0)) if found else None


def sampled(request_id: str, rate: float, seed: str) -> bool:
    """Whether ``request_id`` is in a ``rate`` sample: the same for the same seed, independent of order."""
    h = hashlib.sha256(f"{seed}:{request_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < rate


def grade_messages(rubric: str, request: Sequence[Any], answer: str) -> list[dict[str, str]]:
    from tierwise.requests import prompt_text

    asked = prompt_text({"messages": list(request)}, 20_000)
    return [{"role": "system", "content": rubric},
            {"role": "user", "content": f"REQUEST:\n{asked}\n\nANSWER:\n{answer}"}]


@dataclass
class JudgeReport:
    """What a judge run did (counts over the window's captured, answered requests)."""

    considered: int = 0  # answered captures in the window (and tiers)
    sampled: int = 0
    already: int = 0  # sampled, but this judge had labelled them already
    labelled: int = 0
    no_grade: int = 0  # the judge answered without a SCORE line
    failed: int = 0  # the judge call failed
    spent_usd: float = 0.0
    stopped_by_budget: bool = False
    scores: dict[str, list[float]] = field(default_factory=dict)  # per tier

    def lines(self, model: str) -> list[str]:
        out = [f"judge {model}: {self.considered} answered captures, {self.sampled} sampled, {self.already} already "
               f"labelled, {self.labelled} labelled now, {self.no_grade} without a grade, {self.failed} failed; "
               f"judge spend ${self.spent_usd:.6f}" + (" (stopped: budget reached)" if self.stopped_by_budget else "")]
        for tier, s in sorted(self.scores.items()):
            out.append(f"  {tier}: mean score {sum(s) / len(s):.3f} over {len(s)} answers")
        return out


async def judge_captured(cfg: TierwiseConfig, model: str, out_dir: str | Path, *, rate: float, seed: str,
                         budget_usd: float, since: float | None = None, until: float | None = None,
                         tiers: list[str] | None = None, rubric: str = JUDGE_RUBRIC,
                         concurrency: int = 4) -> JudgeReport:
    """Judge a ``rate`` sample of the window's answered captures with ``model``; see the module docstring."""
    import asyncio

    import orjson

    from tierwise.rollout.capture import iter_captured, open_rollout_store
    from tierwise.rollout.records import Feedback
    from tierwise.rollout.trial import TrialRunner, _BudgetReached
    from tierwise.rollout.trial_judge import parse_judge

    source = f"judge:{model}"
    report = JudgeReport()
    store = open_rollout_store(cfg)
    try:
        done = {f.request_id for f in store.iter_feedback(None, None) if f.source == source}
        todo = []
        for c in iter_captured(cfg, since=since, until=until, tiers=tiers):
            if c.answer is None or c.status != "ok":
                continue
            report.considered += 1
            if not sampled(c.request_id, rate, seed):
                continue
            report.sampled += 1
            if c.request_id in done:
                report.already += 1
                continue
            todo.append(c)
        runner = TrialRunner(cfg, out_dir, parse_judge(f"llm:{model}"), budget_usd=budget_usd,
                             concurrency=concurrency, rubric=rubric)
        log = Path(out_dir) / "judge-labels.jsonl"

        async def one(c: Any) -> None:
            try:
                res = await runner._call(model, grade_messages(rubric, c.messages, c.answer), {"max_tokens": 512},
                                         None)
            except _BudgetReached:
                return
            with open(log, "ab") as fh:
                fh.write(orjson.dumps({"id": c.request_id, "tier": c.tier, "model": model, **res}) + b"\n")
            if res.get("error"):
                report.failed += 1
                return
            score = grade(res.get("answer"))
            if score is None:
                report.no_grade += 1
                return
            store.put_feedback(Feedback(c.request_id, source=source, ts=time.time(), score=score))
            report.labelled += 1
            report.scores.setdefault(c.tier or "-", []).append(score)

        try:
            await asyncio.gather(*(one(c) for c in todo))
        finally:
            await runner.aclose()
        report.spent_usd = runner.spent
        report.stopped_by_budget = runner.stopped_by_budget
    finally:
        store.close()
    return report
