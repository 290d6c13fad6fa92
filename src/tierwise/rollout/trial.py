"""``tierwise trial``: run candidate models on a labelling file through the real providers, and judge them.

Every candidate answer and every judgement is appended to a results file in the output directory the moment it
exists (``answers.jsonl``, ``judgements.jsonl``), so a trial stopped by Ctrl-C, a crash or its budget resumes where
it stopped: a second run skips the (prompt, model) pairs already answered and judged, and tries failed calls again.
A torn last line (a crash mid-write) is ignored and redone; the last line for a pair wins.

Calls go straight to each model's provider (the same adapters the gateway uses), at most ``concurrency`` at a time,
non-streamed, with ``logprobs`` asked for where the model offers them (the outcome set's ``confidence`` is then
exp(mean token log-prob), what the logprob gate computes). A call that fails is an answer of quality 0 (a failure the
incumbent did not have), counted apart as an error. The budget covers candidate and judge calls together: a call
whose pre-call estimate would take the spend beyond it is not started, and the trial stops, saying so (an answer
longer than estimated — the estimate assumes the model's ``expected_output_tokens`` — overshoots by the difference).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson

from tierwise.config.schema import TierwiseConfig
from tierwise.rollout.trial_judge import (
    DEFAULT_RUBRIC,
    Judge,
    judge_messages,
    pair_score,
    rule_score,
    verdict,
)

JSON = dict[str, Any]


class TrialInputError(Exception):
    """The labelling file or the options are unusable; the message names the file, line and field."""


@dataclass(slots=True)
class LabelRow:
    id: str
    tier: str
    prompt: str
    messages: list[Any]
    params: JSON
    incumbent: JSON
    reference: str | None = None
    quality: float | None = None
    labels: dict[str, float] = field(default_factory=dict)


def read_labels(path: str | Path) -> list[LabelRow]:
    """The labelling file ``tierwise sample`` wrote (possibly labelled); TrialInputError on a bad line."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise TrialInputError(f"{p}: cannot read: {exc.strerror}") from None
    rows: list[LabelRow] = []
    seen: set[str] = set()
    for n, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            d = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise TrialInputError(f"{p}:{n}: not valid JSON") from None
        if not isinstance(d, dict):
            raise TrialInputError(f"{p}:{n}: each line must be a JSON object")
        for key in ("id", "tier", "messages", "incumbent"):
            if key not in d:
                raise TrialInputError(f"{p}:{n}: missing column '{key}'")
        inc = d["incumbent"]
        if not isinstance(inc, dict) or not isinstance(inc.get("model"), str) or not isinstance(inc.get("answer"), str):
            raise TrialInputError(f"{p}:{n}: 'incumbent' needs 'model' and 'answer' (strings)")
        if not isinstance(d["messages"], list) or not d["messages"]:
            raise TrialInputError(f"{p}:{n}: 'messages' must be a non-empty list")
        if d["id"] in seen:
            raise TrialInputError(f"{p}:{n}: duplicate id {d['id']!r}")
        seen.add(d["id"])
        q = d.get("quality")
        if q is not None and (isinstance(q, bool) or not isinstance(q, int | float) or not 0 <= q <= 1):
            raise TrialInputError(f"{p}:{n}: 'quality' must be a number in [0, 1] or null")
        labels = d.get("labels") or {}
        if not isinstance(labels, dict) or any(
                isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1 for v in labels.values()):
            raise TrialInputError(f"{p}:{n}: 'labels' must map model names to numbers in [0, 1]")
        from tierwise.rollout.sample import last_user_text

        rows.append(LabelRow(str(d["id"]), str(d["tier"]), str(d.get("prompt") or last_user_text(d["messages"])),
                             d["messages"], d.get("params") or {}, inc, d.get("reference"),
                             None if q is None else float(q), {str(k): float(v) for k, v in labels.items()}))
    if not rows:
        raise TrialInputError(f"{p}: no prompts in the file")
    return rows


def _load_results(path: Path, key: Callable[[JSON], tuple[str, str]]) -> dict[tuple[str, str], JSON]:
    out: dict[tuple[str, str], JSON] = {}
    if not path.exists():
        return out
    for line in path.read_bytes().splitlines():
        try:
            d = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a torn last line: redone
        out[key(d)] = d
    return out


class Progress:
    """A one-line progress bar on stderr (a line per 10 % when it is not a terminal)."""

    def __init__(self, total: int, out: TextIO = sys.stderr) -> None:
        self.total, self.done, self.out = total, 0, out
        self._tty = out.isatty()
        self._last_decile = -1

    def step(self, spent: float) -> None:
        self.done += 1
        frac = self.done / self.total if self.total else 1.0
        if self._tty:
            bar = "#" * int(frac * 30)
            self.out.write(f"\r[{bar:<30}] {self.done}/{self.total} ${spent:.4f}")
            if self.done == self.total:
                self.out.write("\n")
        elif int(frac * 10) != self._last_decile:
            self._last_decile = int(frac * 10)
            self.out.write(f"trial: {self.done}/{self.total} done, ${spent:.4f} spent\n")
        self.out.flush()


class TrialRunner:
    """Runs (prompt, model) pairs and judgements; see the module docstring."""

    def __init__(self, cfg: TierwiseConfig, out_dir: str | Path, judge: Judge, *, budget_usd: float,
                 concurrency: int = 4, rubric: str = DEFAULT_RUBRIC, progress: Progress | None = None) -> None:
        from tierwise.pricing import PriceBook
        from tierwise.providers.registry import build_providers

        self.cfg, self.judge, self.rubric = cfg, judge, rubric
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.prices = PriceBook(cfg)
        self.providers = build_providers(cfg)
        self.budget = budget_usd
        self.spent = 0.0
        self._reserved = 0.0
        self.stopped_by_budget = False
        self._sem = asyncio.Semaphore(concurrency)
        self.progress = progress
        self.answers = _load_results(self.out / "answers.jsonl", lambda d: (d["id"], d["model"]))
        self.judgements = _load_results(self.out / "judgements.jsonl", lambda d: (d["id"], d["model"]))
        self.spent = sum(float(a.get("cost_usd") or 0) for a in self.answers.values()) + sum(
            float(j.get("judge_cost_usd") or 0) for j in self.judgements.values())
        self._answers_fh = open(self.out / "answers.jsonl", "ab")  # noqa: SIM115 - held for the run
        self._judge_fh = open(self.out / "judgements.jsonl", "ab")  # noqa: SIM115

    async def aclose(self) -> None:
        for p in self.providers.values():
            await p.aclose()
        self._answers_fh.close()
        self._judge_fh.close()

    def _append(self, fh: Any, d: JSON) -> None:
        fh.write(orjson.dumps(d) + b"\n")
        fh.flush()

    async def _call(self, model: str, messages: list[Any], params: JSON, tier: str | None) -> JSON:
        """One non-streamed call within the budget; returns answer/usage/cost/latency or an error."""
        mcfg = self.cfg.models[model]
        body = {**{k: v for k, v in params.items() if k not in ("stream", "stream_options", "model")},
                "messages": messages, "model": mcfg.upstream or model}
        estimate = self.prices.estimator(body, tier)(model)
        async with self._sem:
            if self.spent + self._reserved + estimate > self.budget:
                self.stopped_by_budget = True
                raise _BudgetReached
            self._reserved += estimate
            started = time.perf_counter()
            try:
                provider = self.providers[mcfg.provider]
                timeout = self.cfg.providers[mcfg.provider].timeout_s
                try:
                    c = await provider.complete({**body, "logprobs": True} if self._wants_logprobs(mcfg) else body,
                                                timeout_s=timeout)
                except Exception as exc:
                    return {"answer": None, "error": f"{type(exc).__name__}: {str(exc)[:300]}",
                            "cost_usd": 0.0, "latency_ms": (time.perf_counter() - started) * 1000}
                cost = c.billed_usd if c.billed_usd is not None else self.prices.cost(model, c.usage).total_usd
                self.spent += cost
                from tierwise.routing.gates.logprob import mean_logprob_confidence

                return {"answer": c.text, "error": None, "input_tokens": c.usage.input_tokens,
                        "output_tokens": c.usage.output_tokens, "cost_usd": cost,
                        "latency_ms": (time.perf_counter() - started) * 1000,
                        "confidence": mean_logprob_confidence(c.logprobs) if c.logprobs else None}
            finally:
                self._reserved -= estimate

    def _wants_logprobs(self, mcfg: Any) -> bool:
        return self.cfg.providers[mcfg.provider].format in ("openai", "llamacpp") and not mcfg.reasoning

    async def answer(self, row: LabelRow, model: str) -> JSON | None:
        key = (row.id, model)
        if key in self.answers and not self.answers[key].get("error"):
            return self.answers[key]
        if key in self.answers:  # a failed call is tried again on resume; its 0 judgement goes with it
            self.judgements.pop(key, None)
        try:
            got = await self._call(model, row.messages, row.params, row.tier)
        except _BudgetReached:
            return None
        got = {"id": row.id, "model": model, "tier": row.tier, **got}
        self.answers[key] = got
        self._append(self._answers_fh, got)
        return got

    async def judged(self, row: LabelRow, model: str, ans: JSON) -> JSON | None:
        key = (row.id, model)
        if key in self.judgements:
            return self.judgements[key]
        j = self.judge
        cost = 0.0
        detail: JSON = {}
        if ans.get("answer") is None:
            quality: float | None = 0.0
            detail["why"] = "the call failed"
        elif j.kind == "labels":
            quality = row.labels.get(model)
            if quality is None:
                return None  # not labelled yet: left out, counted
        elif j.kind == "llm":
            assert j.arg is not None
            incumbent, candidate = row.incumbent["answer"], ans["answer"]
            verdicts = []
            for a, b in ((incumbent, candidate), (candidate, incumbent)):
                try:
                    r = await self._call(j.arg, judge_messages(self.rubric, row.prompt, a, b), {"temperature": 0},
                                         None)
                except _BudgetReached:
                    return None
                cost += float(r.get("cost_usd") or 0)
                verdicts.append(verdict(r["answer"]) if r.get("answer") else None)
            quality = pair_score(verdicts[0], verdicts[1])
            detail["verdicts"] = verdicts
            if quality is None:
                return None
        else:
            reference = row.reference if row.reference is not None else row.incumbent["answer"]
            quality = rule_score(j, ans["answer"], reference)
        out = {"id": row.id, "model": model, "judge": f"{j.kind}:{j.arg}" if j.arg else j.kind,
               "quality": quality, "judge_cost_usd": cost, **detail}
        self.judgements[key] = out
        self._append(self._judge_fh, out)
        return out

    async def run(self, rows: list[LabelRow], plan: dict[str, list[str]]) -> None:
        pairs = [(r, m) for r in rows for m in plan.get(r.tier, [])]
        if self.progress is not None:
            self.progress.total = len(pairs)

        async def one(row: LabelRow, model: str) -> None:
            ans = await self.answer(row, model)
            if ans is not None:
                await self.judged(row, model, ans)
            if self.progress is not None:
                self.progress.step(self.spent)

        await asyncio.gather(*(one(r, m) for r, m in pairs))

    def incumbent_quality(self, row: LabelRow) -> float:
        if self.judge.rules_incumbent:
            return rule_score(self.judge, row.incumbent["answer"], "")
        if self.judge.kind in ("exact", "normalised", "contains") and row.reference is not None and row.quality is None:
            return rule_score(self.judge, row.incumbent["answer"], row.reference)
        return row.quality if row.quality is not None else 1.0


class _BudgetReached(Exception):
    pass
