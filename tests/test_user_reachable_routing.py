"""The user-reachable routing method through the CLI: ``eval --router contextual`` prints ours-CV first (the sub-pool
chosen by cross-validation on train) and ``calibrate --kind contextual --pool auto --procedure none`` fits exactly
its points; the calibration procedures are selectable and say what they chose; the leakage table is re-read from
the runs already made; offline replay keeps its prompts' token counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_contextual_cli import toy_set
from tests.test_eval_leakage import leaky_set
from tierwise.cli import main
from tierwise.lab.datasets import read_outcome_set, write_outcome_set
from tierwise.lab.leakage import find_leakage, without


def test_calibrate_pool_auto_reproduces_eval_ours_cv_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = toy_set(tmp_path)
    dump = tmp_path / "dump.jsonl"
    assert main(["eval", "--router", "contextual:none", "--data", str(data), "--bootstrap", "30",
                 "--dump", str(dump)]) == 0
    text = capsys.readouterr().out
    first = text.splitlines()[3]  # title, header, rule, then the first router row
    assert first.startswith("contextual:none ours-CV (pool ") and "by train CV; τ read on test)" in first
    assert "calibrated: q=" in first and "calibrated by " in first
    assert "ΔAUC contextual:none ours-CV" in text  # its paired-bootstrap interval against kNN
    lines = [json.loads(x) for x in dump.read_text().splitlines()]
    at = [x for x in lines if x["reading"] == "ours-CV" and x["knob"] == 0.99]
    assert len(at) == 120
    out = tmp_path / "ctx"
    assert main(["calibrate", "--kind", "contextual", "--data", str(data), "--router-kind", "none", "--pool", "auto",
                 "--procedure", "none", "--target-quality", "0.99", "--out", str(out)]) == 0
    rep = json.loads((out / "calibration.json").read_text())
    assert rep["procedure"] == "none" and "best cross-validated train AUC" in rep["searched"]
    assert rep["test"]["cost"] == pytest.approx(sum(x["cost"] for x in at) / 120, rel=1e-12)
    assert rep["test"]["quality"] == pytest.approx(sum(x["quality"] for x in at) / 120, abs=1e-12)


@pytest.mark.parametrize("procedure", ["families", "crossfit"])
def test_calibration_procedures_say_what_they_chose(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    procedure: str) -> None:
    data = toy_set(tmp_path)
    out = tmp_path / "ctx"
    assert main(["calibrate", "--kind", "contextual", "--data", str(data), "--router-kind", "none",
                 "--target-quality", "0.95", "--procedure", procedure, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"procedure {procedure}: " in text
    rep = json.loads((out / "calibration.json").read_text())
    assert rep["procedure"] == procedure and rep["procedure_detail"]
    from tierwise.lab.evaluate import means, run_tier

    c, q = means(run_tier(read_outcome_set(data).split("test"), rep["tier"]))
    assert c == pytest.approx(rep["test"]["cost"], rel=1e-12) and q == pytest.approx(rep["test"]["quality"], abs=1e-12)
    assert main(["calibrate", "--kind", "contextual", "--data", str(data), "--router-kind", "none", "--pool",
                 "small,nope", "--out", str(out)]) == 2
    assert "--pool small,nope: unknown or unpriced model(s) ['nope']" in capsys.readouterr().err


def test_leakage_table_is_the_same_routers_on_the_other_prompts(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The "without them" table equals ``eval`` on the set with those test prompts removed for every row fitted on
    train alone (the cascade's τ family, single models, random mixing, oracle) — no second engine pass needed."""
    data = leaky_set(tmp_path)
    assert main(["eval", "--data", str(data), "--router", "cascade:logprob", "--bootstrap", "0"]) == 0
    clean_part = capsys.readouterr().out.split("Without them (n=48):")[1]
    oset = read_outcome_set(data)
    write_outcome_set(without(oset, find_leakage(oset).ids), tmp_path / "clean", stem="leaky")
    assert main(["eval", "--data", str(tmp_path / "clean" / "leaky.jsonl.gz"), "--router", "cascade:logprob",
                 "--bootstrap", "0", "--leakage", "ignore"]) == 0
    fresh = capsys.readouterr().out
    for prefix in ("cascade:logprob (τ family)", "single:cheap", "single:dear", "random mixing", "oracle", "best="):
        ours = next(x for x in clean_part.splitlines() if x.startswith(prefix))
        assert ours == next(x for x in fresh.splitlines() if x.startswith(prefix))


def test_replay_keeps_every_prompt_token_count_while_it_runs() -> None:
    from tierwise.cost import tokens as tok

    count = tok._counter("o200k_base")
    cache = next(c.cell_contents for c in count.__closure__ if isinstance(c.cell_contents, dict))
    texts = [f"replayed prompt number {i}" for i in range(tok.COUNT_CACHE_SIZE + 100)]
    with tok.reserve_count_cache(len(texts)):
        for t in texts:
            count(t)
        assert all((hash(t), len(t)) in cache for t in texts)  # a second pass would tokenize nothing
    size = len(cache)
    count("one more after the replay")
    assert len(cache) == size  # bounded again: the oldest entry made room
