"""`tierwise serve --workers N` as real processes: N workers share the port, SIGTERM drains them all, every request
has its ledger row; memory state with budgets is refused (each worker would count them on its own)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests import procs
from tests.fakes.upstream import FakeUpstream

MSG = [{"role": "user", "content": "hi"}]


def write_config(tmp: Path, upstream_url: str, port: int, extra: str = "") -> Path:
    return procs.write_config(tmp, upstream_url, port, f'{{path: "{tmp / "ledger.db"}", flush_interval_ms: 2000}}', extra)


def start(cfg: Path, port: int, workers: int) -> subprocess.Popen[str]:
    return procs.start_serve(cfg, port, timeout_s=40, args=("--workers", str(workers)))


def chat(port: int) -> httpx.Response:
    with httpx.Client(timeout=15) as c:  # a new connection each time: the kernel picks a worker per connection
        return c.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"messages": MSG})


def test_two_workers_share_the_port_and_drain_on_sigterm(tmp_path: Path) -> None:
    with FakeUpstream() as up:
        port = procs.free_port()
        proc = start(write_config(tmp_path, up.base_url, port), port, 2)
        try:
            ids = []
            for _ in range(40):
                r = chat(port)
                assert r.status_code == 200
                ids.append(r.headers["x-tierwise-request-id"])
            # request ids start with a random per-process prefix: both workers answered
            assert len({i[:len("chatcmpl-tw-") + 16] for i in ids}) == 2
            up.set(latency_s=1.0)
            slow: list[httpx.Response] = []
            threads = [threading.Thread(target=lambda: slow.append(chat(port))) for _ in range(8)]
            for t in threads:
                t.start()
            time.sleep(0.5)  # in flight on both workers when the signal comes
            proc.send_signal(signal.SIGTERM)
            for t in threads:
                t.join(15)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert len(slow) == 8 and all(r.status_code == 200 for r in slow)  # drained, not cut off
    ids += [r.headers["x-tierwise-request-id"] for r in slow]
    rows = [r[0] for r in sqlite3.connect(tmp_path / "ledger.db").execute("select id from requests")]
    assert sorted(rows) == sorted(ids)  # every request exactly once, from both workers' journals and writers
    assert err.count("serving on") == 2 and "Traceback" not in err and procs.SECRET not in err


def test_workers_with_memory_state_and_budgets_are_refused(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "http://127.0.0.1:9/v1", procs.free_port(), "budgets: {caps: {global: {daily_usd: 5}}}\n")
    r = subprocess.run([sys.executable, "-m", "tierwise.cli", "serve", "--config", str(cfg), "--workers", "2"],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "FAKE_KEY": "k"})
    assert r.returncode == 2
    assert "--workers 2 with state.backend: memory" in r.stderr and "budgets.caps" in r.stderr
    assert "state.backend: redis" in r.stderr and "Traceback" not in r.stderr
