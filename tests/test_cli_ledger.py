"""`tierwise ledger tail/export` and `tierwise price` on a real ledger written by a real gateway."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import openai

from tests.harness import GatewayServer


def tw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tierwise.cli", *args], capture_output=True, text=True, timeout=60)


def test_tail_and_export(client: openai.OpenAI, gateway: GatewayServer, tmp_path: Path) -> None:
    for tier in ("chat", "label", "chat"):
        client.chat.completions.create(model=tier, messages=[{"role": "user", "content": "hi"}])
    ids = [r["id"] for r in gateway.rows()]
    db = str(tmp_path / "ledger.db")
    tail = tw("ledger", "tail", "--db", db, "-n", "2")
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.strip().splitlines()
    assert len(lines) == 3 and "label(model)" in tail.stdout and "chat(model)" in lines[-1]
    out = tmp_path / "x.jsonl"
    exp = tw("ledger", "export", "--db", db, "--format", "jsonl", "-o", str(out))
    assert exp.returncode == 0, exp.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ids
    assert rows[0]["attempts"][0]["model"] == "large"
    csv_out = tw("ledger", "export", "--db", db, "--format", "csv", "--since", str(rows[1]["ts"]))
    table = list(csv.DictReader(io.StringIO(csv_out.stdout)))
    assert [r["id"] for r in table] == ids[1:]
    assert float(table[0]["cost_usd"]) == rows[1]["cost_usd"]


def test_price_command(tmp_path: Path) -> None:
    cfg = tmp_path / "t.yaml"
    cfg.write_text("""
providers: {up: {format: openai, base_url: "http://127.0.0.1:9/v1"}}
models:
  big: {provider: up, price: {input: 2.5, output: 10, cache_read: 1.25}}
tiers: {chat: {models: [big]}}
default_tier: chat
fallback_model: big
""")
    r = tw("price", "--config", str(cfg), "big", "--input", "86", "--cache-read", "1920", "--output", "300")
    assert r.returncode == 0, r.stderr
    assert "$0.005615" in r.stdout and "config" in r.stdout
    bad = tw("price", "--config", str(cfg), "nope")
    assert bad.returncode == 1 and "unknown model 'nope'" in bad.stderr
