"""`tierwise serve` as a real process: ledger records survive SIGTERM/SIGINT, in-flight requests finish first."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.fakes.upstream import FakeUpstream


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gateway(tmp: Path, upstream_url: str) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    db = tmp / "ledger.db"
    cfg = tmp / "tierwise.yaml"
    cfg.write_text(f"""
server: {{port: {port}}}
ledger: {{path: "{db}", flush_interval_ms: 5000, batch_size: 100000}}
providers:
  fake: {{format: openai, base_url: "{upstream_url}", api_key_env: FAKE_KEY}}
models:
  small: {{provider: fake, price: {{input: 0.1, output: 0.4}}}}
tiers:
  chat: {{models: [small]}}
default_tier: chat
fallback_model: small
""")
    proc = subprocess.Popen([sys.executable, "-m", "tierwise.cli", "serve", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"FAKE_KEY": "sk-proc-secret", "PATH": "/usr/bin:/bin"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url, db
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("gateway did not start: " + proc.communicate()[1])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_records_flushed_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    with FakeUpstream() as up:
        proc, url, db = start_gateway(tmp_path, up.base_url)
        msgs = [{"role": "user", "content": "hi"}]
        ids = []
        for _ in range(25):  # the flush interval is 5 s and the batch huge: nothing is on disk yet
            r = httpx.post(url + "/v1/chat/completions", json={"messages": msgs}, timeout=5)
            assert r.status_code == 200
            ids.append(r.headers["x-tierwise-request-id"])
        up.set(latency_s=1.0)
        slow: dict = {}
        t = threading.Thread(target=lambda: slow.update(r=httpx.post(
            url + "/v1/chat/completions", json={"messages": msgs}, timeout=10)))
        t.start()
        time.sleep(0.4)  # the slow request is in flight when the signal arrives
        proc.send_signal(sig)
        t.join(10)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert slow["r"].status_code == 200  # in-flight request finished during graceful shutdown
        ids.append(slow["r"].headers["x-tierwise-request-id"])
        rows = {r[0] for r in sqlite3.connect(db).execute("select id from requests")}
        assert set(ids) <= rows and len(rows) == 26
        assert "sk-proc-secret" not in err and "Traceback" not in err


def test_refuses_to_start_on_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "t.yaml"
    cfg.write_text("providers: {}\nmodels: {m: {provider: p}}\ntiers: {}\ndefault_tier: x\nfallback_model: m\n")
    r = subprocess.run([sys.executable, "-m", "tierwise.cli", "serve", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "models.m.provider" in r.stderr and "unknown provider 'p'" in r.stderr
    assert "Traceback" not in r.stderr
