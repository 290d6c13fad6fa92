"""``train-router --z``: the calibrated knob must reach the target on the paired lower bound, not on the train mean."""

from __future__ import annotations

import numpy as np

from tests.shared_data import needs_data
from tierwise.cli_lab import CALIB_Z
from tierwise.routing.learned.choose import choose
from tierwise.routing.learned.train import calibrate_knob, choose_calibrated


def _cli(*argv: str) -> int:
    from tierwise.cli import main

    return int(main(list(argv)) or 0)


def _bound(pred, Q, costs, rule, knob, tau, ref, z) -> float:  # noqa: ANN001
    d = Q[np.arange(len(Q)), choose(pred, costs, rule, knob)] - tau * ref
    return float(d.mean() - z * d.std(ddof=1) / np.sqrt(len(d)))


def test_the_margin_holds_on_the_paired_bound_and_costs_more() -> None:
    rng = np.random.default_rng(3)
    n = 400
    Q = np.stack([rng.random(n) < 0.7, rng.random(n) < 0.85], axis=1).astype(float)
    pred = np.clip(Q * 0.6 + rng.random(Q.shape) * 0.4, 0, 1)
    C = np.tile([1.0, 10.0], (n, 1))
    costs, ref, tau = C.mean(axis=0), Q[:, 1], 0.99
    target = tau * float(ref.mean())
    plain = calibrate_knob(pred, Q, C, costs, "threshold", target)
    assert plain is not None
    assert calibrate_knob(pred, Q, C, costs, "threshold", target, 0.0, 1) == plain  # z = 0: the train mean
    k = calibrate_knob(pred, Q, C, costs, "threshold", target, 1.645, 1)
    assert k is not None
    assert _bound(pred, Q, costs, "threshold", k, tau, ref, 1.645) >= -1e-12
    cost = {x: float(C[np.arange(n), choose(pred, costs, "threshold", x)].mean()) for x in (plain, k)}
    assert cost[k] >= cost[plain]


def test_no_certified_knob_falls_back_to_the_reference_alone() -> None:
    """A router whose predictions carry no information cannot certify any saving at a large z: the calibrated point
    is the reference model on every prompt (meets τ ≤ 1 by construction), not the best-quality knob, which here
    routes some prompts to the weaker model and misses the target."""
    rng = np.random.default_rng(5)
    n = 300
    Q = np.stack([rng.random(n) < 0.6, rng.random(n) < 0.9], axis=1).astype(float)
    pred = rng.random(Q.shape)  # noise: no knob beats the reference
    C = np.tile([1.0, 10.0], (n, 1))
    costs, tau = C.mean(axis=0), 0.99
    target = tau * float(Q[:, 1].mean())
    assert calibrate_knob(pred, Q, C, costs, "lambda", target, 3.0, 1) is None
    assert (choose_calibrated(pred, costs, "lambda", None, 1) == 1).all()
    k = calibrate_knob(pred, Q, C, costs, "lambda", target, 3.0)  # no reference given: the best-quality knob
    assert k is not None
    assert float(Q[np.arange(n), choose_calibrated(pred, costs, "lambda", k, 1)].mean()) < target


def test_the_reference_is_chosen_when_a_passing_knob_costs_more() -> None:
    """A knob that passes but is dearer than the reference alone (the router sends prompts to a pricier, no better
    model) loses to the reference."""
    n = 200
    Q = np.ones((n, 3))
    Q[::4, 0] = 0.0  # the cheap model misses a quarter
    C = np.tile([1.0, 5.0, 20.0], (n, 1))
    pred = np.tile([0.5, 0.1, 0.9], (n, 1))  # the router believes the dearest model is best, the reference bad
    costs = C.mean(axis=0)
    assert calibrate_knob(pred, Q, C, costs, "threshold", 0.99, 1.0, 1) is None


@needs_data
def test_train_router_z_through_the_cli(tmp_path, capsys) -> None:
    from tierwise.routing.learned import load_router

    for z in (None, "0", "1.645"):
        out = tmp_path / f"r{z}.npz"
        argv = ["train-router", "--data", "mot/date", "--out", str(out), "--kind", "knn", "--embedder",
                "minilm-static"] + ([] if z is None else ["--z", z])
        assert _cli(*argv) == 0
        text = capsys.readouterr().out
        want = CALIB_Z if z is None else float(z)
        assert f"(z = {want:g})" in text
        assert load_router(out).header["calibration"]["z"] == want
    assert CALIB_Z == 1.645  # the default chosen by bench/cv_learned_knob.py (nested CV on train)
