"""Canary through the real gateway and the public CLI: sticky arms on the ledger, the report with intervals,
promote / rollback as recorded one-command changes that running gateways pick up, and config errors."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer
from tierwise.cli import main
from tierwise.config import ConfigError, load_config, load_config_text
from tierwise.rollout.canary import bucket

NAME = "small-chat"


def write_config(tmp: Path, upstream_url: str, share: float = 0.5, refresh_s: float = 0.1) -> Path:
    doc = {
        "ledger": {"backend": "sqlite", "path": str(tmp / "ledger.db"), "flush_interval_ms": 20},
        "retry": {"max_retries": 0, "base_delay_ms": 5},
        "providers": {"fake": {"format": "openai", "base_url": upstream_url, "api_key": "sk-test", "timeout_s": 2}},
        "models": {
            "small": {"provider": "fake", "upstream": "small-up", "price": {"input": 0.1, "output": 0.4}},
            "large": {"provider": "fake", "upstream": "large-up", "price": {"input": 2.5, "output": 10}},
        },
        "tiers": {"chat": {"models": ["large"], "policy": "priority"}},
        "default_tier": "chat",
        "fallback_model": "large",
        "canary": {"name": NAME, "share": share, "refresh_s": refresh_s,
                   "tiers": {"chat": {"models": ["small"], "fallback": "small"}}},
    }
    path = tmp / "tierwise.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def setup(upstream: FakeUpstream, tmp_path: Path) -> Iterator[tuple[Path, GatewayServer, openai.OpenAI]]:
    path = write_config(tmp_path, upstream.base_url)
    gw = GatewayServer(load_config(path)).start()
    client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=20)
    try:
        yield path, gw, client
    finally:
        client.close()
        gw.stop()


def ask(client: openai.OpenAI, session: str, text: str = "hello there") -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model="chat", messages=[{"role": "user", "content": text}],
                                          extra_headers={"X-Session-Id": session})


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_arms_are_sticky_per_session_and_recorded_on_every_ledger_row(setup) -> None:
    _, gw, client = setup
    sessions = [f"s{i}" for i in range(40)]
    served = {s: ask(client, s).model for s in sessions}
    for s in sessions[:10]:  # again: same arm
        assert ask(client, s).model == served[s]
    expect = {s: "small" if bucket(NAME, s) < 0.5 else "large" for s in sessions}
    assert served == expect
    assert 10 < sum(m == "small" for m in served.values()) < 30  # about half
    rows = gw.rows()
    assert len(rows) == 50
    for r in rows:
        arm = f"canary:{NAME}" if expect[r["session_id"]] == "small" else f"control:{NAME}"
        assert r["arm"] == arm and r["model"] == expect[r["session_id"]]


def test_report_compares_the_arms_with_intervals_and_quality_from_feedback(
        setup, upstream: FakeUpstream, capsys: pytest.CaptureFixture[str]) -> None:
    path, gw, client = setup
    ids: dict[str, str] = {}
    for i in range(60):
        raw = client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "please answer " + "word " * (i % 7 + 1)}],
            extra_headers={"X-Session-Id": f"user-{i}"})
        ids[raw.headers["x-tierwise-request-id"]] = raw.parse().model
    with httpx.Client(base_url=gw.url) as fb:
        for rid, model in ids.items():  # users like the large model's answers better
            r = fb.post("/v1/feedback", json={"request_id": rid, "score": 0.9 if model == "large" else 0.5})
            assert r.status_code == 200, r.text
    gw.flush_ledger()
    out = json.loads(cli(capsys, "canary", "report", NAME, "-c", str(path), "--format", "json"))
    m = {x["metric"]: x for x in out["metrics"]}
    assert out["share"] == 0.5 and m["cost_per_request_usd"]["n_control"] + m["cost_per_request_usd"]["n_canary"] == 60
    cost = m["cost_per_request_usd"]
    assert cost["canary"] < cost["control"] and cost["significant"] and cost["high"] < 0
    assert m["error_rate"]["diff"] == 0 and not m["error_rate"]["significant"] and m["error_rate"]["n_needed"] is None
    q = m["quality_score"]
    assert q["control"] == pytest.approx(0.9) and q["canary"] == pytest.approx(0.5) and q["significant"]
    assert q["n_control"] + q["n_canary"] == 60
    lat = m["latency_ms"]
    assert lat["low"] <= lat["diff"] <= lat["high"]
    assert lat["significant"] or lat["n_needed"] is None or lat["n_needed"] > 0  # a size is stated when it is not
    text = cli(capsys, "canary", "report", NAME, "-c", str(path))
    assert "cost_per_request_usd" in text and "significant" in text and "quality_score" in text
    via_report = cli(capsys, "report", "--canary", NAME, "-c", str(path), "--since", str(time.time() - 3600))
    assert via_report.strip() == text.strip()  # `tierwise report --canary` prints the same comparison


def test_promote_and_rollback_are_one_recorded_command_each_and_gateways_follow(
        setup, capsys: pytest.CaptureFixture[str]) -> None:
    path, gw, client = setup
    control = next(s for s in (f"k{i}" for i in range(100)) if bucket(NAME, s) >= 0.5)
    assert ask(client, control).model == "large"
    out = cli(capsys, "canary", "promote", NAME, "-c", str(path), "--reason", "cheaper, same quality", "--actor", "ops")
    assert "promote: share 0.5 -> 1" in out
    deadline = time.monotonic() + 5
    while ask(client, control).model != "small":  # the running gateway re-reads the share (refresh_s 0.1)
        assert time.monotonic() < deadline, "promotion not picked up"
        time.sleep(0.05)
    cli(capsys, "canary", "rollback", NAME, "-c", str(path), "--actor", "ops")
    canary_session = next(s for s in (f"k{i}" for i in range(100)) if bucket(NAME, s) < 0.5)
    deadline = time.monotonic() + 5
    while ask(client, canary_session).model != "large":
        assert time.monotonic() < deadline, "rollback not picked up"
        time.sleep(0.05)
    hist = cli(capsys, "canary", "history", NAME, "-c", str(path))
    lines = hist.strip().splitlines()
    assert len(lines) == 2
    assert "promote" in lines[0] and "0.5 -> 1.0 by ops: cheaper, same quality" in lines[0]
    assert "rollback" in lines[1] and "1.0 -> 0.0 by ops" in lines[1]
    # a gateway started after the rollback starts from the store's share, not the config's 0.5
    gw2 = GatewayServer(load_config(path)).start()
    try:
        assert gw2.svc is not None and gw2.svc.canary is not None and gw2.svc.canary.share == 0.0
    finally:
        gw2.stop()


def test_promote_write_config_puts_the_candidate_in_place_atomically(setup, capsys) -> None:
    path, _, _ = setup
    cli(capsys, "canary", "promote", NAME, "-c", str(path), "--write-config")
    cfg = load_config(path)
    assert cfg.canary is None and cfg.tiers["chat"].models == ["small"]
    assert (path.parent / "tierwise.yaml.bak").exists()
    assert load_config(path.parent / "tierwise.yaml.bak").canary is not None


def test_bad_shares_and_names_are_clear_errors(setup, capsys) -> None:
    path, _, _ = setup
    with pytest.raises(SystemExit, match=r"\[0, 1\].*got 1.5"):
        main(["canary", "set-share", NAME, "1.5", "-c", str(path)])
    with pytest.raises(SystemExit, match="no canary 'other'.*configured canary: 'small-chat'"):
        main(["canary", "promote", "other", "-c", str(path)])
    text = path.read_text()
    for bad in ("1.5", "-0.1"):
        with pytest.raises(ConfigError, match=rf"canary.share.*\[0, 1\].*got {bad}"):
            load_config_text(text.replace("share: 0.5", f"share: {bad}"), env={})
    assert "arm" not in capsys.readouterr().err
