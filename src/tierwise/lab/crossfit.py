"""Cross-fitting on train: what the calibrator's search does on prompts it did not fit, for any sub-family of its
candidates — the train-only evidence behind two choices a user's ``calibrate`` / ``eval`` must not read off test.

The calibrator already splits train into k folds for its selection guard (:meth:`CascadeCalibrator.optimism`) and
rebuilds every search on each fold's fit rows. :class:`CrossFit` reuses those folds: for a set of candidate searches
(``idx``) and a target τ, it runs the search's own choice rule (:func:`tierwise.lab.calibrate.best_of`, with the
reference-model fallback of :meth:`CascadeCalibrator.pick`) on each fold's fit rows and plays the chosen point on the
fold's held-out rows, giving an **out-of-fold** cost and quality for every train prompt. Fits are memoised per
(fold, search, τ, z), so many families share the work.

1. **Pool choice** (:func:`cv_pool`, the "ours-CV" reading): for every sub-pool of models (the models of each
   multi-rung sub-chain, the whole pool included), the out-of-fold τ-family curve and its oracle-normalised AUC
   against the train split's own baselines; the pool with the best cross-validated AUC is the one whose τ family a
   user gets. No test prompt is read: this replaces the hindsight pool of ours-H.
2. **The calibrated point** (:func:`fit_target`, ``calibrate --procedure``). The whole search's selection guard
   charges every candidate — the reference model alone and a single cheap rung before it included — for the
   optimism of the most flexible ones (hundreds of sub-chains × start knobs × thresholds), so on 160–300 train
   prompts it rarely certifies a saving. ``families`` (the default) computes the guard per *family* of candidates
   (:func:`families`: one cheap rung before the reference model; the same with start-router knobs; every chain
   ending at the reference model; everything), each family's own cross-validated optimism, and serves the cheapest
   feasible guarded point across families (:func:`guarded_families`). ``crossfit`` (:func:`cv_point`) instead
   compares procedures (family × internal target τ' = τ + δ, fitted without a margin) by their out-of-fold
   per-prompt differences ``d_i = q_i − τ·ref_i`` over all n train prompts, certified by the paired bound
   ``mean(d) − z·sd(d)/√n ≥ 0``, and refits the cheapest that passes on all of train. ``guard`` is the whole
   search with one guard (the procedure before these).

Families and the δ grid are fixed here, a priori (:data:`DELTAS`, :func:`families`); which procedure is the default
(:data:`DEFAULT_PROCEDURE`) was decided by nested cross-validation on the train splits with a rule written down
before the run (``bench/cv_calibration.py`` → ``bench/results/cv_calibration.md``: ``families`` met the target out
of fold on 15/16 sets, 6 of them at ≤ 90 % of the reference model's cost; the single guard 16/16 and 2), and so was
its z when the user gives none (:data:`POINT_Z`: a re-run with the z grid {0.5, 1, 1.645} found z = 1 meeting the
target on 14/16 sets, under the rule's 90 %, and 1.645 on 15/16, 4 of them at ≤ 90 % cost).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tierwise.lab.calibrate import Calibrated, CascadeCalibrator, Constraint, best_of
from tierwise.lab.cascade_sim import simulate
from tierwise.lab.metrics import Point, compute_baselines, evaluate_curve

Z_FIT = 0.0  # cv_point's procedures fit without a margin; the out-of-fold bound carries z
DELTAS = (0.0, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05)  # τ' = τ + δ tried by cv_point (a priori)


class CrossFit:
    """Out-of-fold results of the calibrator's choice rule on any subset of its searches (see the module doc)."""

    def __init__(self, calib: CascadeCalibrator) -> None:
        if calib.cv_folds < 2:
            raise ValueError("cross-fitting needs --cv-folds >= 2")
        self.calib = calib
        self.folds = calib._fold_searches()
        self.n = calib.searches[0].data.n
        self._fits: dict[tuple[int, int, float, float], tuple[np.ndarray, np.ndarray, bool]] = {}
        self._held: dict[tuple[int, int, tuple[float, ...]], tuple[np.ndarray, np.ndarray]] = {}

    def _con(self, f: int, tau: float, z: float) -> Constraint:
        ref = self.calib.ref[self.folds[f][0]]
        return Constraint("quality", tau * float(ref.mean()), tau, ref, z)

    def pick(self, f: int, idx: Sequence[int], tau: float, z: float) -> tuple[int, np.ndarray]:
        """(search index, thresholds) the search restricted to ``idx`` picks on fold ``f``'s fit rows."""
        searches = self.folds[f][2]
        con = self._con(f, tau, z)
        fits = []
        for i in idx:
            key = (f, i, tau, z)
            if key not in self._fits:
                self._fits[key] = searches[i].fit(con)
            fits.append((i, *self._fits[key]))
        i, thr, _, ok = best_of(searches, fits, con)
        if not ok and tau <= 1.0:  # CascadeCalibrator.pick's fallback: the reference model alone
            ref = [j for j in idx if list(searches[j].data.chain) == [self.calib.ref_model]]
            if ref:
                return ref[0], np.zeros(0)
        return i, thr

    def oof(self, idx: Sequence[int], tau: float, z: float) -> tuple[np.ndarray, np.ndarray]:
        """Per train prompt, the cost and quality of the point fitted without that prompt's fold."""
        cost, quality = np.empty(self.n), np.empty(self.n)
        for f, (_, ho, _) in enumerate(self.folds):
            i, thr = self.pick(f, idx, tau, z)
            key = (f, i, tuple(float(t) for t in thr))
            if key not in self._held:
                sim = simulate(self.calib.searches[i].data.rows(ho), thr)
                self._held[key] = (sim.cost, sim.quality)
            cost[ho], quality[ho] = self._held[key]
        return cost, quality


def members(calib: CascadeCalibrator, models: Sequence[str]) -> list[int]:
    """Indices of the searches whose chain uses only ``models``."""
    keep = set(models)
    return [i for i, s in enumerate(calib.searches) if set(s.data.chain) <= keep]


def subset(calib: CascadeCalibrator, idx: Sequence[int]) -> CascadeCalibrator:
    """The same calibrator searching only ``idx`` (start knobs and guard folds restricted alike)."""
    if calib.cv_folds >= 2:
        calib._fold_searches()  # built once on the whole calibrator, shared by every subset
    out = copy.copy(calib)
    keep = list(idx)
    out.searches = [calib.searches[i] for i in keep]
    if hasattr(calib, "starts"):
        out.starts = [calib.starts[i] for i in keep]  # type: ignore[attr-defined]
    if calib._folds is not None:
        out._folds = [(tr, ho, [fs[i] for i in keep]) for tr, ho, fs in calib._folds]
    return out


def on_rows(calib: CascadeCalibrator, rows: np.ndarray) -> CascadeCalibrator:
    """The calibrator as if train held only ``rows`` (every search rebuilt on them; its own guard folds anew): for
    nested cross-validation of a whole calibration procedure."""
    from tierwise.lab.datasets.format import OutcomeSet

    out = copy.copy(calib)
    t = calib.train
    out.train = OutcomeSet(t.name, list(t.models), [t.prompts[i] for i in rows], t.meta)
    out.ref = calib.ref[rows]
    out.searches = [type(s)(s.data.rows(rows), None if s.ref is None else s.ref[rows],
                            lat=None if s.lat is None else s.lat[rows], max_p95_ms=s.max_p95_ms)
                    for s in calib.searches]
    out._folds = None
    return out


# ------------------------------------------------------------------------------------------------ pool choice


@dataclass
class PoolChoice:
    """The sub-pool with the best cross-validated τ-family AUC on train, and every pool's score."""

    pool: tuple[str, ...]
    auc: float | None
    scores: list[tuple[tuple[str, ...], float | None]]


def candidate_pools(calib: CascadeCalibrator) -> list[tuple[str, ...]]:
    """The models of every multi-rung sub-chain (the whole pool among them), as :func:`hindsight_chain` reads them."""
    return sorted({tuple(s.data.chain) for s in calib.searches if len(s.data.chain) > 1})


def cv_pool(calib: CascadeCalibrator, taus: Sequence[float], z: float = 1.0, xf: CrossFit | None = None,
            progress: Any = None) -> PoolChoice:
    """Per candidate pool, the out-of-fold τ-family curve on train and its AUC against the train split's own
    baselines (best model, cheapest, oracle over every priced model); the best pool (ties: the earlier in
    :func:`candidate_pools` order). Raises ValueError when no pool has a defined AUC."""
    xf = xf or CrossFit(calib)
    train = calib.train
    models = train.priced_models()
    base = compute_baselines(train.quality_matrix(models), train.cost_matrix(models), models)
    scores: list[tuple[tuple[str, ...], float | None]] = []
    pools = candidate_pools(calib)
    for done, pool in enumerate(pools):
        if progress is not None:
            progress(done, len(pools))
        idx = members(calib, pool)
        pts = []
        for tau in taus:
            c, q = xf.oof(idx, float(tau), z)
            pts.append(Point(float(c.mean()), float(q.mean())))
        scores.append((pool, evaluate_curve(pts, base).auc))
    if progress is not None:
        progress(len(pools), len(pools))
    defined = [(a, -k, p) for k, (p, a) in enumerate(scores) if a is not None and not math.isnan(a)]
    if not defined:
        raise ValueError(f"{train.name}: no sub-pool has a defined cross-validated AUC on train")
    auc, _, pool = max(defined)
    return PoolChoice(pool, auc, scores)


# ------------------------------------------------------------------------------------------- calibrated point


def families(calib: CascadeCalibrator) -> dict[str, list[int]]:
    """The candidate families of :func:`cv_point`, from the simplest to the whole search (each holds the reference
    model alone, the fallback). "ref+1": one cheap rung in front of the reference model, no start router;
    "ref+1/start": the same with start-router knobs; "ref": every chain ending at the reference model; "all"."""
    ref = calib.ref_model
    starts = getattr(calib, "starts", [0.0] * len(calib.searches))
    fam: dict[str, list[int]] = {"ref+1": [], "ref+1/start": [], "ref": [], "all": []}
    for i, (s, k) in enumerate(zip(calib.searches, starts, strict=True)):
        chain = list(s.data.chain)
        if chain == [ref]:
            for v in fam.values():
                v.append(i)
            continue
        fam["all"].append(i)
        if chain[-1] != ref:
            continue
        fam["ref"].append(i)
        if len(chain) == 2:
            fam["ref+1/start"].append(i)
            if k == 0.0:
                fam["ref+1"].append(i)
    return {k: v for k, v in fam.items() if v}


@dataclass
class CvPoint:
    """The procedure :func:`cv_point` chose: a family of searches and the internal target it is fitted for."""

    family: str
    idx: list[int]
    tau_fit: float  # τ' the final fit on all train uses
    z_fit: float  # and its z (Z_FIT for a passed procedure)
    oof_cost: float  # mean out-of-fold cost (USD per request)
    oof_quality: float
    oof_bound: float  # mean(d) − z·sd(d)/√n of the out-of-fold d_i = q_i − τ·ref_i (≥ 0: passed)
    passed: bool  # False: no procedure passed; the reference model alone is served
    tried: int  # procedures compared


def cv_point(calib: CascadeCalibrator, tau: float, z: float = 1.0, xf: CrossFit | None = None,
             fams: dict[str, list[int]] | None = None, deltas: Sequence[float] = DELTAS) -> CvPoint:
    """The cheapest (out-of-fold cost) procedure (family × τ' = τ + δ) whose out-of-fold paired bound holds; ties to
    the simpler family and the smaller δ. Without one: the reference model alone.

    Each procedure fits its points with no margin (z = 0 on its fit rows): the only margin is the out-of-fold bound
    with ``z``, and δ is how much the internal target must exceed τ for the held-out prompts to clear it — the
    search's optimism and the sampling noise, measured instead of added twice."""
    xf = xf or CrossFit(calib)
    fams = fams if fams is not None else families(calib)
    ref = calib.ref
    n = len(ref)
    best: tuple[float, int, float, CvPoint] | None = None
    for rank, (name, idx) in enumerate(fams.items()):
        for delta in deltas:
            c, q = xf.oof(idx, float(tau + delta), Z_FIT)
            d = q - tau * ref
            bound = float(d.mean() - z * d.std(ddof=1) / math.sqrt(n)) if n > 1 else -math.inf
            if bound < 0 or not _feasible(calib, idx, tau + delta):
                continue
            cand = CvPoint(name, list(idx), float(tau + delta), Z_FIT, float(c.mean()), float(q.mean()), bound,
                           True, len(fams) * len(deltas))
            key = (float(c.mean()), rank, delta)
            if best is None or key < best[:3]:
                best = (*key, cand)
    if best is not None:
        return best[3]
    if tau > 1.0 and "all" in fams:  # no reference fallback above τ = 1: the closest to feasible, as the search does
        c, q = xf.oof(fams["all"], float(tau), z)
        return CvPoint("all", list(fams["all"]), float(tau), z, float(c.mean()), float(q.mean()), -math.inf,
                       False, len(fams) * len(deltas))
    alone = [i for i, s in enumerate(calib.searches) if list(s.data.chain) == [calib.ref_model]]
    c = calib.train.cost_matrix([calib.ref_model])[:, 0]
    return CvPoint("reference model alone", alone, float(tau), z, float(c.mean()), float(ref.mean()), -math.inf,
                   False, len(fams) * len(deltas))


def _feasible(calib: CascadeCalibrator, idx: Sequence[int], tau_fit: float) -> bool:
    """Whether the procedure's fit on all of train finds a feasible point (the reference model alone counts)."""
    sub = subset(calib, idx)
    _, _, _, ok = sub.pick(sub.constraint_quality(tau_fit, Z_FIT))
    return ok or tau_fit <= 1.0


def guarded_families(calib: CascadeCalibrator, tau: float, z: float = 1.0,
                     fams: dict[str, list[int]] | None = None) -> tuple[str, list[int]]:
    """Per family, the calibrator's own guarded search restricted to it (its own cross-validated optimism); the
    family whose guarded point is feasible and cheapest on train. (name, searches), or the reference model alone."""
    from tierwise.lab.calibrate import _F_C

    fams = fams if fams is not None else families(calib)
    best: tuple[float, int, str, list[int]] | None = None
    for rank, (name, idx) in enumerate(fams.items()):
        sub = subset(calib, idx)
        _, _, tot, ok = sub.pick(sub.guarded(sub.constraint_quality(tau, z)))
        cost = float(tot[_F_C]) / len(calib.ref)
        if ok and (best is None or (cost, rank) < best[:2]):
            best = (cost, rank, name, list(idx))
    if best is None:
        return "reference model alone", [i for i, s in enumerate(calib.searches)
                                         if list(s.data.chain) == [calib.ref_model]]
    return best[2], best[3]


# ---------------------------------------------------------------------------------------------- the procedures

PROCEDURES = ("guard", "families", "crossfit", "none")
DEFAULT_PROCEDURE = "families"  # chosen by nested CV on the train splits: bench/results/cv_calibration.md
# The paired bound's z of the calibrated point when the user gives no --z, per procedure (1 otherwise). families at
# 1.645 (~95 % one-sided): chosen by nested CV on the train splits with the rule fixed before the run, among z in
# {0.5, 1, 1.645} (bench/cv_calibration.py: out of fold, z = 1 met 0.99 x the reference on 14/16 sets, below the
# rule's 90 % eligibility; 1.645 on 15/16, 4 of them at <= 90 % of its cost; 0.5 on 12/16).
POINT_Z = {"families": 1.645}
# calibrate --kind cascade (raw log-prob/vote gates): the same nested CV (bench/cv_calibration.py --kind cascade,
# rule fixed before its run) preferred families at z = 0.5: out of fold it met the target on 15/16 sets, 6 of them at
# <= 90 % of the reference's cost; the single guard 16/16 and 5; families z = 1: 14/16, 5. Its default procedure is
# nevertheless kept at guard (CASCADE_DEFAULT_PROCEDURE): the margin over guard is one set, and with families the
# scripted rollout (bench/rollout_e2e.py, tests/test_rollout_e2e.py) calibrated a chain that escalates to the flagship
# after a rung whose trial quality already equals it, a dearer point than guard's on that flow. families at z = 0.5
# stays one flag away (--procedure families).
CASCADE_POINT_Z = {"families": 0.5}
CASCADE_DEFAULT_PROCEDURE = "guard"
DEFAULT_Z = 1.0


def point_z(procedure: str, z: float | None, kind: str = "contextual") -> float:
    """The z of the calibrated point's paired bound: the user's ``z`` if given, else the procedure's default for
    ``kind`` (:data:`POINT_Z`, :data:`CASCADE_POINT_Z`). Only the calibrated point: the τ families ``eval`` reads
    keep ``z`` (default 1), since a larger margin there only relabels which τ gives which point."""
    if z is not None:
        return float(z)
    return (CASCADE_POINT_Z if kind == "cascade" else POINT_Z).get(procedure, DEFAULT_Z)


def calibrate_cascade(calib: CascadeCalibrator, test: Any, tau: float, procedure: str, z_given: float | None,
                      one_chain: bool = False) -> tuple[Any, float, str | None]:
    """``calibrate --kind cascade`` for a quality target τ: the point ``procedure`` fits on train (with its z unless
    ``z_given``), run once on ``test`` through the engine (the simulator checked against it). ``guard`` and a single
    given chain (no families to choose among) are :func:`tierwise.lab.calibrate.calibrate_point`, as before.
    Returns (CalibrationResult, z, what the procedure chose or None)."""
    from tierwise.lab.calibrate import CalibrationResult, calibrate_point, check_engine_agrees, held_out

    if one_chain or procedure == "guard":
        z = DEFAULT_Z if z_given is None else float(z_given)
        return calibrate_point(calib, test, "quality", tau, z), z, None
    z = point_z(procedure, z_given, "cascade")
    fitted = fit_target(calib, calib.constraint_quality(tau, z), procedure)
    held = held_out(test, fitted.cal.tier())
    check_engine_agrees(test, fitted.cal, held.results)
    res = CalibrationResult(fitted.cal, held, tau, "quality", calib.ref_model, tau * calib.q_ref,
                            tau * test.mean_quality(calib.ref_model))
    return res, z, fitted.detail


@dataclass
class Fitted:
    """A point fitted for a target by one of :data:`PROCEDURES`, with what the procedure chose."""

    cal: Calibrated
    start_knob: float  # the contextual start router's knob (0: none)
    procedure: str
    detail: str  # the family / internal target the procedure settled on, for the report


def _fit_in(calib: CascadeCalibrator, idx: Sequence[int], con: Constraint, guard: bool) -> tuple[Calibrated, float]:
    sub = subset(calib, idx)
    fit_start = getattr(sub, "fit_start", None)
    if fit_start is not None:
        cal, knob = fit_start(con, guard)
        return cal, float(knob)
    return sub.fit(con, guard), 0.0


def fit_target(calib: CascadeCalibrator, con: Constraint, procedure: str) -> Fitted:
    """The point for ``con`` by ``procedure``: ``guard`` — every candidate, with the cross-validated selection
    optimism as a margin (:meth:`CascadeCalibrator.fit`); ``families`` — that guard per family of
    :func:`families`, the cheapest guarded point across them (:func:`guarded_families`); ``crossfit`` —
    :func:`cv_point`; ``none`` — the cheapest point meeting ``con`` on train with its z margin only (the τ-family
    reading of ``eval``). A budget (cost mode) always uses ``guard``."""
    everything = list(range(len(calib.searches)))
    if con.mode != "quality" or procedure == "guard" or (calib.cv_folds < 2 and procedure != "none"):
        cal, knob = _fit_in(calib, everything, con, guard=True)
        return Fitted(cal, knob, "guard", f"every candidate, selection guard {cal.guard:.4f}")
    if procedure == "none":
        cal, knob = _fit_in(calib, everything, con, guard=False)
        return Fitted(cal, knob, "none", "every candidate, no selection guard")
    if procedure == "families":
        name, idx = guarded_families(calib, con.tau, con.z)
        cal, knob = _fit_in(calib, idx, con, guard=True)
        return Fitted(cal, knob, "families", f"family {name!r}, its selection guard {cal.guard:.4f}")
    if procedure == "crossfit":
        cp = cv_point(calib, con.tau, con.z)
        cal, knob = _fit_in(calib, cp.idx, calib.constraint_quality(cp.tau_fit, cp.z_fit), guard=False)
        how = (f"family {cp.family!r} fitted for τ' = {cp.tau_fit:g} (z = {cp.z_fit:g}): out-of-fold bound "
               f"{cp.oof_bound:+.4f} over {len(calib.ref)} train prompts, best of {cp.tried} procedures"
               if cp.passed else f"{cp.family}: no procedure's out-of-fold bound held ({cp.tried} tried)")
        return Fitted(cal, knob, "crossfit", how)
    raise ValueError(f"unknown calibration procedure {procedure!r}; one of {', '.join(PROCEDURES)}")
