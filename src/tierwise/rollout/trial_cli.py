"""``tierwise sample`` and ``tierwise trial`` on the command line (see :mod:`tierwise.rollout.sample` and
:mod:`tierwise.rollout.trial`)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from tierwise.config import ConfigError, load_config


def _config(path: str) -> Any:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise SystemExit(f"tierwise: {exc}") from None


def cmd_sample(args: Any) -> int:
    from tierwise.ledger.spend_cli import parse_when
    from tierwise.rollout.sample import write_sample

    cfg = _config(args.config)
    if args.per_tier < 1:
        raise SystemExit("tierwise: --per-tier must be at least 1")
    try:
        since = parse_when(args.since) if args.since else None
        until = parse_when(args.until) if args.until else None
    except ValueError as exc:
        raise SystemExit(f"tierwise: {exc}") from None
    tiers = args.tiers.split(",") if args.tiers else None
    counts = write_sample(cfg, args.out, args.per_tier, since=since, until=until, tiers=tiers, seed=args.seed)
    if not counts:
        print(f"{args.out}: no answered captures in the window (is rollout.capture on?); the file is empty",
              file=sys.stderr)
    for tier, n in counts.items():
        print(f"{tier}: {n} prompts")
    print(f"wrote {args.out}")
    return 0


def _plan(cfg: Any, rows: list[Any], models: str | None, per_tier: list[str]) -> dict[str, list[str]]:
    plan: dict[str, list[str]] = {}
    everywhere = [m for m in (models or "").split(",") if m]
    for r in rows:
        plan.setdefault(r.tier, list(everywhere))
    for spec in per_tier:
        tier, sep, names = spec.partition("=")
        if not sep or not names:
            raise SystemExit(f"tierwise: --tier-models {spec!r}: use TIER=MODEL[,MODEL...]")
        plan[tier] = [m for m in names.split(",") if m]
    unknown = sorted({m for ms in plan.values() for m in ms if m not in cfg.models})
    if unknown:
        raise SystemExit(f"tierwise: model(s) {unknown} are not in the config's models: (known: "
                         f"{', '.join(sorted(cfg.models))})")
    if not any(plan.values()):
        raise SystemExit("tierwise: no candidate models: give --models M1,M2 or --tier-models TIER=M1,M2")
    return plan


def cmd_judge(args: Any) -> int:
    from tierwise.ledger.spend_cli import parse_when
    from tierwise.rollout.judge_live import JUDGE_RUBRIC, judge_captured

    cfg = _config(args.config)
    if args.model not in cfg.models:
        raise SystemExit(f"tierwise: judge model '{args.model}' is not in the config's models: "
                         f"{', '.join(sorted(cfg.models))}")
    if not 0 < args.rate <= 1:
        raise SystemExit(f"tierwise: --rate is a share of requests in (0, 1], got {args.rate}")
    if args.budget_usd <= 0:
        raise SystemExit("tierwise: --budget-usd must be > 0 (the judge calls a real provider)")
    try:
        since = parse_when(args.since) if args.since else None
        until = parse_when(args.until) if args.until else None
    except ValueError as exc:
        raise SystemExit(f"tierwise: {exc}") from None
    rubric = Path(args.rubric).read_text(encoding="utf-8") if args.rubric else JUDGE_RUBRIC
    report = asyncio.run(judge_captured(
        cfg, args.model, args.out, rate=args.rate, seed=args.seed, budget_usd=args.budget_usd, since=since,
        until=until, tiers=args.tiers.split(",") if args.tiers else None, rubric=rubric,
        concurrency=args.concurrency))
    print("\n".join(report.lines(args.model)))
    return 3 if report.stopped_by_budget else 0


def cmd_trial(args: Any) -> int:
    from tierwise.rollout.trial import Progress, TrialInputError, TrialRunner, read_labels
    from tierwise.rollout.trial_judge import DEFAULT_RUBRIC, parse_judge
    from tierwise.rollout.trial_output import render, write_all

    cfg = _config(args.config)
    try:
        judge = parse_judge(args.judge)
        rows = read_labels(args.labels)
    except (ValueError, TrialInputError) as exc:
        raise SystemExit(f"tierwise: {exc}") from None
    if judge.kind == "llm" and judge.arg not in cfg.models:
        raise SystemExit(f"tierwise: judge model '{judge.arg}' is not in the config's models:")
    if args.budget_usd <= 0:
        raise SystemExit("tierwise: --budget-usd must be > 0 (the trial calls real providers)")
    plan = _plan(cfg, rows, args.models, args.tier_models or [])
    rubric = Path(args.rubric).read_text(encoding="utf-8") if args.rubric else DEFAULT_RUBRIC

    async def go() -> tuple[Any, Any]:
        runner = TrialRunner(cfg, args.out, judge, budget_usd=args.budget_usd, concurrency=args.concurrency,
                             rubric=rubric, progress=None if args.quiet else Progress(0))
        try:
            await runner.run(rows, plan)
        finally:
            await runner.aclose()
        return runner, write_all(runner, rows, plan)

    runner, (doc, sets) = asyncio.run(go())
    print(render(doc))
    for p in sets:
        print(f"outcome set: {p}  (tierwise calibrate --data {p} ...)")
    return 3 if runner.stopped_by_budget else 0


def add_parsers(sub: Any) -> None:
    default_cfg = os.environ.get("TIERWISE_CONFIG", "tierwise.yaml")
    p = sub.add_parser("sample", help="write a stratified sample of captured prompts per tier to a labelling file")
    p.add_argument("--config", "-c", default=default_cfg)
    p.add_argument("--out", "-o", required=True, help="the labelling file (JSONL), written atomically")
    p.add_argument("--per-tier", type=int, default=200, help="prompts per tier (default 200)")
    p.add_argument("--since", help="start of the window (ISO-8601, unix seconds, or a span back such as 7d)")
    p.add_argument("--until", help="end of the window (exclusive)")
    p.add_argument("--tiers", help="comma-separated tiers (default: every tier captured)")
    p.add_argument("--seed", default="0", help="sampling seed (same seed, same captures: same sample)")
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("judge", help="label a sample of captured live answers with an LLM judge (stored as feedback)")
    p.add_argument("--config", "-c", default=default_cfg)
    p.add_argument("--model", required=True, help="the judge model (a model of the config)")
    p.add_argument("--rate", type=float, default=0.05, help="share of the window's answered captures (default 0.05)")
    p.add_argument("--since", help="start of the window (ISO-8601, unix seconds, or a span back such as 1d)")
    p.add_argument("--until", help="end of the window (exclusive)")
    p.add_argument("--tiers", help="comma-separated tiers (default: every tier captured)")
    p.add_argument("--seed", default="0", help="sampling seed (same seed: same sample; a re-run judges only new ones)")
    p.add_argument("--rubric", help="a file with the rubric (system prompt); it must ask for a 'SCORE: N' line 0-10")
    p.add_argument("--budget-usd", type=float, required=True, help="this run's judge budget")
    p.add_argument("--concurrency", type=int, default=4, help="calls at once (default 4)")
    p.add_argument("--out", "-o", required=True, help="directory: judge-labels.jsonl (every judge call, its cost)")
    p.set_defaults(fn=cmd_judge)

    p = sub.add_parser("trial", help="run candidate models on a labelling file and judge them against the incumbent")
    p.add_argument("--config", "-c", default=default_cfg)
    p.add_argument("--labels", required=True, help="the labelling file (tierwise sample)")
    p.add_argument("--models", help="candidate models for every tier, comma-separated")
    p.add_argument("--tier-models", action="append", metavar="TIER=M1,M2", help="candidates of one tier (repeat)")
    p.add_argument("--judge", default="normalised",
                   help="exact | normalised | contains | json | regex:PATTERN | llm:MODEL | labels (default normalised)")
    p.add_argument("--rubric", help="llm judge: a file with the rubric (system prompt)")
    p.add_argument("--budget-usd", type=float, required=True, help="the trial's own budget (candidates + judge)")
    p.add_argument("--concurrency", type=int, default=4, help="calls at once (default 4)")
    p.add_argument("--out", "-o", required=True, help="directory: answers, judgements, trial.json, outcome sets; "
                                                      "running again resumes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_trial)
