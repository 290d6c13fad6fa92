"""The learned router's calibrated-knob margin z, decided on the train splits only (nested cross-validation).

Run: ``.venv/bin/python bench/cv_learned_knob.py [--sets a,b]`` → ``bench/results/cv_learned_knob.{md,json}``.
No test outcome is read (only train prompts are embedded and scored).

``train-router`` calibrates its knob on the router's out-of-fold predictions of the train prompts: the cheapest
knob whose routed quality reaches 0.99 × the best train model's (:func:`tierwise.routing.learned.train.calibrate_knob`).
With ``--z`` > 0 the target must hold on the paired one-sided bound ``mean(d) − z·sd(d)/√n`` (``d_i = q_i −
0.99·ref_i``), the cascade calibrator's margin. Which z the product uses is decided here.

Per set, the router is fitted on train as ``bench/routing_brain.py`` fits it (minilm-onnx embeddings; on the
learned-router sets — no confidence signal — the kind and choice rule with the best train-CV AUC among knn / logreg /
ensemble × threshold / lambda; on the cascade sets, where the contextual cascade uses the ``ensemble`` router, the
ensemble with the rule of the better train-CV AUC). The train prompts are split into 5 **outer** folds (seed 1). For
each outer fold the router of that kind is re-fitted on the other four folds' prompts exactly as ``train-router``
would be run on them (its own 5 inner folds, seed 0), and for each z the knob is calibrated on that fit's out-of-fold
predictions (reference = the best model on those prompts, target 0.99 × its quality there); the outer fold is then
routed by the re-fitted router at that knob, or by the reference alone when ``calibrate_knob`` returns None. The
knob and the deployed router both come from the fit rows only, as in the product, so the shift between the
out-of-fold predictions a knob is read from and the full-fit router that serves is part of what is measured (an
earlier version played the knob on the full-train fit's out-of-fold predictions: optimistic, and blind to that
shift). Concatenated: every z's out-of-fold cost and quality on every train prompt.

Met = out-of-fold mean quality ≥ 0.99 × the per-fold reference models' mean quality on the same prompts; cheap =
met at ≤ 90 % of their mean cost.

**Decision rule, fixed before the run**: z from the a-priori grid {0, 0.5, 1, 1.645}; a z is eligible when it meets
the target out of fold on ≥ 90 % of the sets (all 20: the knob is a generic ``train-router`` step); among the
eligible, the one meeting it at ≤ 90 % cost on the most sets (ties: lower mean cost, then smaller z); if none is
eligible, the one meeting it on the most sets (ties: more cheap, lower mean cost, smaller z).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from cv_common import TAU, brief, cell, header, oof_point, run_sets, tally  # noqa: E402
from routing_quality import SETS  # noqa: E402

from tierwise.lab.calibrate import CascadeCalibrator  # noqa: E402
from tierwise.lab.datasets import load_set  # noqa: E402
from tierwise.outcomes import OutcomeSet  # noqa: E402
from tierwise.routing.learned.choose import RULES  # noqa: E402
from tierwise.routing.learned.embed_cache import embed_prompts  # noqa: E402
from tierwise.routing.learned.numerics import kfold_indices  # noqa: E402
from tierwise.routing.learned.train import calibrate_knob, choose_calibrated, train_router  # noqa: E402

EMBEDDER, KINDS = "minilm-onnx", ("knn", "logreg", "ensemble")
ZS, OUTER_FOLDS, OUTER_SEED = (0.0, 0.5, 1.0, 1.645), 5, 1


def _has_gate(train) -> bool:  # noqa: ANN001
    try:
        CascadeCalibrator(train, cv_folds=0)
    except ValueError:
        return False
    return True


def one_set(name: str) -> dict:
    s = load_set(name)
    train = s.split("train")
    models = s.priced_models()
    E = embed_prompts(EMBEDDER, [p.prompt for p in train.prompts])
    kinds = ("ensemble",) if _has_gate(train) else KINDS
    fits = {k: train_router(s, k, EMBEDDER, models, embeddings=E) for k in kinds}
    kind, rule = max(((k, r) for k in kinds for r in RULES),
                     key=lambda kr: fits[kr[0]].report["cv_auc"][kr[1]] or -1.0)
    Q, C = train.quality_matrix(models), train.cost_matrix(models)
    n = len(Q)
    q_oof = {z: np.empty(n) for z in ZS}
    c_oof = {z: np.empty(n) for z in ZS}
    ref_q, ref_c = np.empty(n), np.empty(n)
    for tr, ho in kfold_indices(n, OUTER_FOLDS, OUTER_SEED):
        fit_rows = OutcomeSet(s.name, s.models, [train.prompts[i] for i in tr], s.meta)
        inner = train_router(fit_rows, kind, EMBEDDER, models, embeddings=E[tr])  # train-router on the fit rows
        pred_ho, costs = inner.router.predict_embeddings(E[ho]), inner.router.mean_cost
        b = int(np.argmax(Q[tr].mean(axis=0)))  # the reference: the best model on the fit rows
        ref_q[ho], ref_c[ho] = Q[ho, b], C[ho, b]
        for z in ZS:
            k = calibrate_knob(inner.oof, Q[tr], C[tr], costs, rule, TAU * float(Q[tr, b].mean()), z, b)
            idx = choose_calibrated(pred_ho, costs, rule, k, b)
            q_oof[z][ho], c_oof[z][ho] = Q[ho, idx], C[ho, idx]
    out: dict = {"set": name, "n_train": n, "router": f"{kind}, {rule}", "z": {}}
    for z in ZS:
        out["z"][str(z)] = oof_point(q_oof[z], c_oof[z], ref_q, ref_c)
    return out


def decide(rows: list[dict]) -> tuple[str, dict[str, tuple[int, int, float]]]:
    """The z the rule in the module docstring picks, and (met, cheap, mean cost %) per z."""
    summary = {}
    for z in map(str, ZS):
        summary[z] = tally([r["z"][z] for r in rows])
    eligible = [z for z in summary if summary[z][0] >= 0.9 * len(rows)]
    if eligible:
        return min(eligible, key=lambda z: (-summary[z][1], summary[z][2], float(z))), summary
    return min(summary, key=lambda z: (-summary[z][0], -summary[z][1], summary[z][2], float(z))), summary


def render(rows: list[dict], secs: float, load: str) -> str:
    zs = list(map(str, ZS))
    L = [*header("cv_learned_knob.py", "The learned router's calibrated-knob margin z, by nested cross-validation on "
                "the train splits", secs, load),
         "| set | n train | router | " + " | ".join(f"z={z}: OOF q / target, cost %" for z in zs) + " |",
         "|---|---|---|" + "---|" * len(zs)]
    for r in rows:
        cells = [cell(r["z"][z]) for z in zs]
        L.append(f"| {r['set']} | {r['n_train']} | {r['router']} | " + " | ".join(cells) + " |")
    pick, summary = decide(rows)
    L += ["", "| z | met out of fold | met at ≤ 90 % cost | mean cost % |", "|---|---|---|---|"]
    L += [f"| {z} | {m}/{len(rows)} | {c}/{len(rows)} | {cost:.0f} |" for z, (m, c, cost) in summary.items()]
    L += ["", f"**Decision (rule in the docstring): train-router --z {pick}.**"]
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", help="comma-separated subset of bench/routing_quality.py's sets")
    args = ap.parse_args(argv)
    sets = args.sets.split(",") if args.sets else SETS
    return run_sets(sets, one_set,
                    lambda row: f"{row['set']} ({row['router']}): "
                                + brief((f"z={z}", x) for z, x in row["z"].items()),
                    "cv_learned_knob", render)


if __name__ == "__main__":
    raise SystemExit(main())
