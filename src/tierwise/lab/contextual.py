"""Train contextual cascade gates (:mod:`tierwise.routing.gates.contextual`) and calibrate them, train split only.

Procedure (every step on the train split; nothing reads the test split):

1. **Router priors, cross-fitted.** A learned router (``ensemble`` by default, :mod:`tierwise.routing.learned`) is
   trained on the train prompts; the priors used as gate *training* features are its out-of-fold predictions (the
   fold model that produced a prompt's prior never saw that prompt), so the gate learns how much to trust a prior
   on unseen prompts. Test/serving priors come from the router fitted on all train prompts.
2. **Gate per (chain, rung)**, for every ordered sub-chain of the priced models (cheap → dear) whose gated rungs
   have a recorded confidence or samples: features as the engine computes them on replayed answers
   (:func:`replay_answer` mirrors :class:`tierwise.lab.replay.ReplayProvider`), target = "serving here loses
   nothing": 1 − max(0, q_top − q_rung) (what a threshold decision needs: a weak answer that is wrong where the top
   rung is wrong too costs nothing to serve), L2-regularised logistic regression on standardised features. Rungs
   after the first are trained on two views of every prompt: with the earlier rungs' answers, and as the first rung
   run (for start routers). The penalty is chosen per gate from
   :data:`L2_GRID` by 5-fold CV log-loss on train (one global grid, no per-dataset tuning); the same folds give
   out-of-fold gate predictions for every train prompt.
3. **Thresholds, sub-chain and start router** by :class:`tierwise.lab.calibrate.CascadeCalibrator`'s search, run
   on the out-of-fold gate confidences (reaching rung i means every earlier rung answered, so rung i's confidence is
   a fixed function of the prompt: the (n, k) matrix form the search needs holds). A start router (the same learned
   router, rule "threshold") may skip the first rungs: its knob is searched over 0 (none) and the
   :data:`START_QUANTILES` of rung 0's out-of-fold prior, each (sub-chain, knob) one candidate of the search, with
   skipped rungs costing nothing and never passing.

Held-out numbers go through the engine (:func:`run_contextual`) with the router's priors fed by the replay
``predictors`` override from cached embeddings; :func:`held_out_data` gives the simulator's view of the same test
split, computed by the runtime's own feature and scoring functions so the two agree exactly.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from tierwise.lab.calibrate import (
    CV_FOLDS,
    Calibrated,
    CascadeCalibrator,
    ChainSearch,
    Constraint,
    _has_conf,
    cost_ordered,
    sub_chains,
)
from tierwise.lab.cascade_sim import CascadeData, simulate, vote_samples
from tierwise.lab.datasets.format import ModelOutcome, OutcomeSet
from tierwise.lab.evaluate import PromptResult, inline, run_tier
from tierwise.lab.metrics import compute_baselines
from tierwise.routing.gates.base import RungAnswer
from tierwise.routing.gates.contextual import (
    ARTIFACT_KIND,
    ARTIFACT_VERSION,
    FEATURES,
    extract_answer,
    features,
    lp_confidence,
    score,
)
from tierwise.routing.gates.vote import agreement
from tierwise.routing.learned.artifact import LearnedRouter, save_router
from tierwise.routing.learned.choose import choose_threshold
from tierwise.routing.learned.ensemble import EnsemblePredictor
from tierwise.routing.learned.knn import KNNPredictor
from tierwise.routing.learned.logistic import LogisticPredictor
from tierwise.routing.learned.numerics import fit_logistic, kfold_indices, sigmoid

L2_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)  # penalty on standardised features; chosen per gate by train CV log-loss
FOLDS = 5
_NEEDS = {"conf": "logprobs", "conf_logit": "logprobs", "vote_share": "samples", "prior": "prior", "prior_gap": "prior"}


# ------------------------------------------------------------------------------------- replayed answers


@dataclass(frozen=True)
class Answer:
    """What the engine sees of one model's recorded answer in replay, after its gate asked for ``samples``."""

    text: str
    confidence: float | None  # exp(mean log-prob) of the replayed logprobs
    share: float | None  # majority share of the samples (None when one answer was asked for)


def replay_answer(out: ModelOutcome, samples: int = 1, extract: str = "text") -> Answer:
    """Mirror of :class:`~tierwise.lab.replay.ReplayProvider` + the contextual gate's sample handling."""
    conf = None
    if out.confidence is not None and not math.isnan(out.confidence):
        conf = lp_confidence([math.log(max(out.confidence, 1e-12))])
    if samples > 1 and out.samples:
        texts = list(out.samples[:samples])
        answers = [extract_answer(t, extract) for t in texts]
        share, majority = agreement(answers)
        idx = answers.index(majority) if majority is not None and majority in answers else 0
        return Answer(texts[idx], conf, share)
    return Answer(out.answer if out.answer and out.answer.strip() else "<recorded answer>", conf, None)


def rung_inputs(oset: OutcomeSet, model: str) -> tuple[str, ...]:
    """The gate inputs recorded for ``model`` on every prompt of ``oset`` (logprobs, samples)."""
    have = []
    if all(_has_conf(p.models[model].confidence) for p in oset.prompts):
        have.append("logprobs")
    if vote_samples(oset, model) >= 2:
        have.append("samples")
    return tuple(have)


SKIPPED = -1.0  # confidence of a rung the start router skipped: below every threshold, and it costs nothing


def chain_features(oset: OutcomeSet, chain: Sequence[str], priors: np.ndarray | None, pool: Sequence[str],
                   inputs: dict[str, tuple[str, ...]], start: np.ndarray | None = None
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per gated rung: (features (n, |FEATURES|), served-text-is-empty mask), exactly as the engine computes them.

    ``priors``: (n, len(pool)) router predictions for ``oset``'s prompts (None: no router). ``start``: per prompt the
    rung a start router begins at (history then holds only the rungs run); rows of skipped rungs are left 0."""
    cols = {m: pool.index(m) for m in chain}
    k = len(chain) - 1
    X = [np.zeros((len(oset.prompts), len(FEATURES))) for _ in range(k)]
    empty = [np.zeros(len(oset.prompts), dtype=bool) for _ in range(k)]
    for i, p in enumerate(oset.prompts):
        prior = None if priors is None else {m: float(priors[i, cols[m]]) for m in chain}
        history: list[RungAnswer] = []
        for j in range(0 if start is None else int(start[i]), k):
            m = chain[j]
            a = replay_answer(p.models[m], vote_samples(oset, m) if "samples" in inputs[m] else 1)
            X[j][i] = features(j, chain, a.text, a.confidence, a.share, prior, history)
            empty[j][i] = not a.text.strip()
            history.append(RungAnswer(m, a.text, a.confidence))
    return list(zip(X, empty, strict=True))


# ------------------------------------------------------------------------------------------- gate fitting


def used_features(rung: int, model_inputs: Sequence[str], with_prior: bool) -> list[str]:
    """The features a rung's gate is trained on: those whose inputs exist; agreement only after rung 0."""
    have = set(model_inputs) | ({"prior"} if with_prior else set())
    out = []
    for f in FEATURES:
        if f in _NEEDS and _NEEDS[f] not in have:
            continue
        if rung == 0 and f in ("agree_prev", "agree_frac", "prev_conf_agree", "has_history"):
            continue
        out.append(f)
    return out


def _fit(X: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """Logistic fit on standardised columns (last column = bias); returns weights on the *raw* columns."""
    mu, sd = X[:, :-1].mean(axis=0), X[:, :-1].std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    Z = np.hstack([(X[:, :-1] - mu) / sd, np.ones((len(X), 1))])
    w = fit_logistic(Z, y, l2)
    raw = w[:-1] / sd
    return np.concatenate([raw, [w[-1] - float(raw @ mu)]])


@dataclass
class GateFit:
    features: list[str]
    weights: np.ndarray  # fitted on every train prompt (what the artifact serves)
    l2: float
    fold_weights: list[tuple[np.ndarray, np.ndarray]]  # (held-out prompt indices, weights fitted without them)
    cv_logloss: list[float]

    def oof(self, X: np.ndarray) -> np.ndarray:
        """Out-of-fold P(no loss) for train feature rows ``X`` (n, |FEATURES|), row i = prompt i."""
        cols = [FEATURES.index(f) for f in self.features]
        out = np.zeros(len(X))
        for ho, w in self.fold_weights:
            out[ho] = sigmoid(X[np.ix_(ho, np.asarray(cols, dtype=int))] @ w)
        return out


def fit_gate(Xs: Sequence[np.ndarray], y: np.ndarray, names: Sequence[str], folds: int = FOLDS, seed: int = 0
             ) -> GateFit:
    """One gate from several views of the same n prompts (with and without history); folds split prompts, the
    penalty is chosen by ``folds``-fold CV log-loss over :data:`L2_GRID` (ties → stronger)."""
    cols = [FEATURES.index(f) for f in names]
    views = [X[:, cols] for X in Xs]
    n = len(y)
    split = kfold_indices(n, folds, seed)
    loss = np.zeros(len(L2_GRID))
    per_fold: list[list[np.ndarray]] = []
    for tr, ho in split:
        Xtr, ytr = np.vstack([v[tr] for v in views]), np.tile(y[tr], len(views))
        ws = [_fit(Xtr, ytr, l2) for l2 in L2_GRID]
        per_fold.append(ws)
        for g, w in enumerate(ws):
            p = np.clip(sigmoid(np.vstack([v[ho] for v in views]) @ w), 1e-6, 1 - 1e-6)
            yy = np.tile(y[ho], len(views))
            loss[g] -= float((yy * np.log(p) + (1 - yy) * np.log(1 - p)).sum())
    loss /= n * len(views)
    best = min(range(len(L2_GRID)), key=lambda g: (round(float(loss[g]), 9), -L2_GRID[g]))
    full = _fit(np.vstack(views), np.tile(y, len(views)), L2_GRID[best])
    return GateFit(list(names), full, L2_GRID[best], [(ho, ws[best]) for (_, ho), ws in zip(split, per_fold,
                                                                                               strict=True)],
                   [float(v) for v in loss])


def exact_scores(fit_spec: dict[str, Any], X: np.ndarray, empty: np.ndarray, skipped: np.ndarray) -> np.ndarray:
    """The runtime's confidence per prompt (its own :func:`score`; 0 where the served text is empty)."""
    return np.array([SKIPPED if s else 0.0 if e else score(fit_spec, x.tolist())
                     for x, e, s in zip(X, empty, skipped, strict=True)])


# ------------------------------------------------------------------------------------------- artifacts


def subset_router(router: LearnedRouter, models: Sequence[str]) -> LearnedRouter:
    """The same router restricted to ``models`` (its columns), for a cascade whose rungs are those models.

    Every predictor kind scores models independently (kNN shares k and neighbours), so the columns are unchanged."""
    idx = [router.models.index(m) for m in models]

    def cut(pr: Any) -> Any:
        if isinstance(pr, KNNPredictor):
            return KNNPredictor(pr.embeddings, pr.quality[:, idx], pr.k, pr.cv)
        if isinstance(pr, LogisticPredictor):
            return LogisticPredictor(pr.standardiser, pr.weights[:, idx], [pr.l2[i] for i in idx], pr.cv)
        if isinstance(pr, EnsemblePredictor):
            return EnsemblePredictor(cut(pr.knn), cut(pr.logreg), pr.alpha[idx], pr.cv)
        raise TypeError(f"cannot restrict a {type(pr).__name__} router")

    return replace(router, models=list(models), mean_cost=router.mean_cost[idx], predictor=cut(router.predictor),
                   header={**router.header, "restricted_from": list(router.models)})


def chain_key(chain: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(chain).encode("utf-8")).hexdigest()[:12]


def write_artifact(path: Path, chain: Sequence[str], fits: Sequence[GateFit], inputs: Sequence[Sequence[str]],
                   training: dict[str, Any]) -> Path:
    rungs = [{"model": m, "features": f.features, "weights": [float(w) for w in f.weights],
              "requires": sorted({_NEEDS[n] for n in f.features if n in _NEEDS}), "inputs_recorded": list(inp),
              "l2": f.l2, "l2_grid": list(L2_GRID), "cv_logloss": f.cv_logloss}
             for m, f, inp in zip(chain[:-1], fits, inputs, strict=True)]
    art = {"kind": ARTIFACT_KIND, "version": ARTIFACT_VERSION, "chain": list(chain), "rungs": rungs,
           "training": training}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(art, option=orjson.OPT_INDENT_2))
    return path


# ------------------------------------------------------------------------------------------- the whole fit


START_QUANTILES = (0.1, 0.25, 0.5)  # start-router knobs: these quantiles of rung 0's train prior (+ 0 = no router)


class StartAwareSearch(ChainSearch):
    """:class:`ChainSearch` over a matrix where some rungs are skipped (confidence :data:`SKIPPED`, cost 0): a
    negative threshold would "pass" a skipped rung, so candidates are the non-negative confidences only."""

    def __post_init__(self) -> None:
        from tierwise.lab import calibrate as _cal

        self.F = _cal.served_features(self.data, self.ref)
        self.cands = [c[c >= 0] for c in _cal.threshold_candidates(self.data)]
        self.c_ref = max(float(self.data.cost[:, -1].mean()), 1e-300)
        if len(self.data.chain) > 1:
            self._sweep()


class ContextualCalibrator(CascadeCalibrator):
    """The calibrator's search over (sub-chain × start-router knob), on out-of-fold contextual confidences."""

    def __init__(self, train: OutcomeSet, datas: Sequence[CascadeData], starts: Sequence[float], ref_model: str,
                 cv_folds: int = CV_FOLDS) -> None:
        self.train = train
        self.gate = "contextual"
        self.ref_model = ref_model
        self.ref = train.quality_matrix([ref_model])[:, 0]
        self.searches = [StartAwareSearch(d, self.ref) for d in datas]
        self.starts = list(starts)
        self.cv_folds = cv_folds
        self._folds = None

    def fit_start(self, con: Constraint, guard: bool = True) -> tuple[Calibrated, float]:
        """Cheapest feasible (chain, start knob, thresholds) on train (when none is, as :meth:`pick` says);
        ``guard`` as in :meth:`CascadeCalibrator.fit`."""
        if guard:
            con = self.guarded(con)
        i, thr, _, ok = self.pick(con)
        srch = self.searches[i]
        c, q = simulate(srch.data, thr).means()
        return Calibrated(list(srch.data.chain), self.gate, [float(t) for t in thr], list(srch.data.gate_params), c,
                          q, ok, guard=con.offset), self.starts[i]

    def fit(self, con: Constraint, guard: bool = True) -> Calibrated:
        return self.fit_start(con, guard)[0]

    def restricted(self, pool: Sequence[str]) -> ContextualCalibrator:
        """The same calibrator searching only the sub-chains made of ``pool``'s models (with their start knobs)."""
        out = copy.copy(self)
        keep = [i for i, s in enumerate(self.searches) if set(s.data.chain) <= set(pool)]
        out.searches, out.starts = [self.searches[i] for i in keep], [self.starts[i] for i in keep]
        if self._folds is not None:
            out._folds = [(tr, ho, [fs[i] for i in keep]) for tr, ho, fs in self._folds]
        return out


@dataclass
class ContextualModel:
    """Everything fitted on train: per chain the router, artifact, gate specs and rung parameters."""

    pool: list[str]
    router: LearnedRouter | None
    router_paths: dict[tuple[str, ...], Path]
    specs: dict[tuple[str, ...], list[dict[str, Any]]]
    params: dict[tuple[str, ...], list[dict[str, Any]]]
    inputs: dict[str, tuple[str, ...]]
    calibrator: ContextualCalibrator

    def tier(self, cal: Calibrated, start_knob: float = 0.0) -> dict[str, Any]:
        """The tier spec of a calibrated point: its cascade, the router for priors, and the start router (knob > 0)."""
        t = cal.tier()
        if "cascade" in t and self.router is not None:
            path = str(self.router_paths[tuple(cal.chain)])
            if start_knob > 0:
                t["cascade"]["start"] = {"artifact": path, "rule": "threshold", "knob": float(start_knob)}
            else:
                t["cascade"]["router"] = path
        return t

    def starts_for(self, chain: Sequence[str], knob: float, priors: np.ndarray | None) -> np.ndarray | None:
        """Per prompt, the rung the start router begins at (None: no start router)."""
        if knob <= 0 or priors is None or self.router is None:
            return None
        cols = [self.pool.index(m) for m in chain]
        return choose_threshold(priors[:, cols], self.router.mean_cost[cols], knob)


def _confidences(fits: Sequence[GateFit] | None, specs: Sequence[dict[str, Any]] | None,
                 rows: Sequence[tuple[np.ndarray, np.ndarray]], start: np.ndarray | None, n: int, k: int
                 ) -> np.ndarray:
    """(n, k) gate confidences: out-of-fold (``fits``, train) or exactly as served (``specs``, test)."""
    conf = np.zeros((n, k))
    s = np.zeros(n, dtype=int) if start is None else start
    for j, (X, empty) in enumerate(rows):
        skipped = s > j
        if fits is not None:
            conf[:, j] = np.where(skipped, SKIPPED, np.where(empty, 0.0, fits[j].oof(X)))
        else:
            assert specs is not None
            conf[:, j] = exact_scores(specs[j], X, empty, skipped)
    return conf


def _skip_costs(C: np.ndarray, start: np.ndarray | None) -> np.ndarray:
    if start is None:
        return C
    return np.where(np.arange(C.shape[1])[None, :] < start[:, None], 0.0, C)


def fit_contextual(
    train: OutcomeSet, out_dir: Path, *, router: LearnedRouter | None = None, router_oof: np.ndarray | None = None,
    max_rungs: int = 5, seed: int = 0, start_router: bool = True, progress: Any = None,
) -> ContextualModel:
    """Fit gates for every eligible sub-chain, then the calibrator over (sub-chain × start knob) on train."""
    pool = cost_ordered(train, train.priced_models())
    inputs = {m: rung_inputs(train, m) for m in pool}
    if router is not None:
        assert router_oof is not None
        router_oof = router_oof[:, [router.models.index(m) for m in pool]]
        router = subset_router(router, pool)
    gated = {m for m in pool if inputs[m]}
    if not gated:
        raise ValueError(f"{train.name}: no model has a log-prob confidence or samples: no cascade gate to fit")
    base = compute_baselines(train.quality_matrix(pool), train.cost_matrix(pool), pool)
    ids_sha = hashlib.sha1("\n".join(train.ids()).encode("utf-8")).hexdigest()
    training = {"set": train.name, "split": "train", "n_prompts": len(train), "ids_sha1": ids_sha,
                "target": "1 - max(0, q_last - q_rung)", "router_priors": "out-of-fold" if router else None,
                "folds": FOLDS, "seed": seed}
    specs: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    params: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    rpaths: dict[tuple[str, ...], Path] = {}
    datas: list[CascadeData] = []
    starts: list[float] = []
    Q, C, n = train.quality_matrix(pool), train.cost_matrix(pool), len(train)
    model = ContextualModel(pool, router, rpaths, specs, params, inputs, None)  # type: ignore[arg-type]
    chains = sub_chains(pool, gated, max_rungs)
    for done, chain in enumerate(chains):
        if progress is not None:
            progress(done, len(chains))
        key, cols = tuple(chain), [pool.index(m) for m in chain]
        full = chain_features(train, chain, router_oof, pool, inputs) if len(chain) > 1 else []
        fits = []
        for j, (X, _) in enumerate(full):
            views = [X] + ([chain_features(train, chain, router_oof, pool, inputs, np.full(n, j))[j][0]] if j else [])
            y = 1.0 - np.maximum(0.0, Q[:, cols[-1]] - Q[:, cols[j]])  # serving here loses nothing vs the top rung
            fits.append(fit_gate(views, y, used_features(j, inputs[chain[j]], router is not None), seed=seed))
        specs[key] = [{"features": f.features, "weights": f.weights.tolist()} for f in fits]
        path = out_dir / f"gate-{chain_key(chain)}.json"
        params[key] = [{"artifact": str(path), **({"samples": vote_samples(train, m), "extract": "text"}
                                                  if "samples" in inputs[m] else {})} for m in chain[:-1]]
        if len(chain) > 1:
            write_artifact(path, chain, fits, [inputs[m] for m in chain[:-1]], training)
            if router is not None:
                rpaths[key] = save_router(subset_router(router, chain), out_dir / f"router-{chain_key(chain)}.npz")
        knobs = [0.0]
        if start_router and router_oof is not None and len(chain) > 1:
            knobs += sorted({float(np.quantile(router_oof[:, cols[0]], q)) for q in START_QUANTILES} - {0.0})
        for knob in knobs:
            st = model.starts_for(chain, knob, router_oof)
            rows = full if st is None else chain_features(train, chain, router_oof, pool, inputs, st)
            conf = _confidences(fits, None, rows, st, n, len(chain))
            datas.append(CascadeData(key, "contextual", tuple(params[key]), conf, Q[:, cols],
                                     _skip_costs(C[:, cols], st), tuple(train.ids())))
            starts.append(knob)
    model.calibrator = ContextualCalibrator(train, datas, starts, base.best)
    if progress is not None:
        progress(len(chains), len(chains))
    return model


def held_out_data(model: ContextualModel, test: OutcomeSet, chain: Sequence[str], priors: np.ndarray | None,
              start_knob: float = 0.0) -> CascadeData:
    """The simulator's view of ``chain`` on ``test`` (priors: (n, len(pool)) from the router fitted on all train)."""
    key, cols = tuple(chain), [model.pool.index(m) for m in chain]
    st = model.starts_for(chain, start_knob, priors)
    rows = chain_features(test, chain, priors, model.pool, model.inputs, st) if len(chain) > 1 else []
    conf = _confidences(None, model.specs[key], rows, st, len(test), len(chain))
    return CascadeData(key, "contextual", tuple(model.params[key]), conf, test.quality_matrix(model.pool)[:, cols],
                       _skip_costs(test.cost_matrix(model.pool)[:, cols], st), tuple(test.ids()))


def prior_predictor(test: OutcomeSet, priors: np.ndarray, pool: Sequence[str], chain: Sequence[str]) -> Any:
    """Replay ``predictors`` function: the replayed prompt text → the chain's precomputed priors for that prompt."""
    cols = [list(pool).index(m) for m in chain]
    by_text = {(p.prompt or p.id).strip(): [float(v) for v in priors[i, cols]] for i, p in enumerate(test.prompts)}
    return inline(lambda text: by_text[text.strip()])  # the service hands over prompt_text(): the last user message


def run_contextual(model: ContextualModel, test: OutcomeSet, cal: Calibrated, priors: np.ndarray | None,
                   start_knob: float = 0.0) -> list[PromptResult]:
    """Run a calibrated point on ``test`` through the engine (priors fed from precomputed router predictions)."""
    tier = model.tier(cal, start_knob)
    kwargs: dict[str, Any] = {}
    if "cascade" in tier and _uses_router(tier):
        assert priors is not None
        kwargs["predictors"] = {"eval": prior_predictor(test, priors, model.pool, cal.chain)}
    return run_tier(test, tier, **kwargs)


def _uses_router(tier: dict[str, Any]) -> bool:
    c = tier["cascade"]
    return bool(c.get("router") or c.get("start"))
