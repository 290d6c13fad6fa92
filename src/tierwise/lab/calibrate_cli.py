"""``tierwise calibrate``: fit a cascade on a set's train split, run the fitted point once on its test split.

Why a module of its own: the command and its report (:func:`describe`, the latency lines, the ``--json`` result) are
one job, apart from ``tierwise eval`` (:mod:`tierwise.lab.eval_cli`); what the two share is in
:mod:`tierwise.lab.cli_common`. ``--kind cascade`` fits thresholds on the rungs' own log-prob/vote confidence here;
``--kind contextual`` is :mod:`tierwise.lab.contextual_cli`; ``--from-ledger`` is
:mod:`tierwise.rollout.recalibrate`. ``--data`` is a registry name (``zellinger/mmlu/llama``, see
``tierwise.lab.datasets.list_sets``) or a path to an outcome file (``<stem>.jsonl.gz`` with its ``.meta.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tierwise.lab.calibrate import CalibrationResult, calibrate_point
from tierwise.lab.cli_common import (
    Margins,
    UsageError,
    cascade_calibrator,
    labelled,
    latency_cap,
    margins,
    parse_budget,
)
from tierwise.lab.datasets import OutcomeSet
from tierwise.lab.datasets.ledger import load_data


def cmd_calibrate(args: argparse.Namespace) -> int:
    m = margins(args, "contextual" if args.kind == "contextual" else "cascade")
    if args.from_ledger:  # re-fit on live traffic, proposed as a canary (tierwise.rollout.recalibrate)
        from tierwise.rollout.recalibrate import calibrate_from_ledger

        return calibrate_from_ledger(args, m.family_z)
    if not args.data:
        raise UsageError("calibrate needs --data (an outcome set) or --from-ledger")
    oset = labelled(load_data(args.data), args)
    if args.kind == "contextual":
        return _calibrate_contextual(args, oset, m)
    calib = cascade_calibrator(oset, args)
    test = oset.split("test")
    if args.max_cost is not None:
        res = calibrate_point(calib, test, "cost", parse_budget(args.max_cost), m.family_z)
        print(describe(res, oset, m.family_z))
    else:
        from tierwise.lab.crossfit import calibrate_cascade

        res, z, detail = calibrate_cascade(calib, test, args.target_quality, m.procedure, m.given_z,
                                           one_chain=args.chain not in (None, "auto"))
        print(describe(res, oset, z) + (f"\n  procedure {m.procedure}: {detail}" if detail else ""))
    if args.config:
        from tierwise.lab.configwrite import ConfigWriteError, write_cascade

        if not args.tier:
            raise UsageError("--config needs --tier NAME (the tier whose cascade to write)")
        try:
            backup = write_cascade(args.config, args.tier, res.cal.chain, res.cal.gate, res.cal.thresholds,
                                   res.cal.params)
        except ConfigWriteError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        print(f"wrote tier '{args.tier}' into {args.config} (previous version: {backup})")
    if args.json:
        Path(args.json).write_text(json.dumps(result_json(res, oset), indent=2), encoding="utf-8")
    return 0


def _calibrate_contextual(args: argparse.Namespace, oset: OutcomeSet, m: Margins) -> int:
    """``calibrate --kind contextual``: see :mod:`tierwise.lab.contextual_cli`."""
    from tierwise.lab.contextual_cli import calibrate_contextual, describe_extra, write_report

    if args.chain not in (None, "auto") or args.gate:
        raise UsageError("--kind contextual searches every sub-chain and gates on what each rung recorded: "
                         "--chain and --gate are for --kind cascade")
    if latency_cap(args) is not None:
        raise UsageError("--max-p95-latency-ms is for --kind cascade (the contextual search has no latency "
                         "constraint yet)")
    if args.relative_to != "best":
        raise UsageError("--kind contextual targets the best train model's quality (--relative-to best)")
    if args.config and not args.tier:
        raise UsageError("--config needs --tier NAME (the tier whose cascade to write)")
    if not oset.split("train").prompts or not oset.count("test"):
        raise UsageError(f"{oset.name}: calibration needs prompts in both splits (train {len(oset.split('train'))}, "
                         f"test {oset.count('test')})")
    budget = parse_budget(args.max_cost) if args.max_cost is not None else None
    out = Path(args.out)
    res, fitted, tier, fit, pool = calibrate_contextual(args, oset, budget, m)
    z = m.family_z if budget is not None else m.point()
    print(describe(res, oset, z))
    print(describe_extra(fit, fitted, pool, out))
    write_report(out / "calibration.json", res, fitted, tier, fit, oset.name, pool, z)
    print(f"wrote {out / 'calibration.json'}")
    if args.config:
        from tierwise.lab.configwrite import ConfigWriteError, write_tier

        try:
            backup = write_tier(args.config, args.tier, tier)
        except ConfigWriteError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        print(f"wrote tier '{args.tier}' into {args.config} (previous version: {backup})")
    if args.json:
        Path(args.json).write_text((out / "calibration.json").read_text(encoding="utf-8"), encoding="utf-8")
    return 0


def describe(res: CalibrationResult, oset: OutcomeSet, z: float) -> str:
    c, h = res.cal, res.held
    cref = oset.split("test").mean_cost(res.ref_model) or float("nan")
    goal = (f"quality >= {res.knob:g} x {res.ref_model} (train target {res.target_train:.4f}, z={z:g})"
            if res.mode == "quality" else f"mean cost <= ${res.knob:.6g}/request")
    lines = [
        f"{oset.name}: {goal}",
        f"  chain: {' -> '.join(c.chain)}  gate: {c.gate}  thresholds: {[round(t, 6) for t in c.thresholds]}",
        f"  train: quality {c.train_quality:.4f}, cost ${c.train_cost:.6g}/req"
        + ("" if c.feasible else f"  (target not provable on train with the margins: {res.ref_model} alone)"
           if c.chain == [res.ref_model] else "  (target NOT reachable on train: closest point)"),
        f"  selection guard: the train slack had to exceed {c.guard:.4f} (k-fold CV of the search; --cv-folds 0 "
        "turns it off)",
        f"  test (engine, n={len(h.results)}): quality {h.quality:.4f} [95% CI {h.quality_ci[0]:.4f}, "
        f"{h.quality_ci[1]:.4f}], cost ${h.cost:.6g}/req [{h.cost_ci[0]:.6g}, {h.cost_ci[1]:.6g}] "
        f"= {100 * h.cost / cref:.1f}% of {res.ref_model}",
        f"  test target {res.target_test:.4f}: {'met' if res.met_on_test else 'NOT met'}",
        *latency_lines(res, oset),
    ]
    return "\n".join(lines)


def latency_lines(res: CalibrationResult, oset: OutcomeSet) -> list[str]:
    """p50/p95 latency and streaming TTFT of the calibrated point on train (the simulator's served rungs) and on
    test (the engine's runs), with where the numbers come from (:mod:`tierwise.lab.latency`)."""
    from tierwise.lab.cascade_sim import cascade_data, simulate
    from tierwise.lab.evaluate import PromptResult
    from tierwise.lab.latency import LatencyModel

    c, test, train = res.cal, oset.split("test"), oset.split("train")
    runs: list[PromptResult] = []
    if c.gate in ("logprob", "vote"):  # the contextual gate is not in the simulator: test numbers only
        sim = simulate(cascade_data(train, c.chain, c.gate, c.params), c.thresholds)
        runs = [PromptResult(p.id, list(c.chain[: int(k) + 1]), c.chain[int(k)], 0.0, 0.0)
                for p, k in zip(train.prompts, sim.served, strict=True)]
    lm_test = LatencyModel(test)
    return [*([f"  latency train: {LatencyModel(train).stats(runs, {c.chain[-1]}).text()}"] if runs else []),
            f"  latency test:  {lm_test.stats(res.held.results, {c.chain[-1]}).text()}",
            f"  ({lm_test.provenance(c.chain)}; TTFT when streamed: a gated rung's answer is released after its gate)"]


def result_json(res: CalibrationResult, oset: OutcomeSet) -> dict[str, Any]:
    c, h = res.cal, res.held
    return {
        "data": oset.name, "mode": res.mode, "knob": res.knob, "ref_model": res.ref_model,
        "chain": c.chain, "gate": c.gate, "thresholds": c.thresholds, "gate_params": c.params,
        "train": {"quality": c.train_quality, "cost": c.train_cost, "feasible": c.feasible,
                  "selection_guard": c.guard},
        "test": {"quality": h.quality, "quality_ci95": h.quality_ci, "cost": h.cost, "cost_ci95": h.cost_ci,
                 "n": len(h.results), "target": res.target_test, "met": res.met_on_test},
        "tier": c.tier(),
        "latency": _latency_json(res, oset),
    }


def _latency_json(res: CalibrationResult, oset: OutcomeSet) -> dict[str, Any]:
    from tierwise.lab.latency import LatencyModel

    lm = LatencyModel(oset.split("test"))
    return {"test": lm.stats(res.held.results, {res.cal.chain[-1]}).to_json(), "source": lm.provenance(res.cal.chain)}
