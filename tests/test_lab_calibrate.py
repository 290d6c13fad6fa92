"""Calibration: the simulator equals the engine, fitted thresholds meet the target on train, the bootstrap interval
brackets the test mean, the real search beats plain grid search where a shared quantile is suboptimal, and the
fitted cascade round-trips through a tierwise config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.shared_data import needs_data
from tierwise.config.load import load_config
from tierwise.lab.calibrate import CascadeCalibrator, ChainSearch, Constraint, calibrate_point
from tierwise.lab.cascade_sim import CascadeData, cascade_data, grid_fit, grid_points, simulate, tier_spec
from tierwise.lab.configwrite import ConfigWriteError, write_cascade
from tierwise.lab.datasets import load_set
from tierwise.lab.evaluate import run_tier


@needs_data
@pytest.mark.parametrize(("name", "gate"), [("zellinger/gsm8k/llama", "logprob"), ("mot/date", "vote")])
def test_simulator_equals_engine(name: str, gate: str) -> None:
    test = load_set(name).split("test")
    d = cascade_data(test, test.models, gate)
    rng = np.random.default_rng(7)
    for _ in range(3):
        thr = rng.choice(np.unique(d.confidence[:, :-1]), size=len(d.chain) - 1)
        sim = simulate(d, thr)
        res = run_tier(test, tier_spec(d.chain, gate, thr, d.gate_params))
        assert [r.served for r in res] == [d.chain[i] for i in sim.served]
        assert [r.models_called for r in res] == [list(d.chain[: i + 1]) for i in sim.served]
        np.testing.assert_allclose([r.cost for r in res], sim.cost, rtol=1e-12, atol=0)
        assert [r.quality for r in res] == sim.quality.tolist()


@needs_data
def test_calibration_meets_target_on_train_and_ci_brackets_test() -> None:
    oset = load_set("zellinger/mmlu/llama")
    calib = CascadeCalibrator(oset.split("train"), cv_folds=0)  # the selection guard is tested below
    res = calibrate_point(calib, oset.split("test"), "quality", 0.97, z=1.0, resamples=1000)
    assert res.cal.feasible and res.cal.train_quality >= 0.97 * calib.q_ref
    # the train numbers are what the engine does on train
    tr = run_tier(oset.split("train"), res.cal.tier())
    assert np.mean([r.quality for r in tr]) == pytest.approx(res.cal.train_quality)
    assert np.mean([r.cost for r in tr]) == pytest.approx(res.cal.train_cost)
    h = res.held
    assert h.quality_ci[0] <= h.quality <= h.quality_ci[1] and h.quality_ci[0] < h.quality_ci[1]
    assert h.cost_ci[0] <= h.cost <= h.cost_ci[1]
    assert res.cal.train_cost < oset.split("train").mean_cost(calib.ref_model)  # a real saving


def _synthetic(n: int = 600, seed: int = 0) -> CascadeData:
    """Three rungs whose confidences live on different scales: rung 0's is informative only near 0.95, rung 1's
    spreads over [0, 1]. A shared quantile must cut both at the same level, which is wasteful."""
    rng = np.random.default_rng(seed)
    right0 = rng.random(n) < 0.55
    right1 = rng.random(n) < 0.75
    conf0 = np.where(right0, rng.uniform(0.90, 1.0, n), rng.uniform(0.85, 0.95, n))
    conf1 = np.where(right1, rng.uniform(0.3, 1.0, n), rng.uniform(0.0, 0.5, n))
    conf = np.stack([conf0, conf1, np.zeros(n)], axis=1)
    quality = np.stack([right0, right1, np.ones(n)], axis=1).astype(float)
    cost = np.tile([1e-5, 1e-4, 1e-3], (n, 1))
    return CascadeData(("a", "b", "c"), "logprob", ({}, {}), conf, quality, cost, tuple(map(str, range(n))))


@needs_data
def test_selection_guard_holds_its_margin_and_falls_back_to_the_reference() -> None:
    train = load_set("zellinger/mmlu/llama").split("train")
    calib = CascadeCalibrator(train)
    con = calib.constraint_quality(0.95, 1.0)
    assert CascadeCalibrator(train, cv_folds=0).optimism(con) == 0.0
    off = calib.optimism(con)
    assert off > 0  # picking the best of 31 chains × thresholds on 285 prompts flatters the winner
    cal = calib.fit(con)
    assert cal.feasible and cal.guard == pytest.approx(off)
    d = next(s.data for s in calib.searches if list(s.data.chain) == cal.chain)
    sim = simulate(d, cal.thresholds)
    assert con.slack_of(sim.cost, sim.quality) >= off  # the margin is on top of the z bound
    assert sim.quality.mean() == pytest.approx(cal.train_quality)
    unguarded = calib.fit(con, guard=False)
    assert unguarded.guard == 0.0 and unguarded.train_cost <= cal.train_cost
    # a target the guard cannot certify: the reference model alone, not the search's most flattered candidate
    ref = calib.fit(calib.constraint_quality(0.999, 1.0))
    assert not ref.feasible and ref.chain == [calib.ref_model] and ref.thresholds == []


@needs_data
def test_selection_guard_meets_held_out_targets_the_bare_margin_misses() -> None:
    """Sets where z = 1 alone misses 0.99 × the best model's test quality (bench: 4 of 16 cascade sets)."""
    for name in ("zellinger/medmcqa/llama", "zellinger/medmcqa/qwen_oai", "zellinger/gsm8k/llama"):
        oset = load_set(name)
        test = oset.split("test")
        calib = CascadeCalibrator(oset.split("train"))
        target = 0.99 * test.mean_quality(calib.ref_model)
        met = []
        for guard in (False, True):
            cal = calib.fit(calib.constraint_quality(0.99, 1.0), guard=guard)
            met.append(simulate(cascade_data(test, cal.chain, calib.gate), cal.thresholds).quality.mean() >= target)
        assert met == [False, True], name


def test_real_search_at_least_as_cheap_as_grid_search() -> None:
    d = _synthetic()
    ref = d.quality[:, 2]
    for tau in (0.90, 0.95, 0.98):
        con = Constraint("quality", tau, tau, ref, z=0.0)
        thr, _, ok = ChainSearch(d, ref).fit(con)
        assert ok
        real = simulate(d, thr)
        assert real.quality.mean() >= tau - 1e-12
        costs = {}
        for how in ("shared", "coarse"):
            g, gok = grid_fit(d, grid_points(d, how), con.slack_of)
            assert gok
            costs[how] = simulate(d, g).cost.mean()
        assert real.cost.mean() <= min(costs.values()) + 1e-15
    # and strictly cheaper than the shared quantile somewhere (the point of a real search)
    con = Constraint("quality", 0.95, 0.95, ref, z=0.0)
    thr, _, _ = ChainSearch(d, ref).fit(con)
    g, _ = grid_fit(d, grid_points(d, "shared"), con.slack_of)
    assert simulate(d, thr).cost.mean() < 0.95 * simulate(d, g).cost.mean()


def test_budget_mode_respects_budget() -> None:
    d = _synthetic()
    con = Constraint("cost", 3e-4, z=0.0)
    thr, _, ok = ChainSearch(d, None).fit(con)
    sim = simulate(d, thr)
    assert ok and sim.cost.mean() <= 3e-4
    g, _ = grid_fit(d, grid_points(d, "coarse"), con.slack_of, minimise="quality")
    assert sim.quality.mean() >= simulate(d, g).quality.mean()


def test_coarse_grid_never_passes_a_rung_a_start_router_skipped() -> None:
    d = _synthetic()
    conf = d.confidence.copy()
    conf[: d.n // 2, 0] = -1.0  # SKIPPED: the start router began these prompts at rung 1
    skipped = CascadeData(d.chain, d.gate, d.gate_params, conf, d.quality, d.cost, d.ids)
    grid = grid_points(skipped, "coarse")
    judged = conf[d.n // 2 :, 0]
    assert grid[:, 0].min() == judged.min() >= 0  # the lowest level is the least confident *judged* answer
    for thr in grid:
        assert (simulate(skipped, thr).served[: d.n // 2] != 0).all()


CONFIG = """
providers:
  p: {format: openai, base_url: "http://127.0.0.1:9/v1"}
models:
  small: {provider: p, price: {input: 0.1, output: 0.2}}
  big: {provider: p, price: {input: 1, output: 2}}
tiers:
  chat:
    description: "Write a reply"
    models: [small, big]
    policy: priority
default_tier: chat
fallback_model: big
"""


def test_configwrite_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "tierwise.yaml"
    path.write_text(CONFIG)
    backup = write_cascade(path, "chat", ["small", "big"], "vote", [0.7142857142857143],
                           [{"samples": 14, "extract": "text"}])
    assert backup.read_text() == CONFIG
    cfg = load_config(path)
    tier = cfg.tiers["chat"]
    assert tier.policy == "cascade" and tier.description == "Write a reply"
    rung = tier.cascade.rungs[0]
    assert rung.model == "small" and rung.gate.kind == "vote" and rung.gate.samples == 14
    assert rung.gate.threshold == 0.7142857142857143  # exact round trip
    assert tier.cascade.rungs[1].model == "big"
    write_cascade(path, "new", ["big"], "logprob", [], [])  # creates a tier
    assert load_config(path).tiers["new"].cascade.rungs[0].model == "big"


def test_configwrite_refuses_unknown_models_and_restores(tmp_path: Path) -> None:
    path = tmp_path / "tierwise.yaml"
    path.write_text(CONFIG)
    with pytest.raises(ConfigWriteError, match=r"llama3.1-8b.*defined: big, small"):
        write_cascade(path, "chat", ["llama3.1-8b", "big"], "logprob", [0.5], [{}])
    assert path.read_text() == CONFIG
    # a write that fails validation (threshold out of range) is rolled back
    with pytest.raises(ConfigWriteError, match="restored"):
        write_cascade(path, "chat", ["small", "big"], "logprob", [1.5], [{}])
    assert path.read_text() == CONFIG


@needs_data
def test_engine_runs_do_not_reuse_stale_gates() -> None:
    """Two runs with different thresholds must differ (the engine's id-keyed gate cache once made them equal)."""
    test = load_set("fanconi/arc_easy/llama").split("test")
    d = cascade_data(test, test.models, "logprob")
    for _ in range(2):
        lo = run_tier(test, tier_spec(d.chain, "logprob", [0.5], d.gate_params))
        hi = run_tier(test, tier_spec(d.chain, "logprob", [0.99], d.gate_params))
        assert [r.served for r in lo] == [d.chain[i] for i in simulate(d, [0.5]).served]
        assert [r.served for r in hi] == [d.chain[i] for i in simulate(d, [0.99]).served]
        assert [r.served for r in lo] != [r.served for r in hi]
