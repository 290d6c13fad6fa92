"""Latency in the trade-off, through the CLI: ``calibrate`` and ``eval`` print p50/p95 latency and streaming TTFT of
their operating points from the set's recorded latencies (or modelled from tokens, and say so), and ``calibrate
--max-p95-latency-ms`` removes the candidate points that break the cap on train."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest

from tierwise.lab.datasets import ModelOutcome, OutcomeSet, PromptOutcomes, write_outcome_set
from tierwise.lab.eval_cli import add_parsers


def run(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="tierwise")
    add_parsers(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    return args.fn(args)


def write_set(tmp: Path, recorded: bool, meta: dict | None = None) -> str:
    """s: cheap, fast, right on 2 prompts of 3 (confident there); b: dear, slow, always right."""
    prompts = []
    for i in range(80):
        easy = i % 3 != 0
        lat_s = {"latency_ms": 100.0, "ttft_ms": 20.0} if recorded else {}
        lat_b = {"latency_ms": 1000.0, "ttft_ms": 50.0} if recorded else {}
        prompts.append(PromptOutcomes(f"p{i}", "train" if i % 2 else "test", f"q{i}", {
            "s": ModelOutcome("a", float(easy), 10, 5, 1e-5, confidence=0.9 if easy else 0.3, **lat_s),
            "b": ModelOutcome("a", 1.0, 10, 40, 1e-3, confidence=0.99, **lat_b)}))
    write_outcome_set(OutcomeSet("lat", ["s", "b"], prompts, meta or {}), tmp, stem="lat")
    return str(tmp / "lat.jsonl.gz")


def numbers(line: str) -> list[float]:
    return [float(x) for x in re.findall(r"(\d+(?:\.\d+)?) ms", line)]


def test_calibrate_reports_recorded_latency_of_the_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_set(tmp_path, recorded=True)
    out_json = tmp_path / "r.json"
    assert run(["calibrate", "--data", data, "--z", "0", "--cv-folds", "0", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "s -> b" in out
    test_line = next(ln for ln in out.splitlines() if "latency test:" in ln)
    # test split: 26 easy prompts served by s (100 ms; its gated answer is released whole: TTFT 100), 14 escalated
    # to b (100 + 1000 ms; TTFT 100 + b's 50 ms, b streams ungated)
    lat = np.array([100.0] * 26 + [1100.0] * 14)
    ttft = np.array([100.0] * 26 + [150.0] * 14)
    want = [np.percentile(lat, 50), np.percentile(lat, 95), np.percentile(ttft, 50), np.percentile(ttft, 95)]
    assert numbers(test_line) == pytest.approx([round(w) for w in want])
    assert "as recorded" in out and "MODELLED" not in out
    rep = json.loads(out_json.read_text())
    assert rep["latency"]["test"]["p95_ms"] == pytest.approx(want[1])


def test_latency_cap_removes_slow_points_on_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_set(tmp_path, recorded=True)
    # the cascade's train p95 is 1100 ms and b alone is 1000 ms: under a 500 ms cap only s alone is left
    assert run(["calibrate", "--data", data, "--z", "0", "--cv-folds", "0", "--max-p95-latency-ms", "500"]) == 0
    out = capsys.readouterr().out
    chain_line = next(ln for ln in out.splitlines() if "chain:" in ln)
    assert "chain: s " in chain_line and "->" not in chain_line
    train_line = next(ln for ln in out.splitlines() if "latency train:" in ln)
    assert numbers(train_line)[1] <= 500
    # a cap that b alone meets but the cascade does not: b alone
    assert run(["calibrate", "--data", data, "--z", "0", "--cv-folds", "0", "--max-p95-latency-ms", "1050"]) == 0
    out = capsys.readouterr().out
    assert "chain: b " in next(ln for ln in out.splitlines() if "chain:" in ln)
    # nothing is fast enough: a precise refusal, no traceback
    assert run(["calibrate", "--data", data, "--max-p95-latency-ms", "50"]) == 2
    err = capsys.readouterr().err
    assert "p95 latency <= 50 ms" in err and "100 ms" in err and "Traceback" not in err
    assert run(["calibrate", "--data", data, "--max-p95-latency-ms", "-1"]) == 2
    assert "positive" in capsys.readouterr().err


def test_modelled_latency_is_said_and_follows_the_meta_rates(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    rates = {"models": {"s": {"base_ms": 10, "ms_per_input_token": 1, "ms_per_output_token": 2},
                        "b": {"base_ms": 100, "ms_per_input_token": 1, "ms_per_output_token": 10}}}
    data = write_set(tmp_path, recorded=False, meta={"latency_model": rates})
    assert run(["calibrate", "--data", data, "--z", "0", "--cv-folds", "0"]) == 0
    out = capsys.readouterr().out
    assert "MODELLED from tokens" in out and "meta latency_model" in out
    # s: ttft 10 + 10 = 20, latency 20 + 5·2 = 30; b: ttft 100 + 10 = 110, latency 110 + 40·10 = 510
    lat = np.array([30.0] * 26 + [540.0] * 14)
    ttft = np.array([30.0] * 26 + [140.0] * 14)
    want = [np.percentile(lat, 50), np.percentile(lat, 95), np.percentile(ttft, 50), np.percentile(ttft, 95)]
    line = next(ln for ln in out.splitlines() if "latency test:" in ln)
    assert numbers(line) == pytest.approx([round(w) for w in want])
    # no meta: tierwise's defaults, named as such
    data = write_set(tmp_path / "d", recorded=False)
    assert run(["calibrate", "--data", data, "--z", "0", "--cv-folds", "0"]) == 0
    out = capsys.readouterr().out
    assert "MODELLED from tokens" in out and "defaults" in out and "20 ms/output token" in out


def test_bad_latency_model_meta_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_set(tmp_path, recorded=False, meta={"latency_model": {"default": {"ms_per_tok": 3}}})
    assert run(["calibrate", "--data", data]) == 2
    err = capsys.readouterr().err
    assert "ms_per_tok" in err and "Traceback" not in err


def test_eval_prints_latency_of_each_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_set(tmp_path, recorded=True)
    assert run(["eval", "--data", data, "--router", "cascade:logprob", "--bootstrap", "0", "--z", "0",
                "--cv-folds", "0", "--leakage", "ignore"]) == 0
    out = capsys.readouterr().out
    assert "Latency of each operating point" in out and "as recorded" in out
    lines = out.splitlines()
    single_b = next(ln for ln in lines if ln.strip().startswith("single:b ") and "1000" in ln)
    assert [float(x) for x in single_b.split()[1:]] == [1000, 1000, 50, 50]
    single_s = next(ln for ln in lines if ln.strip().startswith("single:s ") and " 100 " in ln)
    assert [float(x) for x in single_s.split()[1:]] == [100, 100, 20, 20]
    casc = next(ln for ln in lines if "cascade:logprob (τ family): calibrated" in ln)
    assert [float(x) for x in casc.split()[-4:]] == [100, 1100, 100, 150]


def test_partly_recorded_latency_is_used_where_present_and_said(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Ledger-like data: some outcomes carry a latency, others not; the recorded ones are used as they are."""
    from tierwise.lab.latency import LatencyModel

    prompts = [PromptOutcomes(f"p{i}", "test", "q", {
        "s": ModelOutcome("a", 1.0, 10, 5, 1e-5, latency_ms=77.0 if i < 3 else None)}) for i in range(5)]
    lm = LatencyModel(OutcomeSet("part", ["s"], prompts))
    assert [lm.latency(f"p{i}", "s") for i in range(5)] == [77.0] * 3 + [300 + 10 * 0.2 + 5 * 20.0] * 2
    assert lm.ttft("p0", "s") == 77.0  # the modelled TTFT (302 ms) capped at the recorded latency
    assert "partly recorded" in lm.provenance() and "s 3/5" in lm.provenance()
