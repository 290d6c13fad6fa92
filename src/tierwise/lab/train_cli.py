"""``tierwise train-router`` and ``tierwise train-gate``: fit learned routing parts from an outcome set.

Wire into the main parser with ``add_parsers(sub)`` (``sub`` = the ``add_subparsers`` object); each command sets
``fn`` to a function taking the parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Newton/IRLS and kNN are small dense algebra: a multi-threaded BLAS on a shared 2-core box is 10-100x slower.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


def load_data(spec: str):  # noqa: ANN201 - OutcomeSet (imported lazily to keep CLI start fast)
    from tierwise.lab.datasets.ledger import load_data as resolve

    try:
        return resolve(spec)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def labelled(oset, models: list[str] | None, min_train: int):  # noqa: ANN001, ANN201 - OutcomeSet (lazy import)
    """The prompts labelled for every model used (a note on stderr), or exit 2 saying which labels are missing."""
    from tierwise.lab.datasets.coverage import MissingLabels, complete_cases, missing_models

    if not missing_models(oset):
        return oset
    try:
        out, note = complete_cases(oset, models, min_train=min_train)
    except MissingLabels as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if note:
        print(f"note: {note}", file=sys.stderr)
    return out


def cmd_train_router(args: argparse.Namespace) -> int:
    from tierwise.routing.learned.artifact import save_router
    from tierwise.routing.learned.train import train_router

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    oset = labelled(load_data(args.data), models, 2 * args.folds)
    start = time.perf_counter()
    try:
        res = train_router(oset, args.kind, args.embedder, models, folds=args.folds, seed=args.seed,
                           target=args.target, z=args.z, progress=True)
    except ValueError as exc:
        print(f"train-router: {exc}", file=sys.stderr)
        return 2
    out = save_router(res.router, args.out)
    r = res.report
    cal = r["calibration"]
    print(f"trained {args.kind} router on {oset.name} (train split, {len(res.oof)} prompts, "
          f"{len(res.router.models)} models) with {args.embedder}")
    print(f"  fit {res.seconds:.1f}s, total {time.perf_counter() - start:.1f}s (embedding included)")
    print(f"  hyper-parameters (chosen by {args.folds}-fold CV on train): {r['params']}")
    print(f"  CV Brier {r['cv_brier']:.4f} (constant per-model rate: {r['cv_brier_constant']:.4f})")
    for rule, auc in r["cv_auc"].items():
        point = (f"knob {cal[rule]:.6g}" if cal[rule] is not None else
                 f"no knob is certified cheaper than {cal['reference']} alone: serve it (policy priority, models "
                 f"[{cal['reference']}])")
        print(f"  CV oracle-normalised AUC, rule {rule}: {'undefined' if auc is None else f'{auc:.3f}'}; "
              f"calibrated point for {cal['target']} (z = {cal['z']:g}): {point}")
    print(f"wrote {out}")
    return 0


def cmd_train_gate(args: argparse.Namespace) -> int:
    from tierwise.routing.learned.gate_train import save_gate, train_gate

    oset = labelled(load_data(args.data), [args.model], 2 * args.folds)
    start = time.perf_counter()
    try:
        res = train_gate(oset, args.model, folds=args.folds, seed=args.seed)
    except ValueError as exc:
        print(f"train-gate: {exc}", file=sys.stderr)
        return 2
    out = save_gate(res, args.out, set_name=oset.name, model=args.model)
    print(f"trained learned gate for {args.model} on {oset.name} (train split): {res.n_rows} rows "
          f"({res.n_skipped} without confidence skipped), {res.positive_rate:.1%} right, "
          f"{time.perf_counter() - start:.2f}s")
    print(f"  l2 {res.l2:g} (by {args.folds}-fold CV); CV log-loss {res.cv_log_loss:.4f} "
          f"(base rate: {res.cv_log_loss_constant:.4f})")
    print(f"wrote {out}")
    return 0


def add_parsers(sub) -> None:  # noqa: ANN001 - argparse's private _SubParsersAction
    """Register ``train-router`` and ``train-gate`` (the parsers live in :mod:`tierwise.cli_lab`)."""
    from tierwise.cli_lab import add_train_parsers

    add_train_parsers(sub)
