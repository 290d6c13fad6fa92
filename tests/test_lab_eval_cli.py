"""``tierwise calibrate`` / ``tierwise eval``: clean errors on bad input (exit 2, no traceback), one dump line per
held-out prompt × knob, config writing, and the report files."""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import pytest

from tests.shared_data import needs_data
from tierwise.lab.datasets import load_set, write_outcome_set
from tierwise.lab.eval_cli import add_parsers


def run(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="tierwise")
    add_parsers(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    return args.fn(args)


@needs_data
def test_unknown_models_name_the_available_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["calibrate", "--data", "mot/date", "--relative-to", "gpt-5"]) == 2
    err = capsys.readouterr().err
    assert "gpt-5" in err and "gpt-3.5-turbo, gpt-4" in err and "Traceback" not in err
    assert run(["calibrate", "--data", "mot/date", "--chain", "gpt-4,claude"]) == 2
    assert "claude" in capsys.readouterr().err
    assert run(["eval", "--data", "mot/date", "--router", "magic"]) == 2
    assert "unknown router" in capsys.readouterr().err


def test_unknown_set_and_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["calibrate", "--data", "nope/set"]) == 2
    assert "--data 'nope/set': neither a known set" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl.gz"
    (tmp_path / "bad.meta.json").write_text(json.dumps({"name": "bad", "models": ["a", "b"], "format_version": 1}))
    with gzip.open(bad, "wt") as fh:
        fh.write(json.dumps({"id": "x", "split": "train", "prompt": "p", "models": {"a": {"quality": 1}}}) + "\n")
    assert run(["calibrate", "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.jsonl.gz" in err and "Traceback" not in err


@needs_data
def test_dump_one_line_per_prompt_and_knob(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dump = tmp_path / "d.jsonl"
    assert run(["eval", "--data", "mot/date", "--router", "cascade:vote", "--dump", str(dump), "--out",
                str(tmp_path / "out"), "--plot"]) == 0
    lines = [json.loads(x) for x in dump.read_text().splitlines()]
    test_ids = set(load_set("mot/date").split("test").ids())
    knobs = {d["knob"] for d in lines}
    assert len(lines) == len(knobs) * len(test_ids) and len(knobs) > 10
    assert {(d["prompt_id"], d["knob"]) for d in lines} == {(i, k) for i in test_ids for k in knobs}
    for d in lines[:50]:
        assert set(d) == {"dataset", "prompt_id", "knob", "models_called", "served", "cost", "quality"}
        assert d["served"] == d["models_called"][-1] and d["dataset"] == "mot/date"
    out = capsys.readouterr().out
    assert "cascade:vote" in out and "oracle" in out and "calibrated:" in out and "hindsight" in out
    html = (tmp_path / "out" / "plot.html").read_text()
    assert "<svg" in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert (tmp_path / "out" / "table.txt").exists()
    assert "Paired bootstrap of the test split (200 draws" in out and "ΔAUC cascade:vote" in out
    assert "Paired bootstrap" in (tmp_path / "out" / "table.txt").read_text()


@needs_data
def test_eval_without_bootstrap_has_no_interval_section(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["eval", "--data", "mot/date", "--router", "knn", "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert "knn" in out and "Paired bootstrap" not in out


@needs_data
def test_calibrate_writes_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    oset = load_set("fanconi/arc_challenge/qwen")
    models = "\n".join(f"  {m}: {{provider: p, price: {{input: 0.1, output: 0.2}}}}" for m in oset.models)
    cfg = tmp_path / "tierwise.yaml"
    cfg.write_text(f'providers:\n  p: {{format: openai, base_url: "http://127.0.0.1:9/v1"}}\nmodels:\n{models}\n'
                   f"tiers:\n  qa: {{models: [{oset.models[0]}]}}\ndefault_tier: qa\nfallback_model: {oset.models[1]}\n")
    out_json = tmp_path / "r.json"
    assert run(["calibrate", "--data", "fanconi/arc_challenge/qwen", "--target-quality", "0.9", "--config", str(cfg),
                "--tier", "qa", "--json", str(out_json)]) == 0
    res = json.loads(out_json.read_text())
    assert res["train"]["feasible"] and res["test"]["quality_ci95"][0] <= res["test"]["quality"]
    assert "selection guard: the train slack had to exceed" in capsys.readouterr().out
    assert res["train"]["selection_guard"] >= 0
    assert (tmp_path / "tierwise.yaml.bak").exists()
    from tierwise.config.load import load_config

    tier = load_config(cfg).tiers["qa"]
    assert [r.model for r in tier.cascade.rungs] == res["chain"]


@needs_data
def test_calibrate_cv_folds_zero_turns_the_guard_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    for folds in ("0", "5"):
        assert run(["calibrate", "--data", "zellinger/gsm8k/llama", "--cv-folds", folds, "--json", str(out)]) == 0
        guard = json.loads(out.read_text())["train"]["selection_guard"]
        assert (guard == 0.0) if folds == "0" else (guard > 0.0)
    assert "Traceback" not in capsys.readouterr().err


def test_local_outcome_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An outcome file written in the documented format calibrates end to end (no shared data needed)."""
    from tierwise.lab.datasets import ModelOutcome, OutcomeSet, PromptOutcomes

    prompts = []
    for i in range(80):
        easy = i % 3 != 0
        prompts.append(PromptOutcomes(f"p{i}", "train" if i % 2 else "test", f"q{i}", {
            "s": ModelOutcome("a", float(easy), 10, 5, 1e-5, confidence=0.9 if easy else 0.3),
            "b": ModelOutcome("a", 1.0, 10, 5, 1e-3, confidence=0.99)}))
    write_outcome_set(OutcomeSet("toy", ["s", "b"], prompts), tmp_path, stem="toy")
    assert run(["calibrate", "--data", str(tmp_path / "toy.jsonl.gz"), "--target-quality", "0.99", "--z", "0"]) == 0
    out = capsys.readouterr().out
    assert "s -> b" in out and "test target" in out and ": met" in out
