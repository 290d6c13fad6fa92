"""The scripted rollout (bench/rollout_e2e.py) in its reduced form: every step a real tierwise command — serve with
capture, sample, trial, calibrate, serve with a 20 % canary, canary report, promote --write-config, calibrate
--from-ledger — with mock upstreams for the flagship and the local models (the real run uses llama.cpp)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_rollout_runs_end_to_end_with_mock_models(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import rollout_e2e
    finally:
        sys.path.remove(str(ROOT / "bench"))
    assert rollout_e2e.main(["--mock-local", "--out", str(tmp_path), "--repeat", "2"]) == 0
    res = json.loads((tmp_path / "rollout_e2e.json").read_text())
    assert len(res["times_s"]) == 8 and all(v > 0 for v in res["times_s"].values())
    trial = res["trial"]["tiers"]["qa"]["candidates"]
    assert trial["smollm2-135m"]["quality"] < trial["qwen2.5-coder-0.5b"]["quality"] == 1.0  # the mock's design
    tier = res["candidate_tier"]
    assert tier["policy"] == "cascade" and [r["model"] for r in tier["cascade"]["rungs"]] == [
        "smollm2-135m", "qwen2.5-coder-0.5b"]
    m = {x["metric"]: x for x in res["canary_report"]["metrics"]}
    cost = m["cost_per_request_usd"]
    assert cost["n_control"] + cost["n_canary"] == 108 and cost["canary"] < cost["control"] and cost["significant"]
    assert m["quality_score"]["n_control"] + m["quality_score"]["n_canary"] == 108
    assert "promote: share 0.2 -> 1" in res["promote"]
    promoted = yaml.safe_load((Path(res["workdir"]) / "tierwise.yaml").read_text())
    assert "canary" not in promoted and promoted["tiers"]["qa"]["policy"] == "cascade"
    assert "proposed as canary 'recal-qa'" in res["recalibrate"]
    assert (tmp_path / "rollout_e2e.md").read_text().startswith("# Rollout end to end")
