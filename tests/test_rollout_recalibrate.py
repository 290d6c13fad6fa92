"""tierwise calibrate --from-ledger through the public CLI, on traffic a real gateway served through a logprob-gated
cascade (mock upstream) and labelled through POST /v1/feedback."""

from __future__ import annotations

import math
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer
from tierwise.cli import main
from tierwise.config import load_config


def write_config(tmp: Path, url: str) -> Path:
    doc = {
        "ledger": {"backend": "sqlite", "path": str(tmp / "ledger.db"), "flush_interval_ms": 20},
        "retry": {"max_retries": 0},
        "providers": {"fake": {"format": "openai", "base_url": url, "api_key": "sk-test", "timeout_s": 2}},
        "models": {
            "small": {"provider": "fake", "upstream": "small-up", "price": {"input": 0.1, "output": 0.4}},
            "large": {"provider": "fake", "upstream": "large-up", "price": {"input": 2.5, "output": 10}},
        },
        "tiers": {"chat": {"policy": "cascade", "description": "helpful reply", "cascade": {"rungs": [
            {"model": "small", "gate": {"kind": "logprob", "threshold": 0.9}}, {"model": "large"}]}}},
        "default_tier": "chat",
        "fallback_model": "large",
    }
    path = tmp / "tierwise.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def serve(gw: GatewayServer, client: openai.OpenAI, upstream: FakeUpstream, confs: list[float],
          small_good_from: float) -> None:
    """One request per confidence; feedback on the served answer, and on small's answer when it was escalated."""
    with httpx.Client(base_url=gw.url) as fb:
        _serve(fb, client, upstream, confs, small_good_from)


def _serve(fb: httpx.Client, client: openai.OpenAI, upstream: FakeUpstream, confs: list[float],
           small_good_from: float) -> None:
    for i, conf in enumerate(confs):
        upstream.set(logprob=math.log(conf))
        raw = client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": f"request {i} at {conf:.3f}"}])
        rid = raw.headers["x-tierwise-request-id"]
        served = raw.parse().model
        good = 1.0 if conf >= small_good_from else 0.0
        r = fb.post("/v1/feedback", json={"request_id": rid, "score": good if served == "small" else 1.0})
        assert r.status_code == 200, r.text
        if served == "large":  # a labeller judged the escalated answer of small too
            r = fb.post("/v1/feedback", json={"request_id": rid, "source": "model:small", "score": good})
            assert r.status_code == 200, r.text


def test_from_ledger_refits_proposes_a_canary_and_reports_drift(upstream: FakeUpstream, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, upstream.base_url)
    original = path.read_bytes()
    gw = GatewayServer(load_config(path)).start()
    client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=20)
    try:
        serve(gw, client, upstream, [0.95] * 30, 0.6)  # before: nothing escalates
        mid = time.time()
        time.sleep(0.05)
        confs = [0.3 + 0.69 * ((i * 37) % 160) / 159 for i in range(160)]  # spread over [0.3, 0.99]
        serve(gw, client, upstream, confs, 0.6)  # now: small is good from 0.6, the gate (0.9) escalates below 0.9
        gw.flush_ledger()
    finally:
        client.close()
        gw.stop()
    proposal = tmp_path / "proposal.yaml"
    code = main(["calibrate", "--from-ledger", "--config", str(path), "--tier", "chat", "--since", str(mid),
                 "--propose", str(proposal), "--canary-share", "0.2", "--cv-folds", "0"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "160 answered requests in the window, 160 labelled" in out
    assert "0 escalated answers without a label scored 0" in out
    assert path.read_bytes() == original  # never applied
    cfg = load_config(proposal)
    assert cfg.canary is not None and cfg.canary.name == "recal-chat" and cfg.canary.share == 0.2
    rungs = cfg.canary.tiers["chat"].cascade.rungs
    assert [r.model for r in rungs] == ["small", "large"]
    new = rungs[0].gate.threshold
    assert 0.55 < new < 0.9, new  # lowered towards where small's answers are good (0.6), not below it by much
    assert cfg.tiers["chat"].cascade.rungs[0].gate.threshold == 0.9  # the proposal's own tiers: the incumbent
    assert cfg.canary.tiers["chat"].description == "helpful reply"
    drift_lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and "before" in line}
    assert "DRIFTED" in drift_lines["escalation_rate"] and "DRIFTED" in drift_lines["gate_confidence[small]"]


def test_from_ledger_refuses_what_it_cannot_do(upstream: FakeUpstream, tmp_path: Path, capsys) -> None:
    path = write_config(tmp_path, upstream.base_url)
    GatewayServer(load_config(path)).start().stop()  # creates the ledger
    assert main(["calibrate", "--from-ledger", "--config", str(path), "--tier", "nope", "--since", "1d"]) == 2
    assert "--tier nope: not a cascade tier" in capsys.readouterr().err
    assert main(["calibrate", "--from-ledger", "--config", str(path), "--tier", "chat"]) == 2
    assert "needs --config" in capsys.readouterr().err
    assert main(["calibrate", "--from-ledger", "--config", str(path), "--tier", "chat", "--since", "1d"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err  # no labelled traffic: the lab's own refusal
    assert main(["calibrate"]) == 2 and "--data" in capsys.readouterr().err
    assert not (tmp_path / "tierwise.canary.yaml").exists()
