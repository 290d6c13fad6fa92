"""``tierwise eval`` finds test prompts that also appear in train (exactly or near-exactly), warns, and prints the
table again without them."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tierwise.cli import main
from tierwise.lab.datasets import (
    ModelOutcome,
    OutcomeSet,
    PromptOutcomes,
    read_outcome_set,
    write_outcome_set,
)
from tierwise.lab.leakage import find_leakage, near_key


def leaky_set(tmp: Path) -> Path:
    rng = random.Random(1)
    prompts = []
    for i in range(160):
        split = "train" if i % 2 else "test"
        text = f"{('arith', 'poem')[i % 2]} question {i}: {rng.random():.8f}"
        if split == "test" and i % 10 == 2:
            text = prompts[i - 1].prompt  # a verbatim copy of a train prompt
        elif split == "test" and i % 10 == 6:
            text = "  " + prompts[i - 1].prompt.upper().replace(":", " ;") + "?"  # the same, re-typed
        ok = rng.random() < 0.6
        prompts.append(PromptOutcomes(f"p{i}", split, text, {  # type: ignore[arg-type]
            "cheap": ModelOutcome("x", float(ok), 10, 5, 1e-5, confidence=0.5 + 0.4 * ok),
            "dear": ModelOutcome("x", 1.0, 10, 5, 1e-3)}))
    write_outcome_set(OutcomeSet("leaky", ["cheap", "dear"], prompts), tmp, stem="leaky")
    return tmp / "leaky.jsonl.gz"


def test_near_key_and_find_leakage(tmp_path: Path) -> None:
    assert near_key("  What is 2+2? ") == near_key("what is 2 2") != near_key("what is 2+3")
    leak = find_leakage(read_outcome_set(leaky_set(tmp_path)))
    assert len(leak.exact) == 16 and len(leak.near) == 16 and leak.n_test == 80
    assert "32 of 80 test prompts also appear in train (16 exact, 16 near-exact" in leak.summary()


def test_eval_warns_and_reports_without_leaked_prompts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = leaky_set(tmp_path)
    assert main(["eval", "--data", str(data), "--router", "cascade:logprob", "--bootstrap", "20",
                 "--out", str(tmp_path / "out")]) == 0
    cap = capsys.readouterr()
    assert "warning: leaky: 32 of 80 test prompts also appear in train" in cap.err
    assert "Without them (n=48):" in cap.out
    first, second = cap.out.split("Without them (n=48):")
    assert "cascade:logprob (τ family)" in first and "cascade:logprob (τ family)" in second
    assert "Paired bootstrap" in second
    assert "Without them (n=48)" in (tmp_path / "out" / "table.txt").read_text()
    assert main(["eval", "--data", str(data), "--router", "knn", "--bootstrap", "0", "--leakage", "ignore"]) == 0
    assert "Without them" not in capsys.readouterr().out
