"""The contextual cascade's readings on a test split: one family fitted on train, read three ways.

Moved out of ``bench/routing_brain.py`` so that ``tierwise eval --router contextual`` and the bench compute the very
same numbers (the bench imports these functions):

- **ours-τ** (:func:`contextual_curve`): for each τ of :func:`family_taus`, thresholds, sub-chain and start-router
  knob fitted on train; only τ is read on test.
- **ours-H** (:func:`hindsight_chain`): the same τ family per sub-pool, the sub-pool with the best *test* AUC
  (hindsight, as the grid baseline reads its sub-chain).
- **ours-G** (:func:`grid_protocol`): the grid baseline's protocol on the contextual gate's out-of-fold confidences,
  with the start-router knob as one more grid dimension; sub-chain and grid point read on the test hull.

Every point is run on test through the engine (:func:`tierwise.lab.contextual.run_contextual`) and checked against
the simulator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tierwise.lab.calibrate import DEFAULT_TAUS, Calibrated, CascadeCalibrator
from tierwise.lab.cascade_sim import grid_points, simulate, simulate_many
from tierwise.lab.contextual import ContextualCalibrator, ContextualModel, held_out_data, run_contextual
from tierwise.lab.datasets.format import OutcomeSet
from tierwise.lab.evaluate import PromptResult, means
from tierwise.lab.metrics import Baselines, CurveReport, Point, compute_baselines, evaluate_curve, upper_hull

START_GRID = np.round(np.linspace(0.05, 0.95, 19), 2)  # ours-G's start-router knobs: these quantiles of the train prior
Progress = Callable[[int, int], None] | None


def knob_taus(calib: CascadeCalibrator, target: float, n: int = 40) -> list[float]:
    """The cascade knob: τ from the cheapest model's relative train quality (or 0.80 if higher) to 1.02, ``n`` steps,
    plus 0.80…1.02 by 0.01 and the calibrated target — all fitted on train, so the family is honest point by point."""
    train = calib.train
    lo = min(0.80, min(train.mean_quality(m) for m in train.priced_models()) / max(calib.q_ref, 1e-12))
    return sorted({*DEFAULT_TAUS, *np.round(np.linspace(lo, 1.02, n), 4).tolist(), target})


def family_taus(calib: CascadeCalibrator, train: OutcomeSet, target: float = 0.99) -> list[float]:
    """The τ knob family: :func:`knob_taus` extended up to the *train* oracle's quality relative to q_ref, so the
    family also reaches quality above the best single model where train says it can."""
    models = train.priced_models()
    q_oracle = compute_baselines(train.quality_matrix(models), train.cost_matrix(models), models).oracle.quality
    top = max(1.02, q_oracle / max(calib.q_ref, 1e-12))
    return sorted({*knob_taus(calib, target), *np.round(np.linspace(1.0, top, 16), 4).tolist()})


def contextual_curve(test: OutcomeSet, P_te: np.ndarray | None, model: ContextualModel, taus: Sequence[float],
                     calib: ContextualCalibrator | None = None, guard: bool = False, z: float = 1.0,
                     progress: Progress = None, procedure: str | None = None
                     ) -> tuple[list[Point], list[dict[str, Any]]]:
    """Each τ: fit on train, run on test through the engine; check the simulator agrees. (points, per-τ rows).

    ``guard``: the calibrator's cross-validated selection guard — on for the calibrated point; off for the τ
    families read on the test hull, where it would only relabel which τ gives which point (and cost 5 searches).
    ``procedure`` (one of :data:`tierwise.lab.crossfit.PROCEDURES`) replaces ``guard`` when given: the calibrated
    point's procedure, as ``calibrate --kind contextual --procedure`` fits it."""
    from tierwise.lab.crossfit import fit_target

    calib = calib or model.calibrator
    cache: dict[str, tuple[float, float, list[PromptResult]]] = {}
    rows: list[dict[str, Any]] = []
    for i, tau in enumerate(taus):
        con = calib.constraint_quality(float(tau), z)
        if procedure is None:
            cal, knob = calib.fit_start(con, guard)
            detail = "selection guard" if guard else "no selection guard"
        else:
            fitted = fit_target(calib, con, procedure)
            cal, knob, detail = fitted.cal, fitted.start_knob, fitted.detail
        key = repr(model.tier(cal, knob))
        if key not in cache:
            res = run_contextual(model, test, cal, P_te, knob)
            sim = simulate(held_out_data(model, test, cal.chain, P_te, knob), cal.thresholds)
            if [cal.chain[j] for j in sim.served] != [r.served for r in res]:
                raise AssertionError(f"{test.name}: simulator and engine disagree for {cal.chain} {cal.thresholds}")
            cache[key] = (*means(res), res)
        c, q, res = cache[key]
        rows.append({"tau": float(tau), "chain": cal.chain, "start_knob": knob, "thresholds": cal.thresholds,
                     "train_cost": cal.train_cost, "train_quality": cal.train_quality, "feasible": cal.feasible,
                     "guard": cal.guard, "detail": detail, "cost": c, "quality": q, "results": res})
        if progress is not None:
            progress(i + 1, len(taus))
    return [Point(r["cost"], r["quality"]) for r in rows], rows


def hindsight_chain(test: OutcomeSet, P_te: np.ndarray | None, model: ContextualModel, taus: Sequence[float],
                    base: Baselines, progress: Progress = None
                    ) -> tuple[float, tuple[str, ...], ContextualCalibrator] | None:
    """The grid baseline's protocol with our calibrator: per sub-pool (the models of a multi-rung sub-chain), the τ
    family fitted on train over that pool's sub-chains (start knobs included); the pool with the best *test* AUC
    (hindsight), scored by the simulator; its family is then re-run through the engine by :func:`contextual_curve`."""
    best: tuple[float, tuple[str, ...], ContextualCalibrator] | None = None
    sims: dict[tuple[tuple[str, ...], float], Any] = {}
    pools = sorted({s.data.chain for s in model.calibrator.searches if len(s.data.chain) > 1})
    for done, chain in enumerate(pools):
        if progress is not None:
            progress(done, len(pools))
        calib = model.calibrator.restricted(chain)
        pts = []
        for tau in taus:
            cal, knob = calib.fit_start(calib.constraint_quality(float(tau), 1.0), guard=False)
            key = (tuple(cal.chain), knob)
            if key not in sims:
                sims[key] = held_out_data(model, test, cal.chain, P_te, knob)
            pts.append(Point(*simulate(sims[key], cal.thresholds).means()))
        auc = evaluate_curve(pts, base).auc
        if auc is not None and (best is None or auc > best[0]):
            best = (auc, tuple(chain), calib)
    if progress is not None:
        progress(len(pools), len(pools))
    return best


def grid_protocol(test: OutcomeSet, P_te: np.ndarray | None, model: ContextualModel, prior_oof: np.ndarray | None,
                  base: Baselines, progress: Progress = None
                  ) -> tuple[CurveReport, tuple[str, ...], list[Point], list[list[PromptResult]]]:
    """**ours-G**: the grid baseline's protocol, with our contextual confidences in place of the raw one and the
    start router's knob as one more grid dimension.

    Per sub-chain: the coarse grid of per-rung quantiles of the *out-of-fold train* contextual confidences
    (``grid_points(…, "coarse")``, exactly as the grid baseline builds its grid), crossed with the
    start-router knob — 0 (no start router) and the :data:`START_GRID` quantiles of the first rung's out-of-fold
    train prior. The sub-chain, start knob and grid point are read off the **test** hull (hindsight, as the grid
    baseline is read). ``prior_oof``: (n_train, len(model.pool)) out-of-fold router priors (None: no router). Hull
    vertices are re-run through the engine and must agree with the simulator. Returns (report, chain, points,
    per-vertex engine results)."""
    by_chain: dict[tuple[str, ...], list[tuple[float, float, float, tuple[float, ...]]]] = {}
    for srch, knob0 in zip(model.calibrator.searches, model.calibrator.starts, strict=True):
        if len(srch.data.chain) < 2 or knob0 != 0.0:
            continue
        chain = tuple(srch.data.chain)
        grid = grid_points(srch.data, "coarse")
        knobs = [0.0]
        if prior_oof is not None:
            prior0 = prior_oof[:, model.pool.index(chain[0])]
            knobs = sorted({0.0, *np.quantile(prior0, START_GRID).tolist()})
        for knob in knobs:
            c, q = simulate_many(held_out_data(model, test, chain, P_te, knob), grid)
            by_chain.setdefault(chain, []).extend(
                (float(a), float(b), knob, tuple(float(x) for x in t)) for a, b, t in zip(c, q, grid, strict=True))
    best: tuple[float, tuple[str, ...], list[tuple[float, float, float, tuple[float, ...]]]] | None = None
    for chain, cand in by_chain.items():
        rep = evaluate_curve([Point(a, b) for a, b, _, _ in cand], base)
        if rep.auc is not None and (best is None or rep.auc > best[0]):
            best = (rep.auc, chain, cand)
    if best is None:
        raise ValueError(f"{test.name}: no multi-rung sub-chain to read a grid on")
    _, chain, cand = best
    hull = {(p.cost, p.quality) for p in upper_hull([Point(a, b) for a, b, _, _ in cand])}
    pts, runs = [], []
    for a, b, knob, thr in cand:
        if (a, b) not in hull:
            continue
        hull.discard((a, b))
        cal = Calibrated(list(chain), "contextual", list(thr), list(model.params[chain]), float("nan"), float("nan"),
                         True)
        runs.append(run_contextual(model, test, cal, P_te, knob))
        if progress is not None:
            progress(len(runs), len(hull) + len(runs))
        pc, pq = means(runs[-1])
        if abs(pc - a) > 1e-12 * max(1.0, abs(a)) or abs(pq - b) > 1e-12:
            raise AssertionError(f"{test.name}: ours-G: simulator and engine disagree for {chain} {thr} start {knob}")
        pts.append(Point(pc, pq))
    return evaluate_curve(pts, base), chain, pts, runs


def cv_reading(model: ContextualModel, taus: Sequence[float], z: float = 1.0, progress: Progress = None
               ) -> tuple[ContextualCalibrator, Any]:
    """**ours-CV**: the τ family restricted to the sub-pool with the best *cross-validated train* AUC
    (:func:`tierwise.lab.crossfit.cv_pool`) — ours-H's pool choice without reading test. Returns the restricted
    calibrator (its τ family is read by :func:`contextual_curve`) and the :class:`~tierwise.lab.crossfit.PoolChoice`."""
    from tierwise.lab.crossfit import cv_pool

    choice = cv_pool(model.calibrator, taus, z, progress=progress)
    return model.calibrator.restricted(choice.pool), choice
