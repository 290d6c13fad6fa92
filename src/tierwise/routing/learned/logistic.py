"""Per-model success predictors: one L2-regularised logistic regression per model on the prompt embedding.

Why this over kNN: kNN averages a handful of neighbours' outcomes, so its predictions are noisy where training
prompts are sparse and it cannot use directions of the embedding that matter for one model but not for nearness in
general. A linear probe uses every training prompt for every prediction and its regularisation strength is a
continuous knob, so with a few hundred prompts it is both smoother and better calibrated (measured in
``bench/results/learned_routers.md``).

Features: the embedding, centred on the training mean and scaled to unit average variance, plus a bias. Each model's
penalty is chosen on the training split by k-fold CV (lowest out-of-fold Brier score) from :data:`L2_GRID`, fitted
along a warm-started path from strong to weak regularisation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tierwise.routing.learned.numerics import LogisticBatch, add_bias, fit_logistic, kfold_indices, sigmoid

L2_GRID = (30000.0, 10000.0, 3000.0, 1000.0, 300.0, 100.0, 30.0, 10.0, 3.0, 1.0)  # strong → weak: the warm-start order


@dataclass
class Standardiser:
    mean: np.ndarray
    scale: float

    @classmethod
    def fit(cls, E: np.ndarray) -> Standardiser:
        mean = E.mean(axis=0)
        scale = float(np.sqrt(((E - mean) ** 2).sum(axis=1).mean() / E.shape[1])) or 1.0
        return cls(mean, scale)

    def __call__(self, E: np.ndarray) -> np.ndarray:
        return add_bias((np.asarray(E, dtype=float) - self.mean) / self.scale)


def logistic_path(X: np.ndarray, y: np.ndarray, grid: tuple[float, ...]) -> list[np.ndarray]:
    """Weights for each penalty in ``grid`` (strong → weak), each warm-started from the previous one."""
    out: list[np.ndarray] = []
    w = None
    for l2 in grid:
        w = fit_logistic(X, y, l2, w0=w)
        out.append(w)
    return out


@dataclass
class LogisticPredictor:
    """Fitted per-model logistic probes."""

    standardiser: Standardiser
    weights: np.ndarray  # (dim + 1, m)
    l2: list[float]
    cv: dict[str, Any] = field(default_factory=dict)
    oof: np.ndarray | None = field(default=None, repr=False)  # out-of-fold train predictions at the chosen penalties

    kind = "logreg"

    def predict(self, E: np.ndarray) -> np.ndarray:
        return sigmoid(self.standardiser(E) @ self.weights)

    def params(self) -> dict[str, Any]:
        return {"l2": self.l2, "l2_grid": list(L2_GRID), "features": "standardised embedding + bias"}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.standardiser.mean, "scale": np.array([self.standardiser.scale]), "weights": self.weights}

    @classmethod
    def from_saved(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> LogisticPredictor:
        std = Standardiser(np.asarray(arrays["mean"], dtype=float), float(arrays["scale"][0]))
        return cls(std, np.asarray(arrays["weights"], dtype=float), [float(v) for v in params["l2"]])


def logistic_path_many(X: np.ndarray, Y: np.ndarray, grid: tuple[float, ...]) -> list[np.ndarray]:
    """:func:`logistic_path` for every column of ``Y`` at once: (d, m) weights per penalty (see
    :class:`~tierwise.routing.learned.numerics.LogisticBatch`: one Hessian-free solve for all models)."""
    batch = LogisticBatch(X)
    out: list[np.ndarray] = []
    W = None
    for l2 in grid:
        W = batch.fit(Y, l2, W)
        out.append(W)
    return out


def logistic_oof(E: np.ndarray, Q: np.ndarray, grid: tuple[float, ...], folds: int, seed: int,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Out-of-fold predictions (len(grid), n, m) for every penalty (the standardiser is refit inside each fold)."""
    out = np.zeros((len(grid), *Q.shape))
    split = kfold_indices(len(E), folds, seed)
    for f, (tr, ho) in enumerate(split):
        std = Standardiser.fit(E[tr])
        Xtr, Xho = std(E[tr]), std(E[ho])
        for g, W in enumerate(logistic_path_many(Xtr, Q[tr], grid)):
            out[g, ho, :] = sigmoid(Xho @ W)
        if progress is not None:
            progress(f + 1, len(split) + 1)
    return out


def fit_logistic_router(
    E: np.ndarray, Q: np.ndarray, *, folds: int = 5, seed: int = 0, l2: list[float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LogisticPredictor:
    """Fit one probe per model; ``l2`` None chooses each model's penalty by CV Brier (ties to the stronger)."""
    E = np.asarray(E, dtype=float)
    Q = np.asarray(Q, dtype=float)
    cv: dict[str, Any] = {}
    grid = L2_GRID if l2 is None else tuple(sorted(set(l2), reverse=True))
    oof = logistic_oof(E, Q, grid, folds, seed, progress)
    if l2 is None:
        scores = ((oof - Q[None]) ** 2).mean(axis=1)  # (grid, m)
        l2 = [L2_GRID[int(np.argmin(scores[:, j]))] for j in range(Q.shape[1])]
        cv = {"metric": "brier", "folds": folds, "grid": list(L2_GRID),
              "scores": [[round(float(s), 6) for s in row] for row in scores.T]}
    std = Standardiser.fit(E)
    X = std(E)
    # Each model's warm-started path strong → weak, stopped at its own penalty: one batched path over the grid down
    # to the weakest chosen penalty, model j's weights read at its penalty.
    path_grid = tuple(v for v in L2_GRID if v >= min(l2)) if set(l2) <= set(L2_GRID) else tuple(sorted(set(l2), reverse=True))
    path = logistic_path_many(X, Q, path_grid)
    W = np.stack([path[path_grid.index(l2[j])][:, j] for j in range(Q.shape[1])], axis=1)
    if progress is not None:
        progress(folds + 1, folds + 1)
    chosen_oof = np.stack([oof[grid.index(l2[j]), :, j] for j in range(Q.shape[1])], axis=1)
    return LogisticPredictor(std, W, list(l2), cv, chosen_oof)
