"""Calibrate cascade thresholds (and the chain) on the train split; report the held-out result through the engine.

Problem: minimise mean cost subject to mean quality ≥ target (``target = τ · q_ref``, q_ref the train quality of a
reference model), or maximise mean quality subject to mean cost ≤ budget (USD per request).

The search, per chain (every ordered sub-chain of the pool, cheap → dear, whose gated rungs have a gate signal):

1. **Lagrangian sweep**: for μ on a log grid, minimise mean(cost/c_ref − μ·quality) by *exact* coordinate descent:
   with the other thresholds fixed, the objective as a function of one rung's threshold is a step function that
   changes only at that rung's recorded confidences, so all candidates are scored at once from suffix sums over the
   confidences sorted once (O(n log n) per rung). Warm-started along the μ grid. This gives the train cost–quality
   frontier of the chain.
2. **Constrained polish**: from the cheapest frontier point that meets the constraint, coordinate descent on the
   constrained problem itself (per rung: the cheapest threshold that keeps the constraint), which also reaches
   points between the frontier's convex-hull vertices.
3. **Chain choice**: the cheapest feasible (chain, thresholds) over all sub-chains, on train.

Overfitting guard: the constraint is imposed on a one-sided lower confidence bound, not on the train mean:
``mean(d) − z·sd(d)/√n ≥ 0`` with the *paired* per-prompt difference ``d_i = q_i − τ·ref_i`` (``ref_i`` = the
reference model's quality on prompt i; paired because the cascade usually serves the same answers as the
reference, so the bound is tight where the data allow). Budget mode uses ``mean(c) + z·sd(c)/√n ≤ budget``.
``z`` (default 1.0, i.e. ~84% one-sided) is one global constant, not tuned per dataset; ``bench/routing_quality.py``
measures how often z = 0 and z = 1 miss the target on test.

Selection guard: the search picks the best of hundreds of (chain, thresholds) candidates on the same prompts it
scores them on, so the winner's train slack flatters it (winner's curse) — the z margin covers sampling noise, not
that. :meth:`CascadeCalibrator.optimism` measures it by k-fold cross-validation *of the whole search* on train
(fit on k−1 folds, score the chosen point on the held-out fold; the mean drop of the slack, z = 0, floored at 0), and
:meth:`CascadeCalibrator.fit` requires the slack to exceed it (``Constraint.offset``). ``cv_folds = 0`` turns it off.

Everything the search returns is re-run on the test split through :func:`tierwise.lab.evaluate.run_tier` (the
engine) with bootstrap 95% intervals; the simulator is never the source of a reported number.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from tierwise.lab.cascade_sim import CascadeData, cascade_data, default_gate_params, simulate, tier_spec
from tierwise.lab.datasets.format import OutcomeSet
from tierwise.lab.evaluate import PromptResult, run_tier
from tierwise.lab.latency import LatencyModel, p95
from tierwise.lab.metrics import compute_baselines
from tierwise.routing.gates.base import CLEAR_SLACK
from tierwise.routing.learned.numerics import kfold_indices

Mode = Literal["quality", "cost"]
MU_GRID = np.concatenate([[0.0], np.logspace(-3, 4, 57)])
CV_FOLDS, CV_SEED = 5, 0  # the selection guard's cross-validation (one global setting)
_F_C, _F_Q, _F_Q2, _F_QR, _F_C2 = range(5)


@dataclass(frozen=True)
class Constraint:
    """``quality``: mean q − z·se ≥ target (paired against ``ref``); ``cost``: mean c + z·se ≤ budget."""

    mode: Mode
    value: float  # target quality (absolute) or budget (USD per request)
    tau: float = 1.0  # target = tau · mean(ref) in quality mode
    ref: np.ndarray | None = None  # per-prompt reference quality (quality mode)
    z: float = 1.0
    offset: float = 0.0  # the slack must exceed this (the search's cross-validated selection optimism)

    def slack_of(self, cost: np.ndarray, quality: np.ndarray) -> float:
        """The constraint's slack (≥ 0: met) for per-prompt outcomes of one policy."""
        c, q = np.asarray(cost, dtype=float), np.asarray(quality, dtype=float)
        r = np.zeros_like(q) if self.ref is None else self.ref
        tot = np.array([c.sum(), q.sum(), (q * q).sum(), (q * r).sum(), (c * c).sum()])
        return float(_slack(tot, q.size, self))


@dataclass
class Calibrated:
    """One fitted operating point (train numbers only)."""

    chain: list[str]
    gate: str
    thresholds: list[float]
    params: list[dict[str, Any]]
    train_cost: float
    train_quality: float
    feasible: bool  # the constraint (with its margin) holds on train
    method: str = "lagrangian+polish"
    guard: float = 0.0  # the cross-validated selection optimism the slack had to exceed (0: guard off)

    def tier(self) -> dict[str, Any]:
        return tier_spec(self.chain, self.gate, self.thresholds, self.params)


# ------------------------------------------------------------------------------------------ exact 1-D scoring


def served_features(data: CascadeData, ref: np.ndarray | None) -> np.ndarray:
    """(n, k, 5): what each prompt contributes if served at rung r: cumulative cost, q, q², q·ref, cost²."""
    c = np.cumsum(data.cost, axis=1)
    q = data.quality
    r = np.zeros(data.n) if ref is None else ref
    return np.stack([c, q, q * q, q * r[:, None], c * c], axis=2)


def threshold_candidates(data: CascadeData) -> list[np.ndarray]:
    """Per gated rung: every threshold that changes a decision (the recorded confidences), plus 0 (always pass)."""
    return [np.unique(np.concatenate([[0.0], data.confidence[:, j]])) for j in range(len(data.chain) - 1)]


def _served(conf: np.ndarray, thr: np.ndarray) -> np.ndarray:
    k = conf.shape[1]
    passes = conf[:, :-1] >= thr[None, :] - CLEAR_SLACK
    return np.where(passes.any(axis=1), passes.argmax(axis=1), k - 1)


def _totals_along(conf: np.ndarray, F: np.ndarray, thr: np.ndarray, j: int, cands: np.ndarray) -> np.ndarray:
    """(len(cands), 5) feature sums when rung j's threshold takes each candidate value, the others fixed."""
    n, k = conf.shape
    rows = np.arange(n)
    passes = conf[:, :-1] >= thr[None, :] - CLEAR_SLACK
    before = passes[:, :j].any(axis=1)
    fixed = F[rows[before], passes[before, :j].argmax(axis=1)].sum(axis=0) if j else np.zeros(F.shape[2])
    reach = ~before
    after = passes[reach, j + 1 :]
    rest = np.where(after.any(axis=1), j + 1 + after.argmax(axis=1), k - 1) if after.shape[1] else np.full(
        reach.sum(), k - 1
    )
    v_rest = F[rows[reach], rest]
    v_pass = F[rows[reach], j]
    c = conf[reach, j]
    order = np.argsort(c, kind="stable")
    delta = (v_pass - v_rest)[order]
    suffix = np.vstack([np.cumsum(delta[::-1], axis=0)[::-1], np.zeros((1, F.shape[2]))])
    idx = np.searchsorted(c[order], cands - CLEAR_SLACK, side="left")  # first prompt that clears t passes
    return fixed + v_rest.sum(axis=0) + suffix[idx]


def _slack(tot: np.ndarray, n: int, con: Constraint) -> np.ndarray:
    """≥ 0 where the constraint holds (with its z margin), for feature sums ``tot`` (..., 5)."""
    if con.mode == "quality":
        assert con.ref is not None
        sr, sr2 = float(con.ref.sum()), float((con.ref**2).sum())
        sd_ = tot[..., _F_Q] - con.tau * sr
        sd2 = tot[..., _F_Q2] - 2 * con.tau * tot[..., _F_QR] + con.tau**2 * sr2
        mean = sd_ / n
        var = np.maximum(0.0, (sd2 - sd_ * sd_ / n) / max(1, n - 1))
        return mean - con.z * np.sqrt(var / n) - con.offset
    mean = tot[..., _F_C] / n
    var = np.maximum(0.0, (tot[..., _F_C2] - tot[..., _F_C] ** 2 / n) / max(1, n - 1))
    return con.value - (mean + con.z * np.sqrt(var / n)) - con.offset


# ------------------------------------------------------------------------------------------------ search


@dataclass
class ChainSearch:
    """Frontier of one chain on train (Lagrangian sweep), and constrained polish against a constraint."""

    data: CascadeData
    ref: np.ndarray | None
    frontier: list[np.ndarray] = field(default_factory=list)
    lat: np.ndarray | None = None  # (n, k) per-rung latency (ms), for a p95 latency constraint
    max_p95_ms: float | None = None  # candidate points whose train p95 latency exceeds this are removed

    def __post_init__(self) -> None:
        self.F = served_features(self.data, self.ref)
        self.cands = threshold_candidates(self.data)
        self.c_ref = max(float(self.data.cost[:, -1].mean()), 1e-300)
        if len(self.data.chain) > 1:
            self._sweep()

    def totals(self, thr: np.ndarray) -> np.ndarray:
        if len(self.data.chain) == 1:
            return self.F[:, 0].sum(axis=0)
        return self.F[np.arange(self.data.n), _served(self.data.confidence, thr)].sum(axis=0)

    def admissible(self, thr: np.ndarray) -> bool:
        """The point meets the latency constraint on train (always, without one): p95 of Σ called rungs."""
        if self.max_p95_ms is None or self.lat is None:
            return True
        served = _served(self.data.confidence, thr) if len(thr) else np.zeros(self.data.n, dtype=int)
        return p95(np.cumsum(self.lat, axis=1)[np.arange(self.data.n), served]) <= self.max_p95_ms

    def _sweep(self) -> None:
        thr = np.array([c[-1] for c in self.cands])  # as little passing as the [0, 1] range allows
        seen: set[tuple[float, ...]] = set()
        for mu in MU_GRID[::-1]:  # from "quality at any price" down to "cheapest"
            for _ in range(10):
                changed = False
                for j in range(len(thr)):
                    tot = _totals_along(self.data.confidence, self.F, thr, j, self.cands[j])
                    obj = tot[:, _F_C] / self.c_ref - mu * tot[:, _F_Q]
                    best = int(np.flatnonzero(obj <= obj.min() + 1e-12 * max(1.0, abs(obj.min())))[-1])
                    if self.cands[j][best] != thr[j]:
                        thr[j], changed = self.cands[j][best], True
                if not changed:
                    break
            key = tuple(thr.tolist())
            if key not in seen:
                seen.add(key)
                self.frontier.append(thr.copy())

    def fit(self, con: Constraint) -> tuple[np.ndarray, np.ndarray, bool]:
        """(thresholds, feature sums, feasible): the best point for ``con`` on this chain."""
        n = self.data.n
        if len(self.data.chain) == 1:
            tot = self.totals(np.zeros(0))
            return np.zeros(0), tot, bool(_slack(tot, n, con) >= 0)
        tots = np.array([self.totals(t) for t in self.frontier])
        slack = _slack(tots, n, con)
        fast = np.array([self.admissible(t) for t in self.frontier])
        if not fast.any():  # no point of this chain meets the latency constraint: the caller skips it
            return self.frontier[0].copy(), tots[0], False
        slack = np.where(fast, slack, -np.inf)
        ok = np.flatnonzero(slack >= 0)
        if ok.size == 0:  # infeasible: the point closest to feasibility
            i = int(np.argmax(slack))
            return self.frontier[i].copy(), tots[i], False
        key = tots[ok, _F_C] if con.mode == "quality" else -tots[ok, _F_Q]
        i = int(ok[np.argmin(key)])
        thr, tot = self.frontier[i].copy(), tots[i]
        for _ in range(10):  # constrained coordinate descent
            improved = False
            for j in range(len(thr)):
                along = _totals_along(self.data.confidence, self.F, thr, j, self.cands[j])
                good = np.flatnonzero(_slack(along, n, con) >= 0)
                if good.size == 0:
                    continue
                if con.mode == "quality":  # cheapest; ties → higher quality
                    score = along[good, _F_C] - 1e-9 * self.c_ref * along[good, _F_Q]
                else:  # best quality; ties → cheaper
                    score = -along[good, _F_Q] + 1e-9 * along[good, _F_C] / self.c_ref
                b = next((int(good[g]) for g in np.argsort(score, kind="stable")  # best one within the latency cap
                          if self.admissible(np.where(np.arange(len(thr)) == j, self.cands[j][good[g]], thr))), -1)
                if b < 0:
                    continue
                better = along[b, _F_C] < tot[_F_C] - 1e-15 if con.mode == "quality" else along[b, _F_Q] > tot[_F_Q] + 1e-12
                if better:
                    thr[j], tot, improved = self.cands[j][b], along[b], True
            if not improved:
                break
        return thr, tot, True


def gate_signal(oset: OutcomeSet, model: str, gate: str) -> bool:
    """Whether ``model`` can be a gated rung with ``gate`` on this set (signal recorded on every prompt)."""
    if gate == "vote":
        return all(len(p.models[model].samples or []) >= 2 for p in oset.prompts)
    return all(_has_conf(p.models[model].confidence) for p in oset.prompts)


def _has_conf(c: float | None) -> bool:
    return c is not None and not math.isnan(c)


def pick_gate(oset: OutcomeSet, models: Sequence[str]) -> str | None:
    """vote where samples exist on some model, else logprob where confidences exist, else None."""
    for gate in ("vote", "logprob"):
        if any(gate_signal(oset, m, gate) for m in models):
            return gate
    return None


def cost_ordered(oset: OutcomeSet, models: Sequence[str]) -> list[str]:
    """Models cheap → dear by mean cost on ``oset`` (ties: higher quality first)."""
    c, q = oset.cost_matrix(models).mean(axis=0), oset.quality_matrix(models).mean(axis=0)
    return [models[j] for j in sorted(range(len(models)), key=lambda j: (c[j], -q[j], j))]


def sub_chains(pool: Sequence[str], gated_ok: set[str], max_rungs: int = 5) -> list[list[str]]:
    """Every ordered (cost-order) sub-chain of ``pool`` whose gated rungs have a signal, up to ``max_rungs``."""
    out = []
    for r in range(1, min(max_rungs, len(pool)) + 1):
        for combo in itertools.combinations(pool, r):
            if all(m in gated_ok for m in combo[:-1]):
                out.append(list(combo))
    return out


class CascadeCalibrator:
    """All sub-chains' frontiers on one train split; answers any number of targets without re-searching."""

    def __init__(
        self,
        train: OutcomeSet,
        gate: str | None = None,
        chain: Sequence[str] | None = None,
        ref_model: str | None = None,
        max_rungs: int = 5,
        cv_folds: int = CV_FOLDS,
        max_p95_ms: float | None = None,
    ) -> None:
        self.cv_folds = cv_folds
        self.max_p95_ms = max_p95_ms
        self._folds: list[tuple[np.ndarray, np.ndarray, list[ChainSearch]]] | None = None
        priced = train.priced_models()
        self.train = train
        chosen_gate = gate or pick_gate(train, chain or priced)
        if chosen_gate is None:
            raise ValueError(f"{train.name}: no model has a log-prob confidence or samples: no cascade gate to fit")
        self.gate: str = chosen_gate
        base = compute_baselines(train.quality_matrix(priced), train.cost_matrix(priced), priced)
        self.ref_model = ref_model or base.best
        self.ref = train.quality_matrix([self.ref_model])[:, 0]
        if chain is not None:
            chains = [list(chain)]
            bad = [m for m in chain[:-1] if not gate_signal(train, m, self.gate)]
            if bad:
                raise ValueError(f"{bad} have no recorded {self.gate} signal on {train.name}: they cannot be gated rungs")
        else:
            pool = cost_ordered(train, priced)
            gated = {m for m in pool if gate_signal(train, m, self.gate)}
            if not gated:  # only one-model "cascades" would be left: a cascade row calling one model per prompt
                what = "at least 2 samples" if self.gate == "vote" else "a log-prob confidence"
                raise ValueError(f"{train.name}: no model has {what} on every prompt: no {self.gate} cascade to fit")
            chains = sub_chains(pool, gated, max_rungs)
        params = {m: default_gate_params(train, m, self.gate) for c in chains for m in c[:-1]}
        self.searches = [
            ChainSearch(cascade_data(train, c, self.gate, [params[m] for m in c[:-1]]), self.ref) for c in chains
        ]
        if max_p95_ms is not None:  # the latency constraint (tierwise.lab.latency): recorded or token-modelled
            lm = LatencyModel(train)
            for s in self.searches:
                s.lat, s.max_p95_ms = lm.matrix(s.data.ids, s.data.chain), max_p95_ms

    @property
    def q_ref(self) -> float:
        return float(self.ref.mean())

    def constraint_quality(self, tau: float, z: float = 1.0) -> Constraint:
        return Constraint("quality", tau * self.q_ref, tau, self.ref, z)

    def constraint_cost(self, budget: float, z: float = 1.0) -> Constraint:
        return Constraint("cost", budget, z=z)

    def fit(self, con: Constraint, guard: bool = True) -> Calibrated:
        """Best (chain, thresholds) over every sub-chain for ``con``, on train; with ``guard``, the constraint must
        hold beyond the search's cross-validated selection optimism (:meth:`optimism`)."""
        if guard:
            con = self.guarded(con)
        i, thr, tot, ok = self.pick(con)
        s = self.searches[i]
        n = s.data.n
        return Calibrated(list(s.data.chain), self.gate, [float(t) for t in thr], list(s.data.gate_params),
                          float(tot[_F_C] / n), float(tot[_F_Q] / n), ok, guard=con.offset)

    def pick(self, con: Constraint) -> tuple[int, np.ndarray, np.ndarray, bool]:
        """(search index, thresholds, feature sums, feasible) for ``con``.

        When no candidate meets a quality target of τ ≤ 1, the reference model alone is served: it meets such a
        target by definition, whereas the "closest to feasible" candidate is the one the search flatters most."""
        i, thr, tot, ok = self._choose(self.searches, con)
        if not ok and con.mode == "quality" and con.tau <= 1.0:
            for j, s in enumerate(self.searches):
                if list(s.data.chain) == [self.ref_model] and s.admissible(np.zeros(0)):
                    return j, np.zeros(0), s.totals(np.zeros(0)), False
        return i, thr, tot, ok

    @staticmethod
    def _choose(searches: Sequence[ChainSearch], con: Constraint) -> tuple[int, np.ndarray, np.ndarray, bool]:
        """(index, thresholds, feature sums, feasible) of the best search for ``con``: the cheapest feasible point
        (quality mode) or the best-quality one (cost mode); when none is feasible, the closest to feasibility."""
        return best_of(searches, [(i, *s.fit(con)) for i, s in enumerate(searches)], con)

    def guarded(self, con: Constraint) -> Constraint:
        """``con`` with its offset raised by :meth:`optimism`."""
        return replace(con, offset=con.offset + self.optimism(con))

    def optimism(self, con: Constraint) -> float:
        """How much the search flatters the point it picks for ``con``, by k-fold cross-validation on train.

        Per fold, the whole search (every sub-chain, the same ``con`` and z margin) runs on the other folds; the
        point it picks is scored on the held-out fold. The estimate is the mean over folds of (slack on the rows it
        was fitted on − slack on the held-out rows), both at z = 0, floored at 0. Fitting on (k−1)/k of the data
        makes it slightly conservative."""
        if self.cv_folds < 2:
            return 0.0
        def on(c: Constraint, rows: np.ndarray) -> Constraint:  # the constraint restricted to some prompts
            return c if c.ref is None else replace(c, ref=c.ref[rows])

        drops = []
        plain = replace(con, z=0.0, offset=0.0)
        for tr, ho, searches in self._fold_searches():
            try:
                i, thr, _, _ = self._choose(searches, on(con, tr))
            except ValueError:  # no point meets the latency cap on this fold's rows: it measures nothing
                continue
            d = self.searches[i].data
            fitted, held = simulate(d.rows(tr), thr), simulate(d.rows(ho), thr)
            drops.append(on(plain, tr).slack_of(fitted.cost, fitted.quality)
                         - on(plain, ho).slack_of(held.cost, held.quality))
        return max(0.0, float(np.mean(drops))) if drops else 0.0

    def _fold_searches(self) -> list[tuple[np.ndarray, np.ndarray, list[ChainSearch]]]:
        """Per fold: (fit rows, held-out rows, every search rebuilt on the fit rows), built once (a progress bar
        when ``self.progress`` is set: a second per fold on a few hundred prompts and a hundred sub-chains)."""
        if self._folds is None:
            n = self.searches[0].data.n
            folds = kfold_indices(n, self.cv_folds, CV_SEED)
            bar = getattr(self, "progress", None)
            built = []
            for k, (tr, ho) in enumerate(folds):
                built.append((tr, ho, [type(s)(s.data.rows(tr), None if s.ref is None else s.ref[tr],
                                               lat=None if s.lat is None else s.lat[tr], max_p95_ms=s.max_p95_ms)
                                       for s in self.searches]))
                if bar is not None:
                    bar(k + 1, len(folds))
            self._folds = built
        return self._folds


def best_of(searches: Sequence[ChainSearch], fits: Sequence[tuple[int, np.ndarray, np.ndarray, bool]],
            con: Constraint) -> tuple[int, np.ndarray, np.ndarray, bool]:
    """The search's choice rule over fitted candidates ``(index into searches, thresholds, sums, feasible)``: the
    cheapest feasible (quality mode) or best-quality feasible (cost mode) point; when none is feasible, the closest
    to feasibility. Shared by :meth:`CascadeCalibrator.pick` and the cross-fitting of :mod:`tierwise.lab.crossfit`."""
    best: tuple[tuple[float, ...], int, np.ndarray, np.ndarray, bool] | None = None
    for i, thr, tot, ok in fits:
        s = searches[i]
        if not s.admissible(thr):
            continue
        n = s.data.n
        if con.mode == "quality":
            key = (0.0, tot[_F_C] / n, -tot[_F_Q] / n) if ok else (1.0, -float(_slack(tot, n, con)), 0.0)
        else:
            key = (0.0, -tot[_F_Q] / n, tot[_F_C] / n) if ok else (1.0, tot[_F_C] / n, 0.0)
        if best is None or key < best[0]:
            best = (key, i, thr, tot, ok)
    if best is None:
        fastest = min(p95(s.lat[:, 0]) for s in searches if s.lat is not None)
        raise ValueError(f"no candidate point has a train p95 latency <= {searches[0].max_p95_ms:g} ms "
                         f"(the fastest first rung alone: {fastest:.0f} ms)")
    return best[1], best[2], best[3], best[4]


# ------------------------------------------------------------------------------------- held-out, via engine


@dataclass
class HeldOut:
    """Test-split outcome of a tier through the engine, with bootstrap 95% intervals of the means."""

    cost: float
    quality: float
    cost_ci: tuple[float, float]
    quality_ci: tuple[float, float]
    results: list[PromptResult]


def bootstrap_ci(values: np.ndarray, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of the mean, resampling prompts (fixed seed: reruns give the same interval)."""
    v = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for i in range(0, resamples, 100):
        idx = rng.integers(0, v.size, size=(min(100, resamples - i), v.size))
        means[i : i + len(idx)] = v[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def held_out(test: OutcomeSet, tier: dict[str, Any], resamples: int = 1000, seed: int = 0) -> HeldOut:
    results = run_tier(test, tier)
    c = np.array([r.cost for r in results])
    q = np.array([r.quality for r in results])
    return HeldOut(float(c.mean()), float(q.mean()), bootstrap_ci(c, resamples, seed), bootstrap_ci(q, resamples, seed),
                   results)


def check_engine_agrees(test: OutcomeSet, cal: Calibrated, results: Sequence[PromptResult]) -> None:
    """Guard: the simulator's prediction for the test split equals what the engine did (else the search is wrong)."""
    sim = simulate(cascade_data(test, cal.chain, cal.gate, cal.params), cal.thresholds)
    served = [cal.chain.index(r.served) if r.served in cal.chain else -1 for r in results]
    if list(sim.served) != served:
        raise AssertionError(f"simulator and engine disagree on {test.name} for chain {cal.chain}")


# ------------------------------------------------------------------------------------------ one-shot and curve

DEFAULT_TAUS = tuple(round(0.80 + 0.01 * i, 2) for i in range(23))  # 0.80 … 1.02 × q_ref: the cascade's knob


@dataclass
class CalibrationResult:
    """A calibrated point: train fit, and its held-out result through the engine."""

    cal: Calibrated
    held: HeldOut
    knob: float  # τ (quality mode) or budget (cost mode)
    mode: Mode
    ref_model: str
    target_train: float  # absolute quality target (quality mode) or budget (cost mode)
    target_test: float  # τ · q_ref on test (quality mode) or the budget

    @property
    def met_on_test(self) -> bool:
        if self.mode == "quality":
            return self.held.quality >= self.target_test - 1e-12
        return self.held.cost <= self.target_test + 1e-15


def calibrate_point(
    calibrator: CascadeCalibrator, test: OutcomeSet, mode: Mode, knob: float, z: float = 1.0,
    resamples: int = 1000, seed: int = 0, _cache: dict[str, HeldOut] | None = None,
) -> CalibrationResult:
    """Fit on train for τ = ``knob`` (quality mode) or budget = ``knob`` USD/request (cost mode); run on test."""
    con = calibrator.constraint_quality(knob, z) if mode == "quality" else calibrator.constraint_cost(knob, z)
    cal = calibrator.fit(con)
    key = repr(cal.tier())
    held = _cache.get(key) if _cache is not None else None
    if held is None:
        held = held_out(test, cal.tier(), resamples, seed)
        check_engine_agrees(test, cal, held.results)
        if _cache is not None:
            _cache[key] = held
    target_test = knob * test.mean_quality(calibrator.ref_model) if mode == "quality" else knob
    return CalibrationResult(cal, held, knob, mode, calibrator.ref_model, con.value, target_test)


def calibrated_curve(
    calibrator: CascadeCalibrator, test: OutcomeSet, taus: Sequence[float] = DEFAULT_TAUS, z: float = 1.0,
    resamples: int = 1000, progress: Any = None,
) -> list[CalibrationResult]:
    """Calibrate for each τ on train and run each on test: an honest (train-fitted) cost–quality curve."""
    cache: dict[str, HeldOut] = {}
    out = []
    for i, tau in enumerate(taus):
        out.append(calibrate_point(calibrator, test, "quality", float(tau), z, resamples, _cache=cache))
        if progress is not None:
            progress(i + 1, len(taus))
    return out
