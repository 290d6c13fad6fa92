"""Offline = live: thresholds calibrated on the ledger's own recorded outcomes make exactly the decisions offline
(the replay engine) and live (a gateway whose mock upstream answers with the same texts, tokens and log-probs).

Recording: every prompt goes through a cascade that always escalates (threshold 1), so the ledger holds both rungs'
answers, costs and the small rung's gate confidence. ``tierwise calibrate --data ledger:…`` fits the threshold on
those records and writes it into the config; a second gateway serves that config against the same upstream. Per
prompt, the models called, the served model and the cost must be identical offline and live — including the prompt
whose confidence *is* the threshold (the ledger once rounded confidences to 6 decimals, so the calibrated threshold
sat above the live confidence and every such prompt escalated live)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer
from tierwise.cli import main
from tierwise.config.load import load_config
from tierwise.lab.datasets.ledger import load_data
from tierwise.lab.evaluate import run_tier

N = 48


def small_right(i: int) -> bool:
    return i % 4 != 0 and i % 7 != 3


def logprob_of(body: dict) -> float:
    """Per prompt and model: every token's log-prob. The small model's confidence exp(lp) is k·1e-6 + 7e-7, so
    rounding it to 6 decimals would round it *up*: a threshold taken from rounded records would sit above the live
    confidence of the prompt on the boundary."""
    i = int(re.search(r"#(\d+)", body["messages"][-1]["content"]).group(1))  # type: ignore[union-attr]
    if body["model"] == "large-up":
        return -0.01
    conf = (0.93 if small_right(i) else 0.6) - 0.0123 * ((i * 37) % 11) + 1e-6 * i + 7e-7
    return math.log(conf)


def reply_of(body: dict) -> str:
    i = int(re.search(r"#(\d+)", body["messages"][-1]["content"]).group(1))  # type: ignore[union-attr]
    words = " ".join(["word"] * (3 + i % 5))
    return f"{body['model']} answers {i}: {words}"


def config_text(upstream_url: str, ledger: Path, threshold: float) -> str:
    return f"""
server: {{request_deadline_s: 10}}
ledger: {{backend: sqlite, path: "{ledger}", flush_interval_ms: 20}}
providers:
  fake: {{format: openai, base_url: "{upstream_url}", api_key: sk-test, timeout_s: 5}}
models:
  small: {{provider: fake, upstream: small-up, price: {{input: 0.1, output: 0.4}}}}
  large: {{provider: fake, upstream: large-up, price: {{input: 2.5, output: 10}}}}
tiers:
  casc:
    policy: cascade
    cascade:
      rungs:
        - {{model: small, gate: {{kind: logprob, threshold: {threshold}}}}}
        - {{model: large}}
default_tier: casc
fallback_model: large
"""


def ask_all(gw: GatewayServer) -> dict[str, str]:
    """Send every prompt; request id -> prompt."""
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=20)
    ids = {}
    try:
        for i in range(N):
            prompt = f"Question #{i}: what is {i} + {i}?"
            raw = c.chat.completions.with_raw_response.create(model="casc",
                                                              messages=[{"role": "user", "content": prompt}])
            ids[raw.headers["x-tierwise-request-id"]] = prompt
    finally:
        c.close()
    gw.flush_ledger()
    return ids


def test_calibrated_on_ledger_decides_live_exactly_as_offline(upstream: FakeUpstream, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    upstream.set(reply=reply_of, logprob=logprob_of)
    cfg_path = tmp_path / "tierwise.yaml"
    cfg_path.write_text(config_text(upstream.base_url, tmp_path / "rec.db", 1.0))
    rec = GatewayServer(load_config(cfg_path)).start()
    try:
        ids = ask_all(rec)
        rows = {r["id"]: r for r in rec.rows()}
    finally:
        rec.stop()
    confs = [next(a["confidence"] for a in rows[rid]["attempts"] if a["model"] == "small") for rid in ids]
    assert all(0 < c < 1 for c in confs) and any(c != round(c, 6) for c in confs)  # stored at full precision
    labels = tmp_path / "labels.jsonl"
    with labels.open("w") as fh:
        for n, (rid, prompt) in enumerate(ids.items()):
            i = int(prompt.split("#")[1].split(":")[0])
            fh.write(json.dumps({"id": rid, "prompt": prompt, "split": "train" if n % 4 else "test",
                                 "quality": {"small": float(small_right(i)), "large": 1.0}}) + "\n")

    data = f"ledger:{tmp_path / 'rec.db'}:{labels}"
    out = tmp_path / "cal.json"
    assert main(["calibrate", "--data", data, "--gate", "logprob", "--chain", "small,large", "--z", "0",
                 "--cv-folds", "0", "--target-quality", "0.97", "--config", str(cfg_path), "--tier", "casc",
                 "--json", str(out)]) == 0, capsys.readouterr().err
    cal = json.loads(out.read_text())
    threshold = cal["thresholds"][0]
    assert 0 < threshold < 1 and threshold in confs  # the threshold is one recorded confidence: the boundary case

    # offline: the replay engine over every recorded prompt, with the config exactly as calibrate wrote it
    oset = load_data(data)
    live_cfg = load_config(cfg_path)
    assert live_cfg.tiers["casc"].cascade.rungs[0].gate.threshold == threshold
    offline = {r.prompt_id: r for r in run_tier(oset, cal["tier"])}
    passed = sum(r.served == "small" for r in offline.values())
    assert 0 < passed < N  # the calibrated gate really decides

    # live: a fresh gateway with the written config, the same upstream answers
    live_cfg.ledger.path = str(tmp_path / "live.db")
    gw = GatewayServer(live_cfg).start()
    try:
        live_ids = ask_all(gw)
        live_rows = {r["id"]: r for r in gw.rows()}
    finally:
        gw.stop()
    by_prompt = {prompt: live_rows[rid] for rid, prompt in live_ids.items()}
    for rid, prompt in ids.items():
        off, live = offline[rid], by_prompt[prompt]
        called = [a["model"] for a in live["attempts"]]
        assert (live["model"], called) == (off.served, off.models_called), prompt
        assert math.isclose(live["cost_usd"], off.cost, rel_tol=1e-12, abs_tol=1e-15), prompt
