"""``tierwise whatif`` (captured prompts through the engine under a candidate config) and ``tierwise advise``,
through the public CLI over real gateway traffic and synthetic ledgers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for
from tests.rollout_data import config_file, rows
from tierwise.cli import main
from tierwise.lab.datasets.format import ModelOutcome, OutcomeSet, PromptOutcomes
from tierwise.lab.datasets.outcome_io import write_outcome_set
from tierwise.ledger import SQLiteLedgerStore


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def _candidate(cfg_path: Path, out: Path, chat: dict[str, Any]) -> Path:
    doc = yaml.safe_load(cfg_path.read_text())
    doc["tiers"]["chat"] = chat
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def test_whatif_replays_captures_under_a_candidate_policy(upstream: FakeUpstream, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_for(upstream.base_url, tmp_path, extra="rollout: {capture: {enabled: true}}\n")
    g = GatewayServer(cfg).start()
    ids = []
    try:
        c = openai.OpenAI(base_url=g.base_url, api_key="unused", max_retries=0, timeout=20)
        for i in range(6):
            raw = c.chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "user", "content": f"question {i} " + "words " * 40}])
            ids.append(raw.headers["x-tierwise-request-id"])
        c.chat.completions.create(model="label", messages=[{"role": "user", "content": "a label"}])
        for rid, score in zip(ids[:4], (1.0, 1.0, 0.0, 1.0), strict=True):
            assert httpx.post(f"{g.base_url}/feedback", json={"request_id": rid, "score": score}).status_code == 200
        g.flush_ledger()
        assert g.svc is not None and g.svc.capture is not None and g.svc.capture.flush()
    finally:
        g.stop()
    path = config_file(cfg, tmp_path / "tierwise.yaml")
    cheapest = _candidate(path, tmp_path / "cheapest.yaml", {"models": ["large", "small"], "policy": "cheapest"})

    doc = _json(capsys, "whatif", "-c", str(path), "--candidate", str(cheapest), "--format", "json")
    chat = next(t for t in doc["tiers"] if t["tier"] == "chat")
    assert chat["requests"] == 6 and chat["served_models"] == {"large": 6}
    assert chat["candidate_models"] == {"small": 6} and chat["changed"] == 6
    assert chat["replay_agreement"] == 1.0  # the current config's replay reproduces what was served
    assert chat["current_usd"] == pytest.approx(chat["served_usd"], rel=1e-9)  # same tokens, same prices
    assert 0 < chat["candidate_usd"] < chat["current_usd"]
    assert chat["labelled"] == 4 and chat["quality_n"] == 0  # small has no label: not guessed
    assert any("--outcomes" in n for n in doc["notes"])
    label = next(t for t in doc["tiers"] if t["tier"] == "label")
    assert label["changed"] == 0 and label["candidate_usd"] == pytest.approx(label["current_usd"])

    # with the trial's outcome set, the candidate's quality on the labelled requests is known
    oset = OutcomeSet("trial", ["small"], [
        PromptOutcomes(rid, "test", "q", {"small": ModelOutcome("a", q, 10, 5, 0.0)})
        for rid, q in zip(ids, (1.0, 0.0, 0.0, 1.0, 1.0, 1.0), strict=True)])
    stem = write_outcome_set(oset, tmp_path / "sets")
    doc = _json(capsys, "whatif", "-c", str(path), "--candidate", str(cheapest), "--format", "json", "--tier", "chat",
                "--outcomes", str(stem))
    chat = doc["tiers"][0]
    assert chat["quality_n"] == 4
    assert chat["quality_current"] == pytest.approx(0.75) and chat["quality_candidate"] == pytest.approx(0.5)

    # a cascade candidate: a range from the first rung alone to every rung
    cascade = _candidate(path, tmp_path / "cascade.yaml", {"policy": "cascade", "cascade": {"rungs": [
        {"model": "small", "gate": {"kind": "logprob", "threshold": 0.5}}, {"model": "large"}]}})
    doc = _json(capsys, "whatif", "-c", str(path), "--candidate", str(cascade), "--format", "json", "--tier", "chat")
    chat = doc["tiers"][0]
    assert chat["candidate_usd"] < chat["candidate_high_usd"]
    assert chat["candidate_high_usd"] == pytest.approx(chat["candidate_usd"] + chat["current_usd"], rel=1e-9)
    assert main(["whatif", "-c", str(path), "--candidate", str(cascade)]) == 0
    assert "candidate picks" in capsys.readouterr().out

    # bad input: a candidate that does not parse, a window without captures
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: {chat: {policy: sometimes}}\n")
    with pytest.raises(SystemExit) as exc:
        main(["whatif", "-c", str(path), "--candidate", str(bad)])
    assert exc.value.code == 2 and "--candidate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["whatif", "-c", str(path), "--candidate", str(cheapest), "--since", str(time.time() + 3600)])
    assert "no captured prompts" in capsys.readouterr().err


def _ledger(tmp_path: Path, rs: list[dict[str, Any]]) -> Path:
    store = SQLiteLedgerStore(tmp_path / "ledger.db")
    store.write_batch(rs)
    store.close()
    return tmp_path / "ledger.db"


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    return config_file(config_for("http://127.0.0.1:9/v1", tmp_path), tmp_path / "tierwise.yaml")


def _advise(capsys: pytest.CaptureFixture[str], cfg_path: Path, db: Path, *extra: str) -> dict[str, Any]:
    doc = _json(capsys, "advise", "-c", str(cfg_path), "--db", str(db), "--since", "1790000000", "--until",
                "1796083200", "--format", "json", *extra)
    doc["by"] = {v["check"]: v for v in doc["verdicts"]}
    return doc


def test_advise_verdicts_with_their_numbers(tmp_path: Path, cfg_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rs = list(rows(3000))
    db = _ledger(tmp_path, rs)
    doc = _advise(capsys, cfg_path, db)
    assert doc["by"]["enough traffic"]["blocks"] is False
    assert doc["by"]["task mix"]["blocks"] is False and doc["by"]["task mix"]["numbers"]["largest"] == "chat"
    spend = doc["by"]["spend"]
    assert spend["numbers"]["spend_usd"] == pytest.approx(sum(r["cost_usd"] for r in rs), rel=1e-9)
    # ~$14 over 30 days: the ceiling is far below the $500/month routing costs to own
    assert spend["blocks"] is True and doc["route"] is False and "spend" in doc["summary"]
    assert 0 < spend["numbers"]["max_savings_per_month_usd"] < spend["numbers"]["spend_per_month_usd"]

    cheap = _advise(capsys, cfg_path, db, "--engineering-usd", "1")
    assert cheap["route"] is True and "routing should pay" in cheap["summary"]
    assert "confirm quality with tierwise trial" in cheap["summary"]

    trial = tmp_path / "trial.json"
    trial.write_text(json.dumps({"tiers": {
        "chat": {"incumbent": "large", "incumbent_quality": 0.92,
                 "candidates": {"small": {"n": 200, "quality": 0.71, "ci_low": 0.65, "ci_high": 0.77}}},
        "cheap": {"incumbent": "large", "incumbent_quality": 0.9,
                  "candidates": {"small": {"n": 200, "quality": 0.9, "ci_low": 0.86, "ci_high": 0.94}}}}}))
    tried = _advise(capsys, cfg_path, db, "--engineering-usd", "1", "--trial", str(trial))
    verdict = tried["by"]["trial"]
    assert verdict["blocks"] is True and list(verdict["numbers"]["failing"]) == ["chat"]
    assert "small reaches at most 0.77 against the incumbent's 0.92" in verdict["says"]
    assert "chat" not in tried["by"]["capability"]["numbers"]["routable_tiers"]
    assert tried["route"] is False

    assert main(["advise", "-c", str(cfg_path), "--db", str(db), "--since", "1790000000"]) == 0
    out = capsys.readouterr().out
    assert "[NO ] spend:" in out and "[ok ] task mix:" in out

    trial.write_text('{"tiers": {"chat": {"candidates": {}}}}')
    with pytest.raises(SystemExit) as exc:
        main(["advise", "-c", str(cfg_path), "--db", str(db), "--trial", str(trial)])
    assert exc.value.code == 2 and "needs a numeric incumbent_quality" in capsys.readouterr().err


def test_advise_no_task_mix_one_capability_and_empty_ledger(tmp_path: Path, cfg_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    rs = list(rows(1500, seed=4))
    for r in rs:
        r["tier"] = "think"
    doc = _advise(capsys, cfg_path, _ledger(tmp_path, rs), "--engineering-usd", "1")
    assert doc["by"]["task mix"]["blocks"] is True and doc["by"]["task mix"]["numbers"]["largest_share"] == 1.0
    assert "no task mix yet" in doc["by"]["task mix"]["says"]
    # think offers only 'thinker' (44% of large's blended price): routable; only direct names are not
    assert doc["by"]["capability"]["blocks"] is False

    direct = tmp_path / "direct"
    direct.mkdir()
    for r in rs:
        r["tier"] = None
    doc = _advise(capsys, cfg_path, _ledger(direct, rs), "--engineering-usd", "1")
    assert doc["by"]["capability"]["blocks"] is True and doc["by"]["capability"]["numbers"]["share"] == 1.0

    empty = tmp_path / "empty"
    empty.mkdir()
    SQLiteLedgerStore(empty / "ledger.db").close()
    doc = _advise(capsys, cfg_path, empty / "ledger.db")
    assert doc["by"]["enough traffic"]["blocks"] is True and doc["route"] is False
    assert doc["by"]["enough traffic"]["numbers"]["requests"] == 0
