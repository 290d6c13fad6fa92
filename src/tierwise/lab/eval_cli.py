"""``tierwise calibrate`` and ``tierwise eval``: fit cascades on train, measure routers on the held-out split.

Wire into the main CLI with ``add_parsers(subparsers)``. Both commands take ``--data`` as a registry name
(``zellinger/mmlu/llama``, see ``tierwise.lab.datasets.list_sets``) or a path to an outcome file
(``<stem>.jsonl.gz`` with its ``.meta.json``). Bad input (a malformed dataset, unknown model or set) prints one clear
message and exits 2, never a traceback.

The cascade knob (``eval --router cascade:GATE``): τ, the quality target as a multiple of the reference model's train
quality, from 0.80 to 1.02 in steps of 0.01; each τ is calibrated on train (sub-chain + thresholds) and run on test
through the engine. The hull over those test points is read in hindsight; the τ = ``--target-quality`` point is the
honest, train-fitted one and is reported apart.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tierwise.cli_lab import ROUTERS  # noqa: E402
from tierwise.lab.calibrate import (
    CalibrationResult,
    CascadeCalibrator,
    calibrate_point,
    calibrated_curve,
)
from tierwise.lab.contextual_eval import knob_taus
from tierwise.lab.curve_bootstrap import PerPrompt, curve_draws, interval
from tierwise.lab.datasets import (
    OutcomeFormatError,
    OutcomeSet,
    SharedDataMissing,
)
from tierwise.lab.datasets.ledger import load_data
from tierwise.lab.eval_subset import apgr_of, baseline_rows, restrict_rows
from tierwise.lab.evaluate import run_tier, single_tier
from tierwise.lab.metrics import (
    Baselines,
    Point,
    compute_baselines,
    evaluate_curve,
)
from tierwise.lab.report import Row, metrics_table, plot_png, write_html


class UsageError(Exception):
    """A user mistake with a message that says how to fix it (exit 2)."""


from tierwise.progress import progress_bar  # noqa: E402  (re-exported: the lab's one progress bar)


def check_models(oset: OutcomeSet, names: list[str], what: str) -> None:
    priced = oset.priced_models()
    bad = [m for m in names if m not in priced]
    if bad:
        raise UsageError(f"{what}: unknown or unpriced model(s) {bad} in {oset.name}; available: {', '.join(priced)}")


def parse_budget(text: str) -> float:
    """``--max-cost``: USD per request, or ``X/1k`` for USD per 1,000 requests."""
    t = text.strip().lower()
    try:
        return float(t[:-3]) / 1000.0 if t.endswith("/1k") else float(t)
    except ValueError:
        raise UsageError(f"--max-cost {text!r}: give USD per request (0.0004) or per 1k requests (0.4/1k)") from None


def _calibrator(oset: OutcomeSet, args: argparse.Namespace) -> CascadeCalibrator:
    train = oset.split("train")
    if not train.prompts or not oset.count("test"):
        raise UsageError(f"{oset.name}: calibration needs prompts in both splits (train {len(train)}, "
                         f"test {oset.count('test')})")
    chain = None if args.chain in (None, "auto") else [m.strip() for m in args.chain.split(",") if m.strip()]
    if chain:
        check_models(oset, chain, "--chain")
    ref = None if args.relative_to == "best" else args.relative_to
    if ref:
        check_models(oset, [ref], "--relative-to")
    try:
        return CascadeCalibrator(train, gate=args.gate, chain=chain, ref_model=ref, cv_folds=args.cv_folds,
                                 max_p95_ms=_latency_cap(args))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _latency_cap(args: argparse.Namespace) -> float | None:
    cap = getattr(args, "max_p95_latency_ms", None)
    if cap is not None and not cap > 0:
        raise UsageError(f"--max-p95-latency-ms {cap:g}: give a positive number of milliseconds")
    return cap


# ------------------------------------------------------------------------------------------------- calibrate


def labelled(oset: OutcomeSet, args: argparse.Namespace) -> OutcomeSet:
    """Partially labelled data (ledger traffic): the prompts labelled for every model the command uses, with a note
    on stderr; a precise refusal when too few are (:mod:`tierwise.lab.datasets.coverage`)."""
    from tierwise.lab.datasets.coverage import complete_cases, missing_models

    if not missing_models(oset):
        return oset
    pool: list[str] | None = None
    chain = getattr(args, "chain", None)
    if chain not in (None, "auto"):
        pool = [m.strip() for m in chain.split(",") if m.strip()]
        ref = getattr(args, "relative_to", "best")
        if ref != "best" and ref not in pool:
            pool.append(ref)
    out, note = complete_cases(oset, pool, min_train=2, min_test=1)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return out


def _given_z(args: argparse.Namespace, kind: str = "contextual") -> None:
    """``--z`` left out: 1, but a calibrated point's procedure has its own (:func:`tierwise.lab.crossfit.point_z`);
    ``--procedure`` left out: the default of ``kind`` (families for contextual, guard for cascade)."""
    from tierwise.lab.crossfit import CASCADE_DEFAULT_PROCEDURE, DEFAULT_PROCEDURE

    args.z_given = args.z
    if args.z is None:
        args.z = 1.0
    if getattr(args, "procedure", None) is None:
        args.procedure = CASCADE_DEFAULT_PROCEDURE if kind == "cascade" else DEFAULT_PROCEDURE


def cmd_calibrate(args: argparse.Namespace) -> int:
    _given_z(args, "contextual" if args.kind == "contextual" else "cascade")
    if args.from_ledger:  # re-fit on live traffic, proposed as a canary (tierwise.rollout.recalibrate)
        from tierwise.rollout.recalibrate import calibrate_from_ledger

        return calibrate_from_ledger(args)
    if not args.data:
        raise UsageError("calibrate needs --data (an outcome set) or --from-ledger")
    oset = labelled(load_data(args.data), args)
    if args.kind == "contextual":
        return _calibrate_contextual(args, oset)
    calib = _calibrator(oset, args)
    test = oset.split("test")
    if args.max_cost is not None:
        res = calibrate_point(calib, test, "cost", parse_budget(args.max_cost), args.z)
        print(describe(res, oset, args.z))
    else:
        from tierwise.lab.crossfit import calibrate_cascade

        res, z, detail = calibrate_cascade(calib, test, args.target_quality, args.procedure, args.z_given,
                                           one_chain=args.chain not in (None, "auto"))
        print(describe(res, oset, z) + (f"\n  procedure {args.procedure}: {detail}" if detail else ""))
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


def _calibrate_contextual(args: argparse.Namespace, oset: OutcomeSet) -> int:
    """``calibrate --kind contextual``: see :mod:`tierwise.lab.contextual_cli`."""
    from tierwise.lab.contextual_cli import calibrate_contextual, describe_extra, write_report
    from tierwise.lab.crossfit import point_z

    if args.chain not in (None, "auto") or args.gate:
        raise UsageError("--kind contextual searches every sub-chain and gates on what each rung recorded: "
                         "--chain and --gate are for --kind cascade")
    if _latency_cap(args) is not None:
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
    res, fitted, tier, fit, pool = calibrate_contextual(args, oset, budget)
    z = args.z if budget is not None else point_z(args.procedure, args.z_given)
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


# ------------------------------------------------------------------------------------------------------ eval


def knn_choices(train: OutcomeSet, test: OutcomeSet, models: list[str], embedder: str) -> tuple[list[float], np.ndarray]:
    """The kNN baseline over a λ sweep, through the engine: (knobs, served model index per knob and test prompt)."""
    from tierwise.lab.datasets.format import OutcomeSet as _Set
    from tierwise.lab.learned_eval import train_and_sweep

    both = _Set(test.name, test.models, [*train.prompts, *test.prompts], test.meta)
    runs = train_and_sweep(both, models, "knn", embedder)
    chosen = np.array([[models.index(r.served or "") for r in res] for _, res in runs])
    return [k for k, _ in runs], chosen


def evaluate(oset: OutcomeSet, spec: str, args: argparse.Namespace, dump: list[dict[str, Any]] | None) -> tuple[
        list[Row], Baselines, bool]:
    """Router ``spec`` and the baselines on the test split: table rows, baselines, two-model flag."""
    test = oset.split("test")
    models = test.priced_models()
    base = compute_baselines(test.quality_matrix(models), test.cost_matrix(models), models)
    two = len(models) == 2
    rows: list[Row] = []
    kind, _, arg = spec.partition(":")
    if kind == "cascade":
        args.gate = arg or None
        calib = _calibrator(oset, args)
        taus = knob_taus(calib, args.target_quality)
        curve = calibrated_curve(calib, test, taus, args.z, progress=progress_bar(f"{oset.name} cascade"))
        pts = [Point(r.held.cost, r.held.quality) for r in curve]
        honest = next(r for r in curve if r.knob == args.target_quality)
        row = Row(f"cascade:{calib.gate} (τ family)", evaluate_curve(pts, base), pts,
                  calibrated=Point(honest.held.cost, honest.held.quality),
                  per_prompt=PerPrompt.from_runs([r.held.results for r in curve]),
                  calibrated_runs=honest.held.results, ungated=(honest.cal.chain[-1],),
                  runs=[r.held.results for r in curve], apgr_ends=True)
        if two:
            row.apgr, row.cpt50 = apgr_of(row, base)
        rows.append(row)
        if dump is not None:
            for r in curve:
                dump.extend(_dump_rows(oset.name, r.knob, r.held.results))
    elif kind == "single":
        check_models(oset, [arg], "--router single:")
        res = run_tier(test, single_tier(arg))
        p = Point(float(np.mean([r.cost for r in res])), float(np.mean([r.quality for r in res])))
        rows.append(Row(f"single:{arg}", evaluate_curve([p], base), [p], per_prompt=PerPrompt.from_runs([res]),
                        runs=[res]))
        if dump is not None:
            dump.extend(_dump_rows(oset.name, None, res))
    elif kind == "learned":
        from tierwise.lab.evaluate import means
        from tierwise.lab.learned_eval import calibrated_knob, sweep_with

        check_artifact(arg, test)
        knob = calibrated_knob(arg)
        runs, cal = sweep_with(test, arg, "lambda", [] if knob is None else [knob],
                               progress=progress_bar(f"{oset.name} learned:{Path(arg).name} λ sweep"))
        row = _learned_row(f"learned:{Path(arg).name} (λ sweep)", runs, models, base, two, dump, oset.name)
        if cal:
            row.calibrated = Point(*means(cal[0]))
            row.calibrated_runs = list(cal[0])
        rows.append(row)
    elif kind == "contextual":
        from tierwise.lab.contextual_cli import ROUTER_KINDS, contextual_rows

        rk = arg or args.router_kind
        if rk not in ROUTER_KINDS:
            raise UsageError(f"--router contextual:{rk}: the router kind is one of {', '.join(ROUTER_KINDS)}")
        rows.extend(contextual_rows(oset, rk, args.router_embedder, args.target_quality, args.z, args.cv_folds,
                                    base, two, dump, progress_bar, args.procedure, args.z_given))
    elif kind != "knn":
        raise UsageError(f"unknown router {spec!r}; use {ROUTERS}")
    rows.append(_knn_row(oset, models, base, two, args.embedder, dump if kind == "knn" else None))
    return rows + baseline_rows(base, two), base, two


def check_artifact(arg: str, test: OutcomeSet) -> None:
    """``--router learned:PATH``: the file exists, is a router artifact, and its models are priced in this set."""
    from tierwise.routing.learned.artifact import RouterArtifactError, load_router

    if not arg:
        raise UsageError("--router learned:PATH needs the router artifact (.npz) that tierwise train-router wrote")
    if not Path(arg).is_file():
        raise UsageError(f"--router learned:{arg}: no such file (train one with tierwise train-router --out {arg})")
    try:
        router = load_router(arg, check_embedder=False)
    except RouterArtifactError as exc:
        raise UsageError(f"--router learned:{arg}: {exc}") from None
    priced = test.priced_models()
    missing = [m for m in router.models if m not in priced]
    if missing:
        raise UsageError(f"--router learned:{arg}: the router was trained for models {router.models}, and "
                         f"{test.name} has no priced outcomes for {missing} (its priced models: {', '.join(priced)}); "
                         "train a router on this set's models (train-router --models)")


def _knn_row(oset: OutcomeSet, models: list[str], base: Baselines, two: bool, embedder: str,
             dump: list[dict[str, Any]] | None) -> Row:
    """The kNN baseline, trained on the train split and swept on test through the engine's learned policy."""
    from tierwise.lab.evaluate import means
    from tierwise.lab.learned_eval import train_sweep_calibrated

    try:
        runs, cal = train_sweep_calibrated(oset, models, "knn", embedder,
                                           progress=progress_bar(f"{oset.name} knn ({embedder}) λ sweep"))
    except Exception as exc:  # noqa: BLE001 — e.g. the embedder's optional dependencies are missing
        return Row("knn", None, note=f"unavailable: {type(exc).__name__}: {str(exc)[:80]}")
    row = _learned_row(f"knn ({embedder}, λ sweep)", runs, models, base, two, dump, oset.name)
    row.calibrated = Point(*means(cal))
    row.calibrated_runs = list(cal)
    return row


def _learned_row(label: str, runs: list[tuple[float, list[Any]]], models: list[str], base: Baselines, two: bool,
                 dump: list[dict[str, Any]] | None, name: str) -> Row:
    from tierwise.lab.evaluate import means

    pts = [Point(*means(res)) for _, res in runs]
    row = Row(label, evaluate_curve(pts, base), pts, per_prompt=PerPrompt.from_runs([res for _, res in runs]),
              runs=[res for _, res in runs], apgr_ends=False)
    if two:
        row.apgr, row.cpt50 = apgr_of(row, base)
    if dump is not None:
        for knob, res in runs:
            dump.extend(_dump_rows(name, knob, res))
    return row


def bootstrap_lines(rows: list[Row], quality: np.ndarray, cost: np.ndarray, models: list[str], draws: int) -> str:
    """The paired-bootstrap section of the eval table: per router row, 95 % intervals of AUC and cost to 0.99·qB,
    and for every router row but kNN its AUC difference against the kNN baseline — is a gain real or noise of this
    test split?"""
    methods = {r.name: r.per_prompt for r in rows if r.per_prompt is not None}
    if not methods:
        return ""
    d = curve_draws(quality, cost, models, methods, draws, progress=progress_bar("paired bootstrap"))
    lines = [f"Paired bootstrap of the test split ({draws} draws; each router keeps its points, the best model and",
             "the oracle are recomputed on every draw): 95% intervals"]
    w = max(len(n) for n in methods)
    for name in methods:
        a, c = interval(d[name]["auc"]), interval(d[name]["ctp99"])
        lines.append(f"  {name:<{w}} AUC [{a[0]:.3f}, {a[1]:.3f}]  c@.99qB% [{c[0]:.1f}, {c[1]:.1f}]")
    knn = next((n for n in methods if n.startswith("knn")), "")
    for first in [n for n in methods if n != knn] if knn else []:
        delta = d[first]["auc"] - d[knn]["auc"]
        lo, hi = interval(delta)
        lines.append(f"  ΔAUC {first} − {knn}: [{lo:+.3f}, {hi:+.3f}], above in "
                     f"{100 * float(np.nanmean(delta > 0)):.0f}% of draws")
    return "\n".join(lines)


def _dump_rows(name: str, knob: float | None, results: list[Any]) -> list[dict[str, Any]]:
    return [{"dataset": name, "prompt_id": r.prompt_id, "knob": knob, "models_called": r.models_called,
             "served": r.served, "cost": r.cost, "quality": r.quality} for r in results]


def _table(oset: OutcomeSet, args: argparse.Namespace, dump: list[dict[str, Any]] | None
           ) -> tuple[str, list[Row], Baselines, bool]:
    rows, base, two = evaluate(oset, args.router, args, dump)
    return render(oset.split("test"), rows, base, two, args), rows, base, two


def render(test: OutcomeSet, rows: list[Row], base: Baselines, two: bool, args: argparse.Namespace) -> str:
    """The metrics table, the calibrated points' latency and (``--bootstrap``) the paired-bootstrap section."""
    from tierwise.lab.latency import section

    table = metrics_table(rows, base, two)
    table += "\n\n" + section(test, [(f"{r.name}: calibrated", r.calibrated_runs, r.ungated) for r in rows
                                      if r.calibrated_runs], test.priced_models())
    if args.bootstrap > 0:
        models = test.priced_models()
        table += "\n\n" + bootstrap_lines(rows, test.quality_matrix(models), test.cost_matrix(models), models,
                                           args.bootstrap)
    return table


def leakage_section(oset: OutcomeSet, args: argparse.Namespace, rows: list[Row], two: bool) -> str:
    """Test prompts also in train (:mod:`tierwise.lab.leakage`): a warning, and the whole table again without them
    (printed, and returned for table.txt), re-read from the runs already made (:mod:`tierwise.lab.eval_subset`:
    train is untouched, so every router and operating point is the same). Empty when there are none or
    ``--leakage ignore``."""
    from tierwise.lab.leakage import find_leakage, without

    leak = find_leakage(oset)
    if not leak.ids or args.leakage == "ignore":
        return ""
    print(f"warning: {oset.name}: {leak.summary()}; the table above includes them", file=sys.stderr)
    clean = without(oset, leak.ids).split("test")
    head = (f"\n\nLeakage: {leak.summary()}. A router that saw them in train has memorised their answers. The same "
            "routers at the same operating points, on the other test prompts.\n"
            f"Without them (n={len(clean)}):")
    if not clean.prompts:
        text = head + " no test prompt is left."
    else:
        keep = [i for i, p in enumerate(oset.split("test").prompts) if p.id not in leak.ids]
        models = clean.priced_models()
        base = compute_baselines(clean.quality_matrix(models), clean.cost_matrix(models), models)
        text = head + "\n" + render(clean, restrict_rows(rows, keep, base, two), base, two, args)
    print(text.lstrip("\n"))
    return text


def cmd_eval(args: argparse.Namespace) -> int:
    _given_z(args)
    oset = labelled(load_data(args.data), args)
    dump: list[dict[str, Any]] | None = [] if args.dump else None
    table, rows, base, two = _table(oset, args, dump)
    print(f"{oset.name}: router {args.router} on the test split (n={oset.count('test')})\n{table}")
    table += leakage_section(oset, args, rows, two)
    if dump is not None:
        Path(args.dump).parent.mkdir(parents=True, exist_ok=True)
        with open(args.dump, "w", encoding="utf-8") as fh:
            for d in dump:
                fh.write(json.dumps(d) + "\n")
        print(f"dump: {len(dump)} lines in {args.dump}")
    if args.out or args.plot:
        out = Path(args.out or "tierwise-eval")
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.txt").write_text(table + "\n", encoding="utf-8")
        title = f"{oset.name} — {args.router} (test split)"
        if args.plot:
            why = plot_png(out / "plot.png", rows, base, title)
            if why:
                print(why, file=sys.stderr)
            write_html(out / "plot.html", rows, base, title, table)
        print(f"wrote {out}/")
    return 0


# ---------------------------------------------------------------------------------------------------- wiring


def _guard(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args) or 0)
        except (UsageError, OutcomeFormatError, SharedDataMissing, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyError as exc:  # unknown set name (registry) or model
            print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
            return 2

    return run


def add_parsers(sub: Any) -> None:
    """Register ``calibrate`` and ``eval`` (the parsers live in :mod:`tierwise.cli_lab`, free of the lab)."""
    from tierwise.cli_lab import add_eval_parsers

    add_eval_parsers(sub)
