"""The lab verbs' argument parsers (``calibrate``, ``eval``, ``train-router``, ``train-gate``), without the lab.

Why a module of its own: ``tierwise serve`` builds the same parser as every other verb, and registering these verbs
used to import the whole lab (calibration, datasets, 25 modules and numpy) into the gateway process. Here the
parsers need nothing but argparse; each verb's handler is imported when that verb runs. The defaults repeated below
(CV folds, router kinds, embedders) are checked against the modules that own them by
``tests/test_serve_imports.py``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any

CV_FOLDS = 5  # tierwise.lab.calibrate.CV_FOLDS
ROUTER_KINDS = ("ensemble", "knn", "logreg", "none")  # tierwise.lab.contextual_cli.ROUTER_KINDS
DEFAULT_ROUTER, DEFAULT_EMBEDDER = "ensemble", "minilm-onnx"  # tierwise.lab.contextual_cli
PROCEDURES, DEFAULT_PROCEDURE = ("guard", "families", "crossfit", "none"), "families"  # tierwise.lab.crossfit
FAMILIES_Z = 1.645  # tierwise.lab.crossfit.POINT_Z["families"]
CASCADE_FAMILIES_Z = 0.5  # tierwise.lab.crossfit.CASCADE_POINT_Z["families"]
FITTER_KINDS, DEFAULT_KIND = ("ensemble", "knn", "logreg"), "ensemble"  # tierwise.routing.learned.train
CALIB_Z = 1.645  # tierwise.routing.learned.train.CALIB_Z
EMBEDDERS = ("minilm-onnx", "minilm-static")  # tierwise.embed.EMBEDDERS
ROUTERS = ("cascade:logprob, cascade:vote, contextual[:ensemble|knn|logreg|none], learned:ARTIFACT.npz, knn, "
           "single:MODEL")


def lazy(module: str, name: str, guarded: bool = False) -> Callable[[argparse.Namespace], int]:
    """A handler that imports ``module`` only when its verb runs (``guarded``: wrapped in
    :func:`tierwise.lab.cli_common.guard`, which turns bad input into one ``error:`` line and exit 2)."""

    def run(args: argparse.Namespace) -> int:
        fn = getattr(importlib.import_module(module), name)
        if guarded:
            from tierwise.lab.cli_common import guard

            fn = guard(fn)
        return int(fn(args) or 0)

    return run


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="outcome set name (see list_sets) or path to <stem>.jsonl.gz "
                   "(format: docs/outcome-format.md) or ledger:<ledger.db>:<labels.jsonl>")
    p.add_argument("--target-quality", type=float, default=0.99, help="τ: quality target as a multiple of the "
                   "reference model's train quality (default 0.99)")
    p.add_argument("--relative-to", default="best", help="reference model, or 'best' (highest train quality)")
    p.add_argument("--gate", choices=["logprob", "vote"], help="cascade gate (default: vote if samples exist, "
                   "else logprob)")
    p.add_argument("--chain", default="auto", help="m1,m2,... cheap→dear, or 'auto' (best sub-chain on train)")
    p.add_argument("--z", type=float, default=None, help="overfitting guard: the constraint must hold on mean − "
                   "z·standard error (paired with the reference model); 0 = on the train mean (default 1; the "
                   f"calibrated point of --procedure families: {FAMILIES_Z} with --kind contextual, "
                   f"{CASCADE_FAMILIES_Z} with --kind cascade, chosen by nested CV on train, "
                   "bench/results/cv_calibration*.md)")
    p.add_argument("--cv-folds", type=int, default=CV_FOLDS, help="selection guard: the train slack must also "
                   f"exceed the search's optimism measured by this many-fold CV on train (default {CV_FOLDS}; 0 = off)")
    p.add_argument("--max-p95-latency-ms", type=float, help="cascade: remove candidate points whose p95 latency "
                   "on train (sum of the rungs called; recorded, or modelled from tokens where the set has none) "
                   "exceeds this many ms")


def _router_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--router-kind", choices=ROUTER_KINDS, default=DEFAULT_ROUTER,
                   help=f"contextual: the learned router whose priors the gates read (default {DEFAULT_ROUTER}; "
                        "none = gates without priors, no start router)")
    p.add_argument("--router-embedder", default=DEFAULT_EMBEDDER,
                   help=f"contextual: the router's embedder (default {DEFAULT_EMBEDDER}, as train-router)")
    p.add_argument("--procedure", choices=PROCEDURES, default=None,
                   help="how the point for a quality target is certified on train (calibrate --kind cascade with "
                        "--chain auto, and contextual; a --max-cost budget, a given --chain and --from-ledger use "
                        f"guard) (default {DEFAULT_PROCEDURE} with --kind contextual, guard with --kind cascade): "
                        "guard = every candidate with the cross-validated selection optimism "
                        "as a margin; families = that guard per family of candidates (one cheap rung before the "
                        "reference model, ..., everything), the cheapest guarded point; crossfit = the cheapest "
                        "(family, internal target) whose out-of-fold results on every train prompt clear the "
                        "target's paired bound; none = the train fit with the z margin only (eval's τ family)")


def add_eval_parsers(sub: Any) -> None:
    """Register ``calibrate`` and ``eval`` on the main CLI's subparsers."""
    p = sub.add_parser("calibrate", help="fit cascade thresholds on a dataset's train split, report held-out")
    _common(p)
    from tierwise.rollout.recalibrate import add_ledger_args

    add_ledger_args(p)  # --from-ledger --since ... (issue 11)
    p.add_argument("--max-cost", help="instead of a quality target: maximise quality with mean cost ≤ this "
                   "(USD per request, or 'X/1k' for USD per 1,000 requests)")
    p.add_argument("--config", help="write the fitted cascade into this tierwise.yaml (keeps a .bak)")
    p.add_argument("--tier", help="with --config: the tier to create or replace")
    p.add_argument("--json", help="write the result as JSON here")
    p.add_argument("--kind", choices=["cascade", "contextual"], default="cascade",
                   help="cascade: thresholds on the rungs' own log-prob/vote confidence; contextual: trained "
                        "contextual gates (confidence, agreement with earlier rungs, router priors) and a start "
                        "router, fitted on train (the README's 'ours')")
    p.add_argument("--pool", default="all",
                   help="--kind contextual: the models the search may chain: all (default), auto (the sub-pool "
                        "with the best cross-validated train AUC: eval's ours-CV reading) or m1,m2,...")
    p.add_argument("--out", default="tierwise-contextual",
                   help="--kind contextual: directory for the gate and router artifacts and calibration.json "
                        "(default: ./tierwise-contextual)")
    _router_args(p)
    p.set_defaults(fn=lazy("tierwise.lab.calibrate_cli", "cmd_calibrate", guarded=True))

    p = sub.add_parser("eval", help="evaluate a router and the baselines on a dataset's held-out split")
    _common(p)
    p.add_argument("--router", required=True, help=f"one of: {ROUTERS} (the baselines are always reported)")
    _router_args(p)
    p.add_argument("--out", help="directory for table.txt, plot.png, plot.html")
    p.add_argument("--dump", help="JSONL: one line per held-out prompt and knob setting")
    p.add_argument("--leakage", choices=["report", "ignore"], default="report",
                   help="test prompts that also appear in train (exact or near-exact): report = warn and print the "
                        "table again without them (default); ignore = do not check")
    p.add_argument("--plot", action="store_true", help="write plot.png (matplotlib) and plot.html")
    p.add_argument("--bootstrap", type=int, default=200, help="paired bootstrap draws of the test split for 95%% "
                   "intervals of AUC, cost to 0.99·qB and the router's AUC gain over kNN (default 200; 0 = off)")
    p.add_argument("--embedder", default="minilm-static",
                   help="the kNN baseline's embedder (minilm-static|minilm-onnx). Default minilm-static, the "
                        "baseline as bench/routing_quality.py measures it; train-router and the contextual "
                        "router default to minilm-onnx (--router-embedder). The kNN row names the one it used")
    p.set_defaults(fn=lazy("tierwise.lab.eval_cli", "cmd_eval", guarded=True))


def add_train_parsers(sub: Any) -> None:
    """Register ``train-router`` and ``train-gate`` on the main CLI's subparsers."""
    s = sub.add_parser("train-router", help="train a learned (pre-generation) router on an outcome set")
    s.add_argument("--data", required=True, help="registry set name or path to an outcome-format .jsonl.gz")
    s.add_argument("--out", required=True, help="artifact path (.npz)")
    s.add_argument("--kind", choices=sorted(FITTER_KINDS), default=DEFAULT_KIND)
    s.add_argument("--embedder", choices=list(EMBEDDERS), default=DEFAULT_EMBEDDER)
    s.add_argument("--models", help="comma-separated models, in the tier's order (default: every priced model)")
    s.add_argument("--folds", type=int, default=5, help="cross-validation folds for hyper-parameters")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--target", type=float, default=0.99,
                   help="calibrated knob: reach this fraction of the best model's train quality")
    s.add_argument("--z", type=float, default=CALIB_Z,
                   help="calibrated knob: the target must hold on the out-of-fold mean − z·standard error of the "
                        "per-prompt difference to the best model (paired); 0 = on the mean (default "
                        f"{CALIB_Z}, chosen by nested CV on train: bench/results/cv_learned_knob.md)")
    s.set_defaults(fn=lazy("tierwise.lab.train_cli", "cmd_train_router"))

    s = sub.add_parser("train-gate", help="train a learned confidence gate for one cascade rung")
    s.add_argument("--data", required=True, help="registry set name or path to an outcome-format .jsonl.gz")
    s.add_argument("--model", required=True, help="the rung's model")
    s.add_argument("--out", required=True, help="gate artifact path (.json)")
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=lazy("tierwise.lab.train_cli", "cmd_train_gate"))
