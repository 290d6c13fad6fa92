"""Small numpy building blocks shared by the learned routers and the gate trainer.

Kept dependency-free on purpose (no sklearn, no torch): the gateway loads these models at serve time and the fits
are tiny (hundreds to a few thousand prompts × a few hundred features), where Newton's method in numpy converges in
a handful of iterations and is exact enough to test against closed forms.
"""

from __future__ import annotations

import numpy as np


def kfold_indices(n: int, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, held-out) index pairs of a shuffled k-fold split; ``k`` is lowered to ``n`` for tiny sets."""
    if n < 2:
        raise ValueError(f"cross-validation needs at least 2 examples, got {n}")
    k = max(2, min(k, n))
    order = np.random.default_rng(seed).permutation(n)
    folds = np.array_split(order, k)
    return [(np.sort(np.concatenate(folds[:i] + folds[i + 1 :])), np.sort(f)) for i, f in enumerate(folds)]


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free form


def brier(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean squared error of probabilities against (possibly fractional) outcomes: proper, bounded, and defined
    for soft quality labels, so it ranks hyper-parameters on every set the same way."""
    return float(np.mean((np.asarray(pred, dtype=float) - np.asarray(target, dtype=float)) ** 2))


def fit_logistic(
    X: np.ndarray,
    y: np.ndarray,
    l2: float,
    *,
    w0: np.ndarray | None = None,
    max_iter: int = 50,
    tol: float = 1e-8,
    penalise_last: bool = False,
) -> np.ndarray:
    """L2-regularised logistic regression by Newton's method (IRLS), for targets ``y`` in [0, 1].

    Minimises Σ_i CE(y_i, σ(x_i·w)) + l2/2·||w||², leaving the last column (the bias, by convention) unpenalised
    unless ``penalise_last``. Soft targets are fine: the cross-entropy with fractional y is still convex and its
    gradient is Xᵀ(σ(Xw) − y). A step-halving line search keeps it monotone when the data are separable and l2 small.
    ``w0`` warm-starts a path over decreasing ``l2``.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    n, d = X.shape
    reg = np.full(d, float(l2))
    if not penalise_last:
        reg[-1] = 0.0
    reg = reg + 1e-10  # keeps the Hessian invertible when a column is constant
    w = np.zeros(d) if w0 is None else np.array(w0, dtype=float)

    def loss(wv: np.ndarray) -> float:
        z = X @ wv
        # CE = log(1+e^z) − y·z, computed stably
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(reg * wv * wv))

    current = loss(w)
    for _ in range(max_iter):
        p = sigmoid(X @ w)
        grad = X.T @ (p - y) + reg * w
        s = p * (1.0 - p)
        hess = (X * s[:, None]).T @ X
        hess[np.diag_indices(d)] += reg
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        t = 1.0
        while t > 1e-6:
            candidate = w - t * step
            new = loss(candidate)
            if new <= current + 1e-12:
                break
            t *= 0.5
        else:
            break
        w, previous, current = candidate, current, new
        if previous - current <= tol * max(1.0, abs(current)):
            break
    return w


def add_bias(X: np.ndarray) -> np.ndarray:
    return np.hstack([X, np.ones((X.shape[0], 1), dtype=X.dtype)])
