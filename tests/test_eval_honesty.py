"""``tierwise eval`` says what it measured: the calibrated (train-fitted) point for learned routers and the kNN
baseline, a refusal for a cascade with no signal to gate on, undefined APGR (not ±inf/NaN) when the best model is the
cheapest, and precise errors for a missing or foreign router artifact."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import pytest

from tierwise.cli import build_parser, main
from tierwise.lab.datasets import ModelOutcome, OutcomeSet, PromptOutcomes, write_outcome_set


def two_model_set(tmp: Path, name: str, *, best_is_cheapest: bool, confidence: bool = True, n: int = 120) -> Path:
    rng = random.Random(5)
    prompts = []
    for i in range(n):
        topic = ("arith", "poem")[i % 2]
        cheap_ok = rng.random() < (0.9 if best_is_cheapest or topic == "poem" else 0.4)
        dear_ok = rng.random() < (0.6 if best_is_cheapest else 0.95)
        conf = {"confidence": 0.5 + 0.4 * cheap_ok} if confidence else {}
        prompts.append(PromptOutcomes(f"p{i}", "train" if i % 2 else "test", f"{topic} task {i} {rng.random():.6f}", {
            "cheap": ModelOutcome("x", float(cheap_ok), 10, 5, 1e-5, **conf),
            "dear": ModelOutcome("x", float(dear_ok), 10, 5, 1e-3)}))
    write_outcome_set(OutcomeSet(name, ["cheap", "dear"], prompts), tmp, stem=name)
    return tmp / f"{name}.jsonl.gz"


def test_learned_router_and_knn_show_the_calibrated_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = two_model_set(tmp_path, "twoset", best_is_cheapest=False)
    art = tmp_path / "r.npz"
    assert main(["train-router", "--data", str(data), "--kind", "knn", "--embedder", "minilm-static",
                 "--out", str(art)]) == 0
    capsys.readouterr()
    assert main(["eval", "--data", str(data), "--router", f"learned:{art}", "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    learned = next(line for line in out.splitlines() if line.startswith("learned:r.npz"))
    knn = next(line for line in out.splitlines() if line.startswith("knn (minilm-static"))
    assert "calibrated: q=" in learned and "calibrated: q=" in knn


def test_an_uncertified_router_calibrates_to_the_reference_alone(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A margin no knob can pass (``--z 50``): train-router says the calibrated point is the best train model alone,
    and eval's calibrated point is that model's test run (quality and cost), not the router's best-quality knob."""
    data = two_model_set(tmp_path, "twoset", best_is_cheapest=False)
    art = tmp_path / "r.npz"
    assert main(["train-router", "--data", str(data), "--kind", "knn", "--embedder", "minilm-static",
                 "--out", str(art), "--z", "50"]) == 0
    out = capsys.readouterr().out
    assert "no knob is certified cheaper than dear alone: serve it (policy priority, models [dear])" in out
    assert main(["eval", "--data", str(data), "--router", f"learned:{art}", "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    learned = next(line for line in out.splitlines() if line.startswith("learned:r.npz"))
    single = out.split("single models:")[1].splitlines()[0]
    q_dear = single.split("dear q=")[1].split()[0]
    assert f"calibrated: q={q_dear} at 100.0% cB" in learned


def test_cascade_without_confidences_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = two_model_set(tmp_path, "noconf", best_is_cheapest=False, confidence=False)
    for verb in (["eval", "--router", "cascade:logprob"], ["calibrate", "--gate", "logprob"]):
        assert main([*verb, "--data", str(data)]) == 2
        err = capsys.readouterr().err
        assert "no model has a log-prob confidence on every prompt: no logprob cascade to fit" in err


def test_apgr_is_undefined_not_infinite_when_best_is_cheapest(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    data = two_model_set(tmp_path, "cheapbest", best_is_cheapest=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert main(["eval", "--data", str(data), "--router", "cascade:logprob", "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert "best=cheap" in out and "APGR" in out
    for bad in ("inf", "nan"):
        assert bad not in out.lower().replace("cheap", "")
    name = "cascade:logprob (τ family)"
    cells = next(line for line in out.splitlines() if line.startswith(name))[len(name):].split()
    assert cells[6:8] == ["none", "none"]  # APGR, CPT(50%): no gap to recover


def test_artifact_errors_and_help_name_learned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = two_model_set(tmp_path, "twoset", best_is_cheapest=False)
    other = two_model_set(tmp_path / "o", "other", best_is_cheapest=False)
    art = tmp_path / "r.npz"
    # a router for other models: rename the models in a copy of the set, train on it
    renamed = (tmp_path / "o" / "other.meta.json")
    renamed.write_text(renamed.read_text().replace('"cheap"', '"gemini-2.0-flash-001"'))
    import gzip

    body = gzip.decompress((tmp_path / "o" / "other.jsonl.gz").read_bytes()).replace(b'"cheap"', b'"gemini-2.0-flash-001"')
    (tmp_path / "o" / "other.jsonl.gz").write_bytes(gzip.compress(body))
    assert main(["train-router", "--data", str(other), "--kind", "knn", "--embedder", "minilm-static",
                 "--out", str(art)]) == 0
    capsys.readouterr()
    assert main(["eval", "--data", str(data), "--router", f"learned:{art}"]) == 2
    err = capsys.readouterr().err
    assert "trained for models ['gemini-2.0-flash-001', 'dear']" in err and "no priced outcomes for" in err
    assert main(["eval", "--data", str(data), "--router", "learned:"]) == 2
    assert "needs the router artifact (.npz)" in capsys.readouterr().err
    assert main(["eval", "--data", str(data), "--router", f"learned:{tmp_path / 'missing.npz'}"]) == 2
    assert "missing.npz: no such file" in capsys.readouterr().err
    assert main(["eval", "--data", str(data), "--router", "magic"]) == 2
    assert "learned:ARTIFACT.npz" in capsys.readouterr().err
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    helptext = sub.choices["eval"].format_help()  # type: ignore[union-attr]
    assert "learned:ARTIFACT.npz" in helptext and "contextual" in helptext and "minilm-static" in helptext
