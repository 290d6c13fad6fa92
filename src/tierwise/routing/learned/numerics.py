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


class LogisticBatch:
    """Many L2 logistic regressions on the *same* design matrix at once (one per column of ``Y``), by Newton's
    method with the Newton step solved by preconditioned conjugate gradients.

    Why: a router fits one probe per model per penalty per fold. Dense Newton (:func:`fit_logistic`) forms a d×d
    Hessian per model and iteration (n·d² flops: minutes on 5k prompts × 15 models × 384 dims); here the Hessian is
    only applied, to all models at once (one n×d×m product), and the preconditioner — the eigendecomposition of XᵀX,
    computed once per design matrix — makes CG converge in a few steps. Same objective, same stopping rule as
    :func:`fit_logistic`; steps agree with the dense solve to the CG tolerance."""

    def __init__(self, X: np.ndarray, *, penalise_last: bool = False) -> None:
        self.X = np.asarray(X, dtype=float)
        d = self.X.shape[1]
        self.mask = np.ones(d)
        if not penalise_last:
            self.mask[-1] = 0.0
        lam, self.V = np.linalg.eigh(self.X.T @ self.X)
        self.lam = np.maximum(lam, 0.0)

    def fit(self, Y: np.ndarray, l2: float, W0: np.ndarray | None = None, *, max_iter: int = 50,
            tol: float = 1e-8, cg_tol: float = 1e-7, cg_iter: int = 200) -> np.ndarray:
        """(d, m) weights minimising, per column j, Σ_i CE(Y_ij, σ(x_i·w_j)) + l2/2·||w_j||² (bias unpenalised)."""
        X, Y = self.X, np.asarray(Y, dtype=float)
        m = Y.shape[1]
        reg = (self.mask * float(l2) + 1e-10)[:, None]  # (d, 1)
        W = np.zeros((X.shape[1], m)) if W0 is None else np.array(W0, dtype=float)
        Z = X @ W
        cur = self._loss(Z, Y, W, reg)
        active = np.ones(m, dtype=bool)
        for _ in range(max_iter):
            cols = np.flatnonzero(active)
            if cols.size == 0:
                break
            Za, Ya, Wa = Z[:, cols], Y[:, cols], W[:, cols]
            P = sigmoid(Za)
            G = X.T @ (P - Ya) + reg * Wa
            S = P * (1.0 - P)
            step = self._pcg(S, reg, G, float(l2), cg_tol, cg_iter)
            XS = X @ step
            t = np.ones(cols.size)
            accepted = np.zeros(cols.size, dtype=bool)
            new = cur[cols].copy()
            while True:
                todo = ~accepted & (t > 1e-6)
                if not todo.any():
                    break
                cand_Z = Za[:, todo] - t[todo] * XS[:, todo]
                cand_W = Wa[:, todo] - t[todo] * step[:, todo]
                val = self._loss(cand_Z, Ya[:, todo], cand_W, reg)
                ok = val <= cur[cols][todo] + 1e-12
                idx = np.flatnonzero(todo)
                accepted[idx[ok]] = True
                new[idx[ok]] = val[ok]
                t[idx[~ok]] *= 0.5
            for k, j in enumerate(cols):
                if not accepted[k]:  # no descent: converged as far as the line search can tell
                    active[j] = False
                    continue
                W[:, j] = Wa[:, k] - t[k] * step[:, k]
                Z[:, j] = Za[:, k] - t[k] * XS[:, k]
                prev, cur[j] = cur[j], new[k]
                if prev - cur[j] <= tol * max(1.0, abs(cur[j])):
                    active[j] = False
        return W

    @staticmethod
    def _loss(Z: np.ndarray, Y: np.ndarray, W: np.ndarray, reg: np.ndarray) -> np.ndarray:
        return np.sum(np.logaddexp(0.0, Z) - Y * Z, axis=0) + 0.5 * np.sum(reg * W * W, axis=0)

    def _pcg(self, S: np.ndarray, reg: np.ndarray, B: np.ndarray, l2: float, tol: float, maxit: int) -> np.ndarray:
        """Solve (Xᵀ diag(S_j) X + diag(reg)) x_j = b_j for every column j, preconditioned by (c_j·XᵀX + l2·I)⁻¹
        with c_j the mean of S_j (exact when the weights s are constant)."""
        X, V = self.X, self.V
        denom = S.mean(axis=0)[None, :] * self.lam[:, None] + l2 + 1e-10  # (d, m)

        def precond(R: np.ndarray) -> np.ndarray:
            return V @ ((V.T @ R) / denom)

        def hv(P: np.ndarray) -> np.ndarray:
            return X.T @ (S * (X @ P)) + reg * P

        x = np.zeros_like(B)
        r = B.copy()
        z = precond(r)
        p = z.copy()
        rz = np.sum(r * z, axis=0)
        bnorm = np.linalg.norm(B, axis=0)
        live = bnorm > 0
        for _ in range(maxit):
            if not live.any():
                break
            Hp = hv(p)
            curv = np.sum(p * Hp, axis=0)
            alpha = np.where(live & (curv > 0), rz / np.where(curv > 0, curv, 1.0), 0.0)
            x += alpha * p
            r -= alpha * Hp
            live &= np.linalg.norm(r, axis=0) > tol * bnorm
            z = precond(r)
            rz_new = np.sum(r * z, axis=0)
            beta = np.where(live, rz_new / np.where(rz != 0, rz, 1.0), 0.0)
            p = z + beta * p
            rz = rz_new
        return x
