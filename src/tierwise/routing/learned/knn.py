"""kNN router: a prompt's predicted quality per model is the distance-weighted mean quality of its k nearest
training prompts (cosine on L2-normalised embeddings). The baseline every learned router must beat.

Weights are 1 / (1 − cos + ε): the cosine distance, inverted, so a near-duplicate of a training prompt essentially
copies its outcomes while far neighbours count less. ``k`` is the one hyper-parameter; it is chosen on the training
split by k-fold cross-validation (lowest mean Brier score over models), never on the split that is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tierwise.routing.learned.numerics import kfold_indices

K_GRID = (1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377)
EPS = 1e-3


def _neighbour_weights(sims: np.ndarray, kmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (n, kmax) of the kmax most similar columns, most similar first, and their weights."""
    kmax = min(kmax, sims.shape[1])
    if kmax < sims.shape[1]:
        part = np.argpartition(-sims, kmax - 1, axis=1)[:, :kmax]
    else:
        part = np.tile(np.arange(sims.shape[1]), (sims.shape[0], 1))
    rows = np.arange(sims.shape[0])[:, None]
    order = np.argsort(-sims[rows, part], axis=1, kind="stable")
    idx = part[rows, order]
    weights = 1.0 / (1.0 - np.clip(sims[rows, idx], -1.0, 1.0) + EPS)
    return idx, weights


def knn_predict_all_k(sims: np.ndarray, quality: np.ndarray, ks: list[int]) -> np.ndarray:
    """Predictions for every k in ``ks`` at once: (len(ks), n, m), from similarities (n, n_train)."""
    idx, w = _neighbour_weights(sims, max(ks))
    num = np.cumsum(w[:, :, None] * quality[idx], axis=1)
    den = np.cumsum(w, axis=1)[:, :, None]
    cols = [min(k, idx.shape[1]) - 1 for k in ks]
    return np.stack([num[:, c, :] / den[:, c, :] for c in cols])


@dataclass
class KNNPredictor:
    """Fitted kNN: the training embeddings and quality matrix, and k."""

    embeddings: np.ndarray  # (n_train, dim) float32, L2-normalised
    quality: np.ndarray  # (n_train, m)
    k: int
    cv: dict[str, Any] = field(default_factory=dict)
    oof: np.ndarray | None = field(default=None, repr=False)  # out-of-fold train predictions at the chosen k

    kind = "knn"

    def predict(self, E: np.ndarray) -> np.ndarray:
        sims = np.asarray(E, dtype=np.float32) @ self.embeddings.T
        return knn_predict_all_k(sims, self.quality, [self.k])[0]

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "weights": "1/(1-cos+0.001)", "k_grid": list(K_GRID)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"embeddings": self.embeddings, "quality": self.quality}

    @classmethod
    def from_saved(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> KNNPredictor:
        return cls(np.asarray(arrays["embeddings"], dtype=np.float32), np.asarray(arrays["quality"]), int(params["k"]))


def knn_oof(E: np.ndarray, Q: np.ndarray, ks: list[int], folds: int, seed: int) -> np.ndarray:
    """Out-of-fold predictions (len(ks), n, m) for every k."""
    out = np.zeros((len(ks), *Q.shape))
    for tr, ho in kfold_indices(len(E), folds, seed):
        out[:, ho, :] = knn_predict_all_k(E[ho] @ E[tr].T, Q[tr], ks)
    return out


def fit_knn(E: np.ndarray, Q: np.ndarray, *, folds: int = 5, seed: int = 0, k: int | None = None) -> KNNPredictor:
    """Fit kNN; ``k`` None chooses it from :data:`K_GRID` by ``folds``-fold CV (mean Brier, ties to the smaller k)."""
    E = np.asarray(E, dtype=np.float32)
    Q = np.asarray(Q, dtype=float)
    if k is None:
        n_fit = len(E) - -(-len(E) // max(2, min(folds, len(E))))  # smallest in-fold size
        ks = [kk for kk in K_GRID if kk <= max(1, n_fit)]
        oof = knn_oof(E, Q, ks, folds, seed)
        scores = ((oof - Q[None]) ** 2).mean(axis=(1, 2))
        best = int(np.argmin(scores))
        cv = {"metric": "brier", "folds": folds, "grid": ks, "scores": [round(float(s), 6) for s in scores]}
        return KNNPredictor(E, Q, ks[best], cv, oof[best])
    return KNNPredictor(E, Q, int(k), {}, knn_oof(E, Q, [int(k)], folds, seed)[0])
