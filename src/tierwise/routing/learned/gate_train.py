"""Train the learned confidence gate (runtime: :mod:`tierwise.routing.gates.learned`) from recorded outcomes.

For one model (a cascade rung), each training prompt gives the feature vector :func:`gate_features` of the recorded
``confidence`` and answer text (the same function the gate calls at serve time, so training and serving cannot
drift) and the target "quality ≥ 0.5". Rows without a recorded confidence are skipped: at serve time the gate needs
log-probs and errors (→ escalate) without them, so such rows would teach it a case it never scores. The recorded
confidence stands in for both the mean and the minimum token probability, which the sets do not record apart.

The fit is L2-regularised logistic regression by Newton/IRLS (:func:`fit_logistic`, bias unpenalised), its penalty
chosen by k-fold CV log-loss on the training split.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tierwise.fsutil import atomic_write
from tierwise.outcomes import OutcomeSet
from tierwise.routing.gates.learned import FEATURES, GATE_ARTIFACT_VERSION, gate_features
from tierwise.routing.learned.numerics import fit_logistic, kfold_indices, sigmoid

GATE_L2_GRID = (100.0, 30.0, 10.0, 3.0, 1.0, 0.3, 0.1, 0.01)


@dataclass
class GateTrainResult:
    weights: np.ndarray
    l2: float
    n_rows: int
    n_skipped: int
    cv_log_loss: float
    cv_log_loss_constant: float
    positive_rate: float


def gate_design(oset: OutcomeSet, model: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(X, y, skipped) for ``model`` on every prompt of ``oset`` that has a recorded confidence."""
    if model not in oset.models:
        raise ValueError(f"set {oset.name!r} has no model {model!r}; it has {oset.models}")
    rows, ys, skipped = [], [], 0
    for p in oset.prompts:
        mo = p.models[model]
        if mo.confidence is None or math.isnan(mo.confidence):
            skipped += 1
            continue
        rows.append(gate_features(mo.confidence, None, mo.answer or ""))
        ys.append(1.0 if mo.quality >= 0.5 else 0.0)
    if not rows:
        raise ValueError(f"set {oset.name!r}: model {model!r} has no recorded confidence; a learned gate needs one")
    return np.array(rows), np.array(ys), skipped


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def fit_gate(X: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0,
             l2: float | None = None) -> tuple[np.ndarray, float, float, float]:
    """(weights, chosen l2, CV log-loss, CV log-loss of the constant base rate)."""
    split = kfold_indices(len(y), folds, seed)
    grid = GATE_L2_GRID if l2 is None else (l2,)
    losses = []
    for value in grid:
        oof = np.zeros(len(y))
        for tr, ho in split:
            oof[ho] = sigmoid(X[ho] @ fit_logistic(X[tr], y[tr], value))
        losses.append(_log_loss(oof, y))
    best = int(np.argmin(losses))
    const = np.zeros(len(y))
    for tr, ho in split:
        const[ho] = y[tr].mean()
    return fit_logistic(X, y, grid[best]), grid[best], losses[best], _log_loss(const, y)


def train_gate(oset: OutcomeSet, model: str, *, split: str | None = "train", folds: int = 5,
               seed: int = 0) -> GateTrainResult:
    data = oset.split(split) if split else oset  # type: ignore[arg-type]
    X, y, skipped = gate_design(data, model)
    if len(y) < 2 * folds:
        raise ValueError(f"set {oset.name!r}: only {len(y)} rows with a confidence for {model!r}; need {2 * folds}")
    w, l2, cv, cv0 = fit_gate(X, y, folds=folds, seed=seed)
    return GateTrainResult(w, l2, len(y), skipped, cv, cv0, float(y.mean()))


def save_gate(result: GateTrainResult, path: str | os.PathLike[str], *, set_name: str, model: str) -> Path:
    """Write the artifact the runtime gate loads (kind, version, features, weights) plus provenance."""
    doc: dict[str, Any] = {
        "kind": "tierwise-gate",
        "version": GATE_ARTIFACT_VERSION,
        "features": list(FEATURES),
        "weights": [float(v) for v in result.weights],
        "model": model,
        "training": {"set": set_name, "split": "train", "n_rows": result.n_rows, "skipped_no_confidence":
                     result.n_skipped, "l2": result.l2, "cv_log_loss": result.cv_log_loss,
                     "cv_log_loss_constant": result.cv_log_loss_constant, "positive_rate": result.positive_rate},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return atomic_write(path, json.dumps(doc, indent=1).encode())
