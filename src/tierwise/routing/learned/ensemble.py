"""The default learned router: per model, a blend α·logistic probe + (1 − α)·kNN, α chosen by cross-validation.

Why a blend: on the shared outcome sets the per-prompt signal in an embedding is weak, and the two predictors err
differently — the probe is smooth and global, kNN local and good at near-duplicates (e.g. templated prompts). Their
out-of-fold predictions on the training split are already computed while choosing k and the penalties, so picking
α ∈ :data:`ALPHA_GRID` per model by out-of-fold Brier score is free and can only match or improve either part on the
training folds (α = 0 or 1 recovers a single predictor).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tierwise.routing.learned.knn import KNNPredictor, fit_knn
from tierwise.routing.learned.logistic import LogisticPredictor, fit_logistic_router

ALPHA_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class EnsemblePredictor:
    knn: KNNPredictor
    logreg: LogisticPredictor
    alpha: np.ndarray  # (m,) weight of the logistic probe per model
    cv: dict[str, Any] = field(default_factory=dict)
    oof: np.ndarray | None = field(default=None, repr=False)

    kind = "ensemble"

    def predict(self, E: np.ndarray) -> np.ndarray:
        return self.alpha * self.logreg.predict(E) + (1.0 - self.alpha) * self.knn.predict(E)

    def params(self) -> dict[str, Any]:
        return {"alpha": [float(a) for a in self.alpha], "alpha_grid": list(ALPHA_GRID),
                "knn": self.knn.params(), "logreg": self.logreg.params()}

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"knn.{k}": v for k, v in self.knn.arrays().items()}
        out.update({f"logreg.{k}": v for k, v in self.logreg.arrays().items()})
        return out

    @classmethod
    def from_saved(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> EnsemblePredictor:
        def sub(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

        knn = KNNPredictor.from_saved(params["knn"], sub("knn."))
        logreg = LogisticPredictor.from_saved(params["logreg"], sub("logreg."))
        return cls(knn, logreg, np.asarray(params["alpha"], dtype=float))


def fit_ensemble(E: np.ndarray, Q: np.ndarray, *, folds: int = 5, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> EnsemblePredictor:
    knn = fit_knn(E, Q, folds=folds, seed=seed)
    logreg = fit_logistic_router(E, Q, folds=folds, seed=seed, progress=progress)
    assert knn.oof is not None and logreg.oof is not None
    Q = np.asarray(Q, dtype=float)
    scores = np.stack([((a * logreg.oof + (1 - a) * knn.oof - Q) ** 2).mean(axis=0) for a in ALPHA_GRID])  # (A, m)
    alpha = np.array([ALPHA_GRID[int(np.argmin(scores[:, j]))] for j in range(Q.shape[1])])
    oof = alpha * logreg.oof + (1 - alpha) * knn.oof
    cv = {"metric": "brier", "folds": folds, "alpha_scores": [[round(float(s), 6) for s in r] for r in scores.T],
          "knn": knn.cv, "logreg": logreg.cv}
    return EnsemblePredictor(knn, logreg, alpha, cv, oof)
