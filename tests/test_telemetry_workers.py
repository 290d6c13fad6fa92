"""`tierwise serve --workers 2`: whichever worker answers the scrape, /metrics shows every worker's requests
(prometheus multiprocess mode), including those of a worker that died and was restarted; the counts equal the
ledger's rows."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import httpx

from tests import procs
from tests.fakes.upstream import FakeUpstream
from tests.telemetry_util import scrape, total

MSG = [{"role": "user", "content": "hi"}]


def chat(port: int) -> httpx.Response:
    with httpx.Client(timeout=15) as c:  # a new connection each time: the kernel picks a worker per connection
        return c.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"messages": MSG})


def children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


def requests_seen(port: int) -> set[float]:
    """requests_total as several scrapes (new connections, so different workers) report it."""
    return {total(scrape(f"http://127.0.0.1:{port}/metrics"), "tierwise_requests_total") for _ in range(6)}


def test_workers_metrics_are_summed_and_survive_a_restart(tmp_path: Path) -> None:
    prom = tmp_path / "prom"
    prom.mkdir()
    (prom / "counter_999999.db").write_bytes(b"stale file of an earlier run")
    with FakeUpstream() as up:
        port = procs.free_port()
        cfg = procs.write_config(tmp_path, up.base_url, port, f'{{path: "{tmp_path / "ledger.db"}"}}',
                                 f'telemetry: {{metrics: {{multiproc_dir: "{prom}"}}}}\n')
        proc = procs.start_serve(cfg, port, timeout_s=40, args=("--workers", "2"))
        try:
            ids = [chat(port).headers["x-tierwise-request-id"] for _ in range(30)]
            assert len({i[:len("chatcmpl-tw-") + 16] for i in ids}) == 2  # both workers answered
            assert requests_seen(port) == {30.0}
            m = scrape(f"http://127.0.0.1:{port}/metrics")
            assert total(m, "tierwise_requests_total", tier="chat", model="small", status="ok", code="200") == 30
            assert total(m, "tierwise_request_duration_seconds_count") == 30
            assert {lb["model"] for lb, _ in m["tierwise_model_cooldown"]} == {"small"}
            assert not (prom / "counter_999999.db").exists()  # emptied before the workers started
            workers = children(proc.pid)
            assert len(workers) == 2
            os.kill(workers[0], signal.SIGKILL)  # the supervisor starts it again
            deadline = time.time() + 30
            while time.time() < deadline:
                now = children(proc.pid)
                if len(now) == 2 and workers[0] not in now:
                    break
                time.sleep(0.1)
            else:
                raise AssertionError("the killed worker was not restarted")
            time.sleep(1.0)  # the new worker binds the port
            ids += [chat(port).headers["x-tierwise-request-id"] for _ in range(10)]
            assert requests_seen(port) == {40.0}  # the dead worker's counts stay in the sum
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    rows = [r[0] for r in sqlite3.connect(tmp_path / "ledger.db").execute("select id from requests")]
    assert sorted(rows) == sorted(ids)  # the metrics counted exactly the ledger's requests


def test_dead_workers_live_gauges_are_forgotten_counters_kept(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tierwise.telemetry.multiproc import forget_dead_workers

    code = ("from prometheus_client import Counter, Gauge\n"
            "Gauge('g', 'g', multiprocess_mode='livemax').set(1)\n"
            "Counter('c', 'c').inc(3)\n")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    child = subprocess.run([sys.executable, "-c", code], env=env, check=True)
    assert child.returncode == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert any(f.startswith("gauge_livemax_") for f in files) and any(f.startswith("counter_") for f in files)
    assert len(forget_dead_workers(str(tmp_path))) == 1
    left = sorted(p.name for p in tmp_path.iterdir())
    assert not any(f.startswith("gauge_livemax_") for f in left) and any(f.startswith("counter_") for f in left)
