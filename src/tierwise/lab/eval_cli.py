"""``tierwise eval``: a router and the baselines on a set's held-out split, as a metrics table (and plots).

Why a module of its own: measuring routers is one job, apart from fitting one (``tierwise calibrate``,
:mod:`tierwise.lab.calibrate_cli`); what the two share is in :mod:`tierwise.lab.cli_common`. Wire both commands into
the main CLI with ``add_parsers(subparsers)``. ``--data`` is a registry name (``zellinger/mmlu/llama``, see
``tierwise.lab.datasets.list_sets``) or a path to an outcome file (``<stem>.jsonl.gz`` with its ``.meta.json``). Bad
input (a malformed dataset, unknown model or set) prints one clear message and exits 2, never a traceback.

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

from tierwise.cli_lab import ROUTERS
from tierwise.lab.calibrate import calibrated_curve
from tierwise.lab.cli_common import (
    Margins,
    UsageError,
    cascade_calibrator,
    check_models,
    labelled,
    margins,
    with_flags,
)
from tierwise.lab.contextual_eval import knob_taus
from tierwise.lab.curve_bootstrap import PerPrompt, curve_draws, interval
from tierwise.lab.datasets import OutcomeSet
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
from tierwise.progress import progress_bar


def knn_choices(train: OutcomeSet, test: OutcomeSet, models: list[str], embedder: str) -> tuple[list[float], np.ndarray]:
    """The kNN baseline over a λ sweep, through the engine: (knobs, served model index per knob and test prompt)."""
    from tierwise.lab.datasets.format import OutcomeSet as _Set
    from tierwise.lab.learned_eval import train_and_sweep

    both = _Set(test.name, test.models, [*train.prompts, *test.prompts], test.meta)
    runs = train_and_sweep(both, models, "knn", embedder)
    chosen = np.array([[models.index(r.served or "") for r in res] for _, res in runs])
    return [k for k, _ in runs], chosen


def evaluate(oset: OutcomeSet, spec: str, args: argparse.Namespace, m: Margins, dump: list[dict[str, Any]] | None
             ) -> tuple[list[Row], Baselines, bool]:
    """Router ``spec`` and the baselines on the test split: table rows, baselines, two-model flag."""
    test = oset.split("test")
    models = test.priced_models()
    base = compute_baselines(test.quality_matrix(models), test.cost_matrix(models), models)
    two = len(models) == 2
    rows: list[Row] = []
    kind, _, arg = spec.partition(":")
    if kind == "cascade":
        calib = cascade_calibrator(oset, with_flags(args, gate=arg or None))
        taus = knob_taus(calib, args.target_quality)
        curve = calibrated_curve(calib, test, taus, m.family_z, progress=progress_bar(f"{oset.name} cascade"))
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
        from tierwise.lab.learned_eval import sweep_calibrated

        check_artifact(arg, test)
        runs, cal = sweep_calibrated(test, arg, "lambda",
                                     progress=progress_bar(f"{oset.name} learned:{Path(arg).name} λ sweep"))
        row = _learned_row(f"learned:{Path(arg).name} (λ sweep)", runs, models, base, two, dump, oset.name)
        if cal:
            row.calibrated = Point(*means(cal))
            row.calibrated_runs = list(cal)
        rows.append(row)
    elif kind == "contextual":
        from tierwise.lab.contextual_cli import ROUTER_KINDS, contextual_rows

        rk = arg or args.router_kind
        if rk not in ROUTER_KINDS:
            raise UsageError(f"--router contextual:{rk}: the router kind is one of {', '.join(ROUTER_KINDS)}")
        rows.extend(contextual_rows(oset, rk, args.router_embedder, args.target_quality, m, args.cv_folds,
                                    base, two, dump, progress_bar))
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


def _table(oset: OutcomeSet, args: argparse.Namespace, m: Margins, dump: list[dict[str, Any]] | None
           ) -> tuple[str, list[Row], Baselines, bool]:
    rows, base, two = evaluate(oset, args.router, args, m, dump)
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
    m = margins(args)
    oset = labelled(load_data(args.data), args)
    dump: list[dict[str, Any]] | None = [] if args.dump else None
    table, rows, base, two = _table(oset, args, m, dump)
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


def add_parsers(sub: Any) -> None:
    """Register ``calibrate`` and ``eval`` (the parsers live in :mod:`tierwise.cli_lab`, free of the lab)."""
    from tierwise.cli_lab import add_eval_parsers

    add_eval_parsers(sub)
