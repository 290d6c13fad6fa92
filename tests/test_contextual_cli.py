"""``tierwise calibrate --kind contextual`` and ``tierwise eval --router contextual``: the README's "ours" as two
commands. The fitted tier is written into a config that loads, its artifacts live in ``--out``, and running the
written tier through the engine reproduces the reported held-out numbers exactly."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tierwise.cli import main
from tierwise.lab.datasets import ModelOutcome, OutcomeSet, PromptOutcomes, write_outcome_set


def toy_set(tmp: Path, n: int = 240, seed: int = 3) -> Path:
    """Three priced models; the cheap one is right on ~65 % of prompts and more confident when right; the middle one
    agrees with the cheap one's answer when both are right."""
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        topic = ("math", "history", "code", "poetry")[i % 4]
        s_ok = rng.random() < (0.85 if topic in ("history", "poetry") else 0.45)
        m_ok = s_ok or rng.random() < 0.6
        ans = lambda ok, k: "The answer is B." if ok else f"The answer is {'CDA'[k % 3]}."  # noqa: E731
        prompts.append(PromptOutcomes(f"p{i}", "train" if i % 2 else "test", f"{topic} question number {i}: {rng.random()}", {
            "small": ModelOutcome(ans(s_ok, i), float(s_ok), 30, 10, 1e-5,
                                  confidence=min(0.999, max(0.01, (0.8 if s_ok else 0.45) + rng.gauss(0, 0.12)))),
            "mid": ModelOutcome(ans(m_ok, i + 1), float(m_ok), 30, 10, 1e-4,
                                confidence=min(0.999, max(0.01, (0.85 if m_ok else 0.5) + rng.gauss(0, 0.1)))),
            "big": ModelOutcome("The answer is B.", 1.0 if rng.random() < 0.97 else 0.0, 30, 10, 1e-3,
                                confidence=0.95)}))
    write_outcome_set(OutcomeSet("toy3", ["small", "mid", "big"], prompts), tmp, stem="toy3")
    return tmp / "toy3.jsonl.gz"


def config_for(tmp: Path) -> Path:
    cfg = tmp / "tierwise.yaml"
    models = "\n".join(f"  {m}: {{provider: p, price: {{input: 0.1, output: 0.2}}}}" for m in ("small", "mid", "big"))
    cfg.write_text(f'providers:\n  p: {{format: openai, base_url: "http://127.0.0.1:9/v1"}}\nmodels:\n{models}\n'
                   "tiers:\n  qa: {models: [big], description: questions}\ndefault_tier: qa\nfallback_model: big\n")
    return cfg


def test_calibrate_contextual_writes_artifacts_and_config_that_reproduce(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    data = toy_set(tmp_path)
    cfg = config_for(tmp_path)
    out = tmp_path / "ctx"
    monkeypatch.chdir(tmp_path)
    assert main(["calibrate", "--kind", "contextual", "--data", str(data), "--router-kind", "none",
                 "--target-quality", "0.95", "--out", str(out), "--config", str(cfg), "--tier", "qa"]) == 0
    text = capsys.readouterr().out
    assert "contextual: no router" in text and "wrote tier 'qa'" in text and "selection guard" in text
    rep = json.loads((out / "calibration.json").read_text())
    assert rep["kind"] == "contextual" and rep["train"]["feasible"] and len(rep["chain"]) >= 2
    assert rep["test"]["n"] == 120 and rep["test"]["cost"] < 0.9e-3  # cheaper than the big model alone

    from tierwise.config.load import load_config
    from tierwise.lab.datasets import read_outcome_set
    from tierwise.lab.evaluate import means, run_tier

    tier = load_config(cfg).tiers["qa"]
    assert tier.description == "questions" and tier.policy == "cascade"
    assert [r.model for r in tier.cascade.rungs] == rep["chain"]
    for r in tier.cascade.rungs[:-1]:
        assert r.gate.kind == "contextual" and Path(r.gate.artifact).parent == out.resolve()
        assert Path(r.gate.artifact).exists()
    # The tier as written (not the in-memory one) replays to the reported held-out numbers.
    test = read_outcome_set(data).split("test")
    c, q = means(run_tier(test, rep["tier"]))
    assert c == pytest.approx(rep["test"]["cost"], rel=1e-12) and q == pytest.approx(rep["test"]["quality"], abs=1e-12)


def test_calibrate_contextual_refuses_cascade_only_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = toy_set(tmp_path)
    assert main(["calibrate", "--kind", "contextual", "--data", str(data), "--chain", "small,big",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--chain and --gate are for --kind cascade" in err and "Traceback" not in err
    assert main(["calibrate", "--kind", "contextual", "--data", str(data), "--config", "x.yaml",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--config needs --tier" in capsys.readouterr().err


def test_eval_contextual_reports_the_three_readings_and_the_calibrated_point(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = toy_set(tmp_path)
    out = tmp_path / "ctx"
    assert main(["calibrate", "--kind", "contextual", "--data", str(data), "--router-kind", "none",
                 "--out", str(out)]) == 0
    rep = json.loads((out / "calibration.json").read_text())
    capsys.readouterr()
    assert main(["eval", "--router", "contextual:none", "--data", str(data), "--bootstrap", "50"]) == 0
    text = capsys.readouterr().out
    for reading in ("contextual:none ours-τ (τ read on test)", "contextual:none ours-H (pool ",
                    "contextual:none ours-G (grid on "):
        assert reading in text
    # the eval's calibrated point is the point calibrate fitted (same target, same train fit)
    cb = float(text.split("cB=$")[1].split("/req")[0])
    cal = text.split("calibrated: q=")[1]
    assert float(cal.split()[0]) == pytest.approx(rep["test"]["quality"], abs=5e-5)
    assert float(cal.split("at ")[1].split("%")[0]) == pytest.approx(100 * rep["test"]["cost"] / cb, abs=0.06)
    assert "ΔAUC contextual:none ours-G" in text  # every router row gets its gain over kNN
    assert main(["eval", "--router", "contextual:magic", "--data", str(data)]) == 2
    assert "ensemble, knn, logreg, none" in capsys.readouterr().err
