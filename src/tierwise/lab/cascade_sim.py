"""Vectorised simulation of a cascade over recorded outcomes — for the threshold *search* only.

Calibration evaluates hundreds of thousands of threshold vectors; the engine (``run_tier``) costs ~0.1–0.5 ms per
prompt, so the search runs on matrices instead. Every number that is *reported* still goes through the engine; this
module's one promise is that it gives exactly the engine's outcome (served rung, models called, quality, cost), which
``tests/test_lab_calibrate_sim.py`` checks against ``run_tier`` on real sets.

Semantics (``tierwise.routing.cascade.run_cascade``): rung i serves when its gate confidence ≥ threshold_i, else the
request escalates; the last rung always serves; cost = sum of the costs of every rung called.

Confidences are computed the way the engine's gates see the replayed answers (:func:`gate_confidences`), not read raw
from the set: the replay driver turns ``confidence`` into ``logprobs=[log c]`` and the log-prob gate takes exp of
the mean, which can differ from ``c`` in the last bit; the vote gate re-extracts and re-counts the samples.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tierwise.lab.datasets.format import ModelOutcome, OutcomeSet
from tierwise.routing.gates.base import CLEAR_SLACK
from tierwise.routing.gates.logprob import mean_logprob_confidence
from tierwise.routing.gates.vote import agreement, extract_answer

GATES = ("logprob", "vote")


@dataclass(frozen=True)
class CascadeData:
    """Per-prompt matrices of one chain (columns = rungs, cheap → strong) on one split."""

    chain: tuple[str, ...]
    gate: str
    gate_params: tuple[dict[str, Any], ...]  # per gated rung (len(chain) - 1)
    confidence: np.ndarray  # (n, k); last column unused
    quality: np.ndarray  # (n, k)
    cost: np.ndarray  # (n, k)
    ids: tuple[str, ...]

    @property
    def n(self) -> int:
        return self.quality.shape[0]

    def sub(self, rungs: Sequence[int]) -> CascadeData:
        """The sub-chain made of the listed rung indices (in that order)."""
        r = list(rungs)
        return CascadeData(
            tuple(self.chain[i] for i in r),
            self.gate,
            tuple(self.gate_params[i] for i in r[:-1]),
            self.confidence[:, r],
            self.quality[:, r],
            self.cost[:, r],
            self.ids,
        )

    def rows(self, idx: np.ndarray) -> CascadeData:
        """The same chain on a subset of prompts (for cross-validation)."""
        return CascadeData(
            self.chain, self.gate, self.gate_params, self.confidence[idx], self.quality[idx], self.cost[idx],
            tuple(self.ids[i] for i in idx),
        )


def vote_samples(oset: OutcomeSet, model: str) -> int:
    """How many recorded samples every prompt of ``oset`` has for ``model`` (0 when some prompt has none)."""
    counts = [len(p.models[model].samples or []) for p in oset.prompts]
    return min(counts) if counts else 0


def default_gate_params(oset: OutcomeSet, model: str, gate: str) -> dict[str, Any]:
    """Gate parameters that make the replayed gate read the set's recorded signal for ``model``.

    vote: all recorded samples (``samples=k``) compared as normalised text (``extract="text"``), because the sets
    store already-extracted final answers.
    """
    if gate == "logprob":
        return {}
    if gate == "vote":
        k = vote_samples(oset, model)
        if k < 2:
            raise ValueError(f"vote gate: model {model!r} has {k} recorded samples on some prompt of {oset.name}; need 2+")
        return {"samples": k, "extract": "text"}
    raise ValueError(f"unknown gate {gate!r}; choose one of {GATES}")


def _logprob_conf(out: ModelOutcome) -> float:
    c = out.confidence
    if c is None or math.isnan(c):
        return 0.0  # no logprobs → GateError → escalate
    return min(1.0, max(0.0, mean_logprob_confidence([math.log(max(c, 1e-12))])))


def _vote_conf(out: ModelOutcome, params: dict[str, Any]) -> float:
    n = int(params.get("samples", 5))
    texts = list(out.samples[:n]) if n > 1 and out.samples else [out.answer or ""]  # empty sample = lost vote
    if len(texts) < 2:
        return 0.0
    share, _ = agreement([extract_answer(t, str(params.get("extract", "auto"))) for t in texts])
    return min(1.0, max(0.0, share))


def gate_confidences(oset: OutcomeSet, chain: Sequence[str], gate: str, params: Sequence[dict[str, Any]]) -> np.ndarray:
    """(n, k) confidence each rung's gate would report in replay (last column 0: the last rung has no gate)."""
    conf = np.zeros((len(oset.prompts), len(chain)))
    for j, (m, prm) in enumerate(zip(chain[:-1], params, strict=True)):
        fn = _logprob_conf if gate == "logprob" else (lambda o, prm=prm: _vote_conf(o, prm))
        conf[:, j] = [fn(p.models[m]) for p in oset.prompts]
    return conf


def cascade_data(
    oset: OutcomeSet, chain: Sequence[str], gate: str, params: Sequence[dict[str, Any]] | None = None
) -> CascadeData:
    """Matrices of ``chain`` on ``oset`` (one split), with the gate confidences the engine would compute."""
    chain = list(chain)
    if params is None:
        params = [default_gate_params(oset, m, gate) for m in chain[:-1]]
    cost = oset.cost_matrix(chain)
    if np.isnan(cost).any():
        raise ValueError(f"chain {chain} has models without a recorded cost on {oset.name}")
    return CascadeData(
        tuple(chain), gate, tuple(params), gate_confidences(oset, chain, gate, params),
        oset.quality_matrix(chain), cost, tuple(oset.ids()),
    )


@dataclass(frozen=True)
class SimResult:
    served: np.ndarray  # (n,) rung index served
    cost: np.ndarray  # (n,) USD, all rungs called
    quality: np.ndarray  # (n,)

    def means(self) -> tuple[float, float]:
        return float(self.cost.mean()), float(self.quality.mean())


def served_rungs(confidence: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """First rung whose confidence clears its threshold; the last rung when none does."""
    k = confidence.shape[1]
    if k == 1:
        return np.zeros(confidence.shape[0], dtype=int)
    passes = confidence[:, :-1] >= np.asarray(thresholds, dtype=float)[None, :] - CLEAR_SLACK
    return np.where(passes.any(axis=1), passes.argmax(axis=1), k - 1)


def simulate(data: CascadeData, thresholds: Sequence[float] | np.ndarray) -> SimResult:
    """Per-prompt outcome of the cascade with ``thresholds`` (one per rung but the last)."""
    thr = np.asarray(thresholds, dtype=float)
    if thr.shape != (len(data.chain) - 1,):
        raise ValueError(f"a {len(data.chain)}-rung cascade needs {len(data.chain) - 1} thresholds, got {thr.shape}")
    served = served_rungs(data.confidence, thr)
    rows = np.arange(data.n)
    return SimResult(served, np.cumsum(data.cost, axis=1)[rows, served], data.quality[rows, served])


def simulate_many(data: CascadeData, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (cost, quality) for each row of ``thresholds`` (t, k-1): the grid-search workhorse."""
    thr = np.atleast_2d(np.asarray(thresholds, dtype=float))
    cum = np.cumsum(data.cost, axis=1)
    costs, quals = np.empty(len(thr)), np.empty(len(thr))
    for i in range(0, len(thr), 256):  # chunks keep the (chunk, n, k) boolean tensor small
        t = thr[i : i + 256]
        k = data.confidence.shape[1]
        if k == 1:
            served = np.zeros((len(t), data.n), dtype=int)
        else:
            passes = data.confidence[None, :, :-1] >= t[:, None, :] - CLEAR_SLACK
            served = np.where(passes.any(axis=2), passes.argmax(axis=2), k - 1)
        costs[i : i + len(t)] = np.take_along_axis(cum[None].repeat(len(t), 0), served[..., None], 2)[..., 0].mean(1)
        quals[i : i + len(t)] = np.take_along_axis(
            data.quality[None].repeat(len(t), 0), served[..., None], 2
        )[..., 0].mean(1)
    return costs, quals


def tier_spec(chain: Sequence[str], gate: str, thresholds: Sequence[float], params: Sequence[dict[str, Any]]) -> dict:
    """The tier configuration (``policy: cascade``) of a calibrated chain, with per-rung gate parameters."""
    chain = list(chain)
    if len(chain) == 1:
        return {"models": chain, "policy": "priority"}
    rungs: list[dict[str, Any]] = [
        {"model": m, "gate": {"kind": gate, "threshold": float(t), **prm}}
        for m, t, prm in zip(chain[:-1], thresholds, params, strict=True)
    ]
    rungs.append({"model": chain[-1]})
    return {"policy": "cascade", "cascade": {"rungs": rungs}}


# --------------------------------------------------------------------------------------- grid-search baseline


def grid_points(data: CascadeData, how: Literal["shared", "coarse"], levels: int = 6) -> np.ndarray:
    """Threshold vectors of plain grid search: one quantile level shared by every rung (101 levels), or every
    combination of ``levels`` per-rung quantiles (``levels ** (k-1)`` vectors).

    Per-rung quantiles are taken over the prompts the rung actually judged: a rung a start router skipped carries a
    negative confidence (``tierwise.lab.contextual.SKIPPED``), and a threshold drawn from those would "pass" it."""
    conf = data.confidence[:, :-1]
    if conf.shape[1] == 0:
        return np.zeros((1, 0))
    if how == "shared":
        return np.quantile(conf, np.linspace(0, 1, 101), axis=0, method="inverted_cdf")
    per = []
    for j in range(conf.shape[1]):
        judged = conf[:, j][conf[:, j] >= 0]
        per.append(np.unique(np.quantile(judged, np.linspace(0, 1, levels), method="inverted_cdf")) if judged.size
                   else np.array([0.0]))
    return np.array(list(itertools.product(*per)))


def grid_fit(
    data: CascadeData, grid: np.ndarray, slack: Callable[[np.ndarray, np.ndarray], float], minimise: str = "cost"
) -> tuple[np.ndarray, bool]:
    """The grid point with the lowest train cost (or highest quality) whose ``slack(cost, quality) >= 0``; when none
    is feasible, the one closest to feasibility."""
    sims = [simulate(data, t) for t in grid]
    slacks = np.array([slack(s.cost, s.quality) for s in sims])
    ok = np.flatnonzero(slacks >= 0)
    if ok.size == 0:
        return grid[int(np.argmax(slacks))], False
    key = [sims[i].cost.mean() if minimise == "cost" else -sims[i].quality.mean() for i in ok]
    return grid[int(ok[int(np.argmin(key))])], True
