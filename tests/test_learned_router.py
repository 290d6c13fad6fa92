"""Learned routers: kNN exactness, choice rules, the stronger router vs a constant, artifacts and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from tierwise.routing.learned import RouterArtifactError, load_router, read_header, save_router
from tierwise.routing.learned.artifact import LearnedRouter
from tierwise.routing.learned.choose import choose_lambda, choose_threshold, knob_grid
from tierwise.routing.learned.ensemble import fit_ensemble
from tierwise.routing.learned.knn import fit_knn
from tierwise.routing.learned.logistic import fit_logistic_router
from tierwise.routing.learned.numerics import brier


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_knn_matches_hand_computed_weighted_mean() -> None:
    E = _unit(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]))
    Q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    knn = fit_knn(E, Q, k=2)
    q = _unit(np.array([[1.0, 0.2]]))
    sims = (E @ q.T).ravel()
    top = np.argsort(-sims)[:2]  # rows 0 and 2
    w = 1.0 / (1.0 - sims[top] + 1e-3)
    expected = (w[:, None] * Q[top]).sum(0) / w.sum()
    np.testing.assert_allclose(knn.predict(q)[0], expected, rtol=1e-6)
    assert set(top) == {0, 2}
    # k = 1 on an exact training prompt copies its outcomes
    np.testing.assert_allclose(fit_knn(E, Q, k=1).predict(E[1:2])[0], Q[1])


def test_choice_rules_on_a_hand_example() -> None:
    costs = np.array([3.0, 1.0, 2.0])  # model 1 cheapest, then 2, then 0
    pred = np.array([
        [0.9, 0.8, 0.85],  # cheapest clears 0.7
        [0.9, 0.5, 0.75],  # model 2 is the cheapest that clears 0.7
        [0.6, 0.3, 0.6],   # none clears: argmax, tie 0/2 → cheaper model 2
    ])
    np.testing.assert_array_equal(choose_threshold(pred, costs, 0.7), [1, 2, 2])
    np.testing.assert_array_equal(choose_threshold(pred, costs, 0.7, allowed=[True, False, False]), [0, 0, 0])
    np.testing.assert_array_equal(choose_lambda(pred, costs, 0.0), [0, 0, 2])
    np.testing.assert_array_equal(choose_lambda(pred, costs, np.inf), [1, 1, 1])
    # λ = 0.1: scores row 0 → [0.6, 0.7, 0.65] → model 1; row 1 → [0.6, 0.4, 0.55] → model 0
    np.testing.assert_array_equal(choose_lambda(pred, costs, 0.1), [1, 0, 2])
    grid = knob_grid(pred, costs, "lambda")
    assert grid[0] == 0 and np.isinf(grid[-1]) and np.all(np.diff(grid) > 0)
    with pytest.raises(ValueError, match="no model is allowed"):
        choose_threshold(pred, costs, 0.5, allowed=[False, False, False])


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Quality of model 0 depends on one embedding direction; model 1 on another."""
    rng = np.random.default_rng(seed)
    E = _unit(rng.normal(size=(n, 16)))
    p = np.stack([1 / (1 + np.exp(-8 * E[:, 0])), 1 / (1 + np.exp(-8 * E[:, 1]))], axis=1)
    return E, (rng.random(p.shape) < p).astype(float)


def test_stronger_routers_beat_a_constant_predictor() -> None:
    E, Q = _synthetic(400, 0)
    Et, Qt = _synthetic(2000, 1)
    constant = brier(np.broadcast_to(Q.mean(0), Qt.shape), Qt)
    for fitted in (fit_logistic_router(E, Q), fit_ensemble(E, Q)):
        assert brier(fitted.predict(Et), Qt) < constant - 0.02
    assert brier(fit_knn(E, Q).predict(Et), Qt) < constant


def _router(kind: str = "ensemble") -> LearnedRouter:
    E, Q = _synthetic(120, 2)
    E = np.hstack([E, np.zeros((len(E), 240), dtype=np.float32)])  # the static embedder's 256 dims
    pred = {"ensemble": fit_ensemble, "knn": fit_knn, "logreg": fit_logistic_router}[kind](E, Q)
    return LearnedRouter(["small", "large"], np.array([1e-4, 1e-3]), "minilm-static", pred, {"training": {"set": "syn"}})


@pytest.mark.parametrize("kind", ["knn", "logreg", "ensemble"])
def test_artifact_round_trip(tmp_path, kind: str) -> None:
    router = _router(kind)
    path = save_router(router, tmp_path / "r.npz")
    loaded = load_router(path, expected_models=["small", "large"])
    E = np.random.default_rng(3).normal(size=(5, 256)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict_embeddings(E), router.predict_embeddings(E), rtol=1e-6)
    assert loaded.models == ["small", "large"] and loaded.kind == kind
    np.testing.assert_allclose(loaded.mean_cost, [1e-4, 1e-3])
    h = read_header(path)
    assert h["kind"] == "tierwise-router" and h["format_version"] == 1 and h["embedder"] == "minilm-static"
    preds = loaded.predict(["What is 2 + 2?", "Explain general relativity in depth."])
    assert preds.shape == (2, 2) and np.all((preds >= 0) & (preds <= 1))
    assert loaded.route("hi", "lambda", 0.0, allowed_models=["small"]) == "small"


def _rewrite_header(path, **changes) -> None:
    import json

    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(bytes(arrays["__header__"]).decode())
    header.update(changes)
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(path, **arrays)


def test_artifact_refusals(tmp_path) -> None:
    path = save_router(_router("knn"), tmp_path / "r.npz")
    with pytest.raises(RouterArtifactError, match=r"configured but not in the artifact: \['medium'\]"):
        load_router(path, expected_models=["small", "medium"])
    with pytest.raises(RouterArtifactError, match=r"in the artifact but not configured: \['large'\]"):
        load_router(path, expected_models=["small"])
    with pytest.raises(RouterArtifactError, match="another order"):
        load_router(path, expected_models=["large", "small"])
    _rewrite_header(path, format_version=2)
    with pytest.raises(RouterArtifactError, match="format version 2.*reads version 1"):
        load_router(path)
    _rewrite_header(path, format_version=1, embedder="bge-large")
    with pytest.raises(RouterArtifactError, match="embedder 'bge-large'"):
        load_router(path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(RouterArtifactError, match="not a readable"):
        load_router(tmp_path / "junk.npz")
    with pytest.raises(RouterArtifactError, match="not found"):
        load_router(tmp_path / "missing.npz")
