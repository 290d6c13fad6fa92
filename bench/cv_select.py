"""Per set, the contextual cascade's calibrated point or the learned router's calibrated knob, chosen by
cross-validation on train — is that choice better than the cascade alone? Nested cross-validation on the train
splits (``bench/routing_brain.py``'s 16 cascade sets).

Run: ``.venv/bin/python bench/cv_select.py [--sets a,b]`` → ``bench/results/cv_select.{md,json}``. No test outcome
is read (``fit_on_train`` embeds the test prompts, as ``calibrate`` does, never scores them).

Procedures, target 0.99 × the reference (best train) model:

- ``cascade`` — ``calibrate --kind contextual`` as it stands: ``--procedure families`` at its z (1.645).
- ``router`` — ``train-router``'s calibrated knob at its z (0.5) on the ensemble router's out-of-fold predictions
  (choice rule: the better train-CV AUC, as ``bench/cv_learned_knob.py``).
- ``select`` — on the train rows it is given, both of the above by 5-fold cross-validation (seed 2); the router if
  its out-of-fold point meets the target and is cheaper than the cascade's out-of-fold point, else the cascade;
  the chosen one fitted on all the rows it is given.

Each is run on 5 **outer** folds (seed 1, as ``bench/cv_calibration.py``): fitted on four, played on the fifth;
concatenated, an out-of-fold cost and quality for every train prompt. (The router's predictions are its own 5-fold
out-of-fold predictions on all of train, so its inner and outer folds share a mild optimism.)

**Decision rule, fixed before the run**: ``select`` becomes the calibrated point of the cascade sets if it meets the
target out of fold on ≥ 90 % of the sets and on more sets at ≤ 90 % of the reference's cost than ``cascade``
(ties: lower mean cost); otherwise ``cascade`` stays.
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

from tierwise.lab.cascade_sim import simulate  # noqa: E402
from tierwise.lab.contextual_cli import fit_on_train  # noqa: E402
from tierwise.lab.crossfit import guarded_families, on_rows, point_z, subset  # noqa: E402
from tierwise.lab.datasets import load_set  # noqa: E402
from tierwise.routing.learned.choose import RULES  # noqa: E402
from tierwise.routing.learned.embed_cache import embed_prompts  # noqa: E402
from tierwise.routing.learned.numerics import kfold_indices  # noqa: E402
from tierwise.routing.learned.train import CALIB_Z, calibrate_knob, choose_calibrated, train_router  # noqa: E402

FOLDS, OUTER_SEED, INNER_SEED = 5, 1, 2
Z_CASCADE = point_z("families", None)
PROCS = ("cascade", "router", "select")


class Ctx:
    """One set's train-fitted pieces: the contextual calibrator, the router's out-of-fold predictions, Q and C."""

    def __init__(self, name: str) -> None:
        s = load_set(name)
        train = s.split("train")
        with tempfile.TemporaryDirectory(prefix="tierwise-cvsel-") as tmp:
            self.calib = fit_on_train(s, Path(tmp)).model.calibrator
        models = s.priced_models()
        E = embed_prompts("minilm-onnx", [p.prompt for p in train.prompts])
        res = train_router(s, "ensemble", "minilm-onnx", models, embeddings=E)
        self.rule = max(RULES, key=lambda r: res.report["cv_auc"][r] or -1.0)
        self.pred, self.costs = res.oof, res.router.mean_cost
        self.Q, self.C = train.quality_matrix(models), train.cost_matrix(models)
        self.ref_model = self.calib.ref_model
        self.ref_j = models.index(self.ref_model)

    def cascade(self, rows: np.ndarray) -> tuple[int, np.ndarray]:
        """(search, thresholds) of families at its z, fitted on ``rows`` (indices into train)."""
        sub = on_rows(self.calib, rows)
        _, idx = guarded_families(sub, TAU, Z_CASCADE)
        part = subset(sub, idx)
        i, thr, _, _ = part.pick(part.guarded(part.constraint_quality(TAU, Z_CASCADE)))
        return idx[i], thr

    def play_cascade(self, fitted: tuple[int, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sim = simulate(self.calib.searches[fitted[0]].data.rows(rows), fitted[1])
        return sim.cost, sim.quality

    def router(self, rows: np.ndarray) -> float | None:
        Q, C = self.Q[rows], self.C[rows]
        b = self.ref_j  # the cascade's reference (the best model on all of train): one target for both
        return calibrate_knob(self.pred[rows], Q, C, self.costs, self.rule, TAU * float(Q[:, b].mean()), CALIB_Z, b)

    def play_router(self, knob: float | None, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = choose_calibrated(self.pred[rows], self.costs, self.rule, knob, self.ref_j)
        return self.C[rows, idx], self.Q[rows, idx]

    def ref(self, rows: np.ndarray) -> np.ndarray:
        return self.calib.ref[rows]

    def select(self, rows: np.ndarray) -> str:
        """'router' or 'cascade', by 5-fold CV on ``rows`` (the rule in the module docstring)."""
        n = len(rows)
        oof = {p: (np.empty(n), np.empty(n)) for p in ("cascade", "router")}
        for tr, ho in kfold_indices(n, FOLDS, INNER_SEED):
            for p, fit, play in (("cascade", self.cascade, self.play_cascade), ("router", self.router, self.play_router)):
                c, q = play(fit(rows[tr]), rows[ho])  # type: ignore[operator]
                oof[p][0][ho], oof[p][1][ho] = c, q
        target = TAU * float(self.ref(rows).mean())
        (cc, _), (rc, rq) = oof["cascade"], oof["router"]
        return "router" if rq.mean() >= target - 1e-12 and rc.mean() < cc.mean() else "cascade"


def one_set(name: str) -> dict:
    ctx = Ctx(name)
    n = len(ctx.Q)
    oof = {p: (np.empty(n), np.empty(n)) for p in PROCS}
    chosen = []
    for tr, ho in kfold_indices(n, FOLDS, OUTER_SEED):
        c1, q1 = ctx.play_cascade(ctx.cascade(tr), ho)
        c2, q2 = ctx.play_router(ctx.router(tr), ho)
        pick = ctx.select(tr)
        chosen.append(pick)
        oof["cascade"][0][ho], oof["cascade"][1][ho] = c1, q1
        oof["router"][0][ho], oof["router"][1][ho] = c2, q2
        oof["select"][0][ho], oof["select"][1][ho] = (c2, q2) if pick == "router" else (c1, q1)
    rq = ctx.calib.ref
    rc = ctx.C[:, ctx.ref_j]
    row: dict = {"set": name, "n_train": n, "router_rule": ctx.rule, "chosen": chosen, "points": {}}
    for p in PROCS:
        c, q = oof[p]
        row["points"][p] = oof_point(q, c, rq, rc)
    return row


def render(rows: list[dict], secs: float, load: str) -> str:
    L = [*header("cv_select.py", "Cascade or learned router per set, chosen by train CV: nested cross-validation on "
                "the train splits", secs, load),
         "| set | n train | " + " | ".join(f"{p}: OOF q / target, cost %" for p in PROCS) + " | select chose |",
         "|---|---|" + "---|" * (len(PROCS) + 1)]
    for r in rows:
        cells = [cell(r["points"][p]) for p in PROCS]
        L.append(f"| {r['set']} | {r['n_train']} | " + " | ".join(cells) + f" | {', '.join(r['chosen'])} |")
    n = len(rows)
    summary = {}
    L += ["", "| procedure | met out of fold | met at ≤ 90 % cost | mean cost % |", "|---|---|---|---|"]
    for p in PROCS:
        summary[p] = met, cheap, cost = tally([r["points"][p] for r in rows])
        L.append(f"| {p} | {met}/{n} | {cheap}/{n} | {cost:.0f} |")
    s, c = summary["select"], summary["cascade"]
    adopt = s[0] >= 0.9 * n and (s[1] > c[1] or (s[1] == c[1] and s[2] < c[2]))
    L += ["", f"**Decision (rule in the docstring): {'select' if adopt else 'cascade'}.**"]
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", help="comma-separated subset of the cascade sets")
    args = ap.parse_args(argv)
    sets = args.sets.split(",") if args.sets else [x for x in SETS if not x.startswith(("routellm/", "routerbench/"))]
    return run_sets(sets, one_set,
                    lambda row: f"{row['set']}: {brief((p, row['points'][p]) for p in PROCS)}; chose {row['chosen']}",
                    "cv_select", render)


if __name__ == "__main__":
    raise SystemExit(main())
