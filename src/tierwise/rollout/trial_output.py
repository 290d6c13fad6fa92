"""What ``tierwise trial`` writes: a table per tier, ``trial.json`` (read by ``tierwise advise --trial``), and one
outcome set per tier (``trial-<tier>.jsonl.gz`` + ``.meta.json``, design §5) that ``calibrate``, ``train-router``
and ``eval`` read with ``--data`` as they read the public sets.

Quality intervals are 95 %: Wilson's when every score is 0 or 1 (exact match, validity, human 0/1 labels), else the
normal interval of the mean (clipped to [0, 1]). Costs are the sums over the prompts each candidate answered, set
beside the incumbent's cost of the same prompts (from the ledger, as served), so the two are comparable.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from tierwise.fsutil import atomic_write
from tierwise.rollout.stats import Z95, wilson
from tierwise.rollout.trial import LabelRow, TrialRunner


def interval(values: list[float]) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high) at 95 %."""
    n = len(values)
    if n == 0:
        return None, None, None
    mean = sum(values) / n
    if all(v in (0.0, 1.0) for v in values):
        lo, hi = wilson(int(sum(values)), n)
        return mean, lo, hi
    if n < 2:
        return mean, None, None
    half = Z95 * statistics.stdev(values) / math.sqrt(n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def summarise(runner: TrialRunner, rows: list[LabelRow], plan: dict[str, list[str]]) -> dict[str, Any]:
    """The ``trial.json`` document (format agreed with ``tierwise advise``; see /work/notes/capture-interface.md)."""
    tiers: dict[str, Any] = {}
    for tier in sorted({r.tier for r in rows}):
        trows = [r for r in rows if r.tier == tier]
        inc_q = [runner.incumbent_quality(r) for r in trows]
        m, lo, hi = interval(inc_q)
        inc_model = Counter(r.incumbent["model"] for r in trows).most_common(1)[0][0]
        entry: dict[str, Any] = {"incumbent": inc_model, "n": len(trows), "incumbent_quality": m,
                                 "incumbent_ci_low": lo, "incumbent_ci_high": hi, "candidates": {}}
        for model in plan.get(tier, []):
            qs, cost, inc_cost, lat, errors, judge_cost, unjudged = [], 0.0, 0.0, [], 0, 0.0, 0
            for r in trows:
                ans = runner.answers.get((r.id, model))
                j = runner.judgements.get((r.id, model))
                if ans is None or j is None:
                    unjudged += 1
                    continue
                qs.append(float(j["quality"]))
                cost += float(ans.get("cost_usd") or 0)
                inc_cost += float(r.incumbent.get("cost_usd") or 0)
                judge_cost += float(j.get("judge_cost_usd") or 0)
                if ans.get("error"):
                    errors += 1
                elif ans.get("latency_ms") is not None:
                    lat.append(float(ans["latency_ms"]))
            q, qlo, qhi = interval(qs)
            entry["candidates"][model] = {
                "n": len(qs), "quality": q, "ci_low": qlo, "ci_high": qhi, "cost_usd": cost,
                "incumbent_cost_usd": inc_cost, "latency_ms_p50": statistics.median(lat) if lat else None,
                "errors": errors, "judge_cost_usd": judge_cost, "not_judged": unjudged}
        tiers[tier] = entry
    return {"judge": runner.judge.kind if runner.judge.arg is None else f"{runner.judge.kind}:{runner.judge.arg}",
            "spent_usd": runner.spent, "stopped_by_budget": runner.stopped_by_budget, "tiers": tiers}


def render(doc: dict[str, Any]) -> str:
    def f(v: Any, spec: str = ".3f") -> str:
        return "-" if v is None else format(v, spec)

    lines = [f"trial (judge {doc['judge']}): spent ${doc['spent_usd']:.4f}"
             + (" — STOPPED by its budget: rerun with a larger --budget-usd to resume" if doc["stopped_by_budget"]
                else "")]
    for tier, e in doc["tiers"].items():
        lines.append(f"\ntier {tier}: {e['n']} prompts; incumbent {e['incumbent']} quality {f(e['incumbent_quality'])}"
                     f" [{f(e['incumbent_ci_low'])}, {f(e['incumbent_ci_high'])}]")
        lines.append(f"  {'model':24} {'n':>5} {'quality':>8} {'95% CI':>16} {'cost $':>10} {'incumbent $':>12} "
                     f"{'p50 ms':>8} {'errors':>6} {'judge $':>9}")
        for model, c in e["candidates"].items():
            lines.append(f"  {model:24} {c['n']:>5} {f(c['quality']):>8} {'[' + f(c['ci_low']) + ', ' + f(c['ci_high']) + ']':>16} "
                         f"{c['cost_usd']:>10.5f} {c['incumbent_cost_usd']:>12.5f} {f(c['latency_ms_p50'], '.0f'):>8} "
                         f"{c['errors']:>6} {c['judge_cost_usd']:>9.5f}")
            if c["not_judged"]:
                lines.append(f"    ({c['not_judged']} prompts not answered or judged yet)")
    return "\n".join(lines)


def write_outcome_sets(runner: TrialRunner, rows: list[LabelRow], plan: dict[str, list[str]],
                       out: Path) -> list[Path]:
    """One outcome set per tier: the incumbent and every candidate, on the prompts all of them have an outcome for."""
    from tierwise.lab.datasets.format import ModelOutcome, OutcomeSet, PromptOutcomes
    from tierwise.lab.datasets.outcome_io import write_outcome_set
    from tierwise.lab.datasets.splits import hash_split, hash_split_meta

    paths = []
    for tier in sorted({r.tier for r in rows}):
        trows = [r for r in rows if r.tier == tier]
        models_seen = {r.incumbent["model"] for r in trows}
        inc_name = next(iter(models_seen)) if len(models_seen) == 1 else "incumbent"
        cands = [m for m in plan.get(tier, []) if m != inc_name]
        prompts = []
        for r in trows:
            outs = {}
            for m in cands:
                ans, j = runner.answers.get((r.id, m)), runner.judgements.get((r.id, m))
                if ans is None or j is None:
                    break
                outs[m] = ModelOutcome(ans.get("answer"), float(j["quality"]), ans.get("input_tokens"),
                                       ans.get("output_tokens"), ans.get("cost_usd"), ans.get("confidence"),
                                       latency_ms=ans.get("latency_ms"))
            else:
                inc = r.incumbent
                outs[inc_name] = ModelOutcome(inc["answer"], runner.incumbent_quality(r), inc.get("input_tokens"),
                                              inc.get("output_tokens"), inc.get("cost_usd"),
                                              latency_ms=inc.get("latency_ms"))
                system = next((m.get("content") for m in r.messages if isinstance(m, dict)
                               and m.get("role") == "system" and isinstance(m.get("content"), str)), None)
                prompts.append(PromptOutcomes(r.id, hash_split(r.prompt), r.prompt, outs, system=system,
                                              reference=r.reference, meta={"tier": tier}))
        if not prompts:
            continue
        oset = OutcomeSet(f"trial-{tier}", [*cands, inc_name], prompts, meta={
            "source": "tierwise trial (captured traffic)", "judge": runner.judge.kind,
            "incumbent_models": sorted(models_seen), "split": hash_split_meta()})
        paths.append(write_outcome_set(oset, out, f"trial-{tier}"))
    return paths


def write_all(runner: TrialRunner, rows: list[LabelRow], plan: dict[str, list[str]]) -> tuple[dict[str, Any], list[Path]]:
    doc = summarise(runner, rows, plan)
    atomic_write(runner.out / "trial.json", orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    return doc, write_outcome_sets(runner, rows, plan, runner.out)
