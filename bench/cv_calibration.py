"""Which calibration procedure the product uses, decided on the train splits only (nested cross-validation).

Run: ``.venv/bin/python bench/cv_calibration.py [--sets a,b]`` → ``bench/results/cv_calibration.{md,json}``.
No test outcome is read (test prompts are only embedded, as `calibrate` does, never scored).

Per cascade set of ``bench/routing_brain.py``: the contextual model is fitted on train as ``calibrate --kind
contextual`` fits it (ensemble router on minilm-onnx, out-of-fold priors, out-of-fold gate confidences). Train is then
split into 5 **outer** folds (seed 1; the calibrator's own folds use seed 0). For each outer fold, every procedure runs
on the other four folds *as if they were all of train* (:func:`tierwise.lab.crossfit.on_rows`: every search rebuilt
on them, its own inner cross-validation anew) and the point it picks is played on the outer fold. Concatenated, the
outer folds give each procedure an out-of-fold cost and quality for every train prompt: what it does on prompts it
never saw, with (4/5 of) the train data a user has.

Calibrated point, target 0.99 × the reference (best train) model, z = 1:

- ``guard`` — today's procedure: the whole search with the cross-validated selection-optimism offset.
- ``cv`` — :func:`tierwise.lab.crossfit.cv_point` over every family of :func:`tierwise.lab.crossfit.families`.
- ``cv-all`` — the same with the whole search as the only family (isolates the cross-fitted bound from the families).
- ``guard-fam`` — today's guard computed per family of :func:`~tierwise.lab.crossfit.families` (each family's own
  cross-validated optimism), the cheapest feasible guarded point across families
  (:func:`tierwise.lab.crossfit.guarded_families`).
- ``guard-fam z=0.5`` / ``guard-fam z=1.645`` — the same with the paired bound's z at 0.5 / 1.645 (~69 % / 95 %
  one-sided) instead of 1, in the family choice and the fit alike: how much margin the certification needs (the z
  grid {0.5, 1, 1.645} fixed a priori; ``calibrate --z``).

Met = out-of-fold mean quality ≥ 0.99 × the reference model's mean quality on the same prompts.

τ-family readings (AUC of the out-of-fold τ-family curve against the train split's own baselines): ``τ`` — every
sub-chain (ours-τ); ``cv-pool`` — the sub-pool chosen by :func:`tierwise.lab.crossfit.cv_pool` on the inner folds.

Names: ``guard-fam`` is ``tierwise calibrate --kind contextual --procedure families --z 1`` (``guard-fam z=1.645``
is the same at its default z since this bench chose it), ``cv`` is ``--procedure
crossfit``, ``guard`` is ``--procedure guard``; ``cv-pool`` is ``--pool auto`` (``eval``'s ours-CV).

``--kind cascade`` runs the same comparison for ``tierwise calibrate --kind cascade`` (the raw log-prob/vote gates:
:class:`tierwise.lab.calibrate.CascadeCalibrator` on train, every sub-chain, no start router) →
``bench/results/cv_calibration_cascade.{md,json}``; there the τ-family readings are not computed (ours-CV is the
contextual cascade's reading), and its rule is the same as below with ``guard`` (``calibrate --kind cascade`` today)
as the procedure that stays when no other is eligible or none meets the target cheaply on more sets.

**Decision rule, fixed before the run** (the z variants added to it, unchanged, before their run): a calibration
procedure is eligible when it meets the target out of fold on
≥ 90 % of the sets; among the eligible, the product uses the one meeting it at ≤ 90 % of the reference model's cost on
the most sets (ties: lower mean cost); ``guard`` stays if no other is eligible. ``eval``'s user-reachable reading is
``cv-pool`` if its mean out-of-fold AUC is at least ``τ``'s, else ``τ``.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from cv_common import TAU, brief, cell, header, oof_point, run_sets, tally  # noqa: E402
from routing_quality import SETS  # noqa: E402

from tierwise.lab.calibrate import CascadeCalibrator  # noqa: E402
from tierwise.lab.cascade_sim import simulate  # noqa: E402
from tierwise.lab.contextual_cli import fit_on_train  # noqa: E402
from tierwise.lab.contextual_eval import family_taus  # noqa: E402
from tierwise.lab.crossfit import (  # noqa: E402
    CrossFit,
    cv_point,
    cv_pool,
    guarded_families,
    members,
    on_rows,
    subset,
)
from tierwise.lab.datasets import load_set  # noqa: E402
from tierwise.lab.metrics import Point, compute_baselines, evaluate_curve  # noqa: E402
from tierwise.routing.learned.numerics import kfold_indices  # noqa: E402

OUTER_FOLDS, OUTER_SEED, Z = 5, 1, 1.0
POINTS = ("guard", "guard-fam", "guard-fam z=0.5", "guard-fam z=1.645", "cv", "cv-all")
READINGS = ("τ", "cv-pool")


def _pick(calib: CascadeCalibrator, idx: list[int], tau: float, guard: bool = False, z: float = Z
          ) -> tuple[int, np.ndarray]:
    """(index into calib.searches, thresholds) the search restricted to ``idx`` picks (with the guard if asked)."""
    sub = subset(calib, idx)
    con = sub.constraint_quality(tau, z)
    if guard:
        con = sub.guarded(con)
    i, thr, _, _ = sub.pick(con)
    return idx[i], thr


def point_of(proc: str, sub: CascadeCalibrator, xf: CrossFit) -> tuple[int, np.ndarray, str]:
    everything = list(range(len(sub.searches)))
    if proc == "guard":
        return (*_pick(sub, everything, TAU, guard=True), "all (guarded)")
    if proc.startswith("guard-fam"):
        z = float(proc.split("z=")[1]) if "z=" in proc else Z
        name, idx = guarded_families(sub, TAU, z)
        return (*_pick(sub, idx, TAU, guard=True, z=z), name)
    fams = None if proc == "cv" else {"all": everything}
    cp = cv_point(sub, TAU, Z, xf, fams)
    return (*_pick(sub, cp.idx, cp.tau_fit, z=cp.z_fit), f"{cp.family} τ'={cp.tau_fit:g}" if cp.passed else cp.family)


def one_set(name: str, kind: str = "contextual") -> dict:
    s = load_set(name)
    train = s.split("train")
    if kind == "cascade":
        calib = CascadeCalibrator(train)
    else:
        with tempfile.TemporaryDirectory(prefix="tierwise-cvcal-") as tmp:
            calib = fit_on_train(s, Path(tmp)).model.calibrator
    readings = READINGS if kind == "contextual" else ()
    n = len(train)
    Q, C = train.quality_matrix([calib.ref_model])[:, 0], train.cost_matrix([calib.ref_model])[:, 0]
    taus = family_taus(calib, train)
    oof = {p: (np.empty(n), np.empty(n)) for p in POINTS}
    curves = {r: [(np.empty(n), np.empty(n)) for _ in taus] for r in readings}
    chosen: dict[str, list[str]] = {p: [] for p in POINTS}
    pools = []
    for tr, ho in kfold_indices(n, OUTER_FOLDS, OUTER_SEED):
        sub = on_rows(calib, tr)
        xf = CrossFit(sub)

        def play(i: int, thr: np.ndarray, into: tuple[np.ndarray, np.ndarray], ho: np.ndarray = ho) -> None:
            sim = simulate(calib.searches[i].data.rows(ho), thr)
            into[0][ho], into[1][ho] = sim.cost, sim.quality

        for p in POINTS:
            i, thr, what = point_of(p, sub, xf)
            chosen[p].append(what)
            play(i, thr, oof[p])
        if not readings:
            continue
        pool = cv_pool(sub, taus, Z, xf).pool
        pools.append(" > ".join(pool))
        for r, idx in (("τ", list(range(len(sub.searches)))), ("cv-pool", members(sub, pool))):
            for k, tau in enumerate(taus):
                i, thr = _pick(sub, idx, float(tau))
                play(i, thr, curves[r][k])
    models = train.priced_models()
    base = compute_baselines(train.quality_matrix(models), train.cost_matrix(models), models)
    row: dict = {"set": name, "n_train": n, "ref": calib.ref_model, "searches": len(calib.searches),
                 "pools": pools, "points": {}, "auc": {}}
    for p in POINTS:
        c, q = oof[p]
        row["points"][p] = oof_point(q, c, Q, C, chosen=chosen[p])
    for r in READINGS:
        pts = [Point(float(c.mean()), float(q.mean())) for c, q in curves[r]] if r in curves else []
        row["auc"][r] = evaluate_curve(pts, base).auc if pts else None
    return row


def render(rows: list[dict], secs: float, load: str) -> str:
    L = [*header("cv_calibration.py", "Calibration procedures compared by nested cross-validation on the train splits",
                secs, load),
         "| set | n train | " + " | ".join(f"{p}: OOF q / target, cost %" for p in POINTS)
         + " | AUC τ | AUC cv-pool |", "|---|---|" + "---|" * (len(POINTS) + 2)]
    for r in rows:
        cells = []
        for p in POINTS:
            cells.append(cell(r["points"][p]))
        a = r["auc"]
        L.append(f"| {r['set']} | {r['n_train']} | " + " | ".join(cells)
                 + f" | {a['τ'] if a['τ'] is None else format(a['τ'], '.3f')} | "
                 f"{a['cv-pool'] if a['cv-pool'] is None else format(a['cv-pool'], '.3f')} |")
    n = len(rows)
    L += ["", "| procedure | met out of fold | met at ≤ 90 % cost | mean cost % |", "|---|---|---|---|"]
    summary = {}
    for p in POINTS:
        summary[p] = met, cheap, cost = tally([r["points"][p] for r in rows])
        L.append(f"| {p} | {met}/{n} | {cheap}/{n} | {cost:.0f} |")
    eligible = [p for p in POINTS if summary[p][0] >= 0.9 * n]
    pick = min(eligible, key=lambda p: (-summary[p][1], summary[p][2])) if eligible else "guard"
    aucs = {r: [x["auc"][r] for x in rows if x["auc"][r] is not None] for r in READINGS}
    means = {r: float(np.mean(v)) if v else float("nan") for r, v in aucs.items()}
    reading = "cv-pool" if means["cv-pool"] >= means["τ"] else "τ"
    if not aucs["τ"]:  # --kind cascade: no τ-family readings
        L += ["", f"**Decision (rule in the docstring): calibrated point of `calibrate --kind cascade` = `{pick}`.**",
              "", "Per outer fold, what each procedure chose:", ""]
    else:
        L += ["", f"Mean out-of-fold AUC: τ {means['τ']:.3f}, cv-pool {means['cv-pool']:.3f}.", ""]
        L += [f"**Decision (rule in the docstring): calibrated point = `{pick}`; user-reachable reading = "
              f"`{reading}`.**", "", "Per outer fold, what each procedure chose:", ""]
    for r in rows:
        L.append(f"- {r['set']}: " + "; ".join(f"{p}: {', '.join(r['points'][p]['chosen'])}" for p in POINTS)
                 + f"; cv pools: {' | '.join(r['pools'])}")
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", help="comma-separated subset of the cascade sets")
    ap.add_argument("--out", help="stem of the result files under bench/results/ (default cv_calibration, "
                    "cv_calibration_cascade with --kind cascade)")
    ap.add_argument("--kind", choices=("contextual", "cascade"), default="contextual")
    args = ap.parse_args(argv)
    args.out = args.out or ("cv_calibration" if args.kind == "contextual" else "cv_calibration_cascade")
    sets = args.sets.split(",") if args.sets else [x for x in SETS if not x.startswith(("routellm/", "routerbench/"))]
    return run_sets(sets, lambda name: one_set(name, args.kind),
                    lambda row: f"{row['set']}: {brief((p, row['points'][p]) for p in POINTS)}; AUC {row['auc']}",
                    args.out, render)


if __name__ == "__main__":
    raise SystemExit(main())
