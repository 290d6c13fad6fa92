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
from tests.procs import SECRET, free_port, start_serve, write_config


def start_gateway(tmp: Path, upstream_url: str) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    db = tmp / "ledger.db"
    ledger = f'{{path: "{db}", flush_interval_ms: 5000, batch_size: 100000}}'
    return start_serve(write_config(tmp, upstream_url, port, ledger), port), f"http://127.0.0.1:{port}", db


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
        assert SECRET not in err and "Traceback" not in err


def test_refuses_to_start_on_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "t.yaml"
    cfg.write_text("providers: {}\nmodels: {m: {provider: p}}\ntiers: {}\ndefault_tier: x\nfallback_model: m\n")
    r = subprocess.run([sys.executable, "-m", "tierwise.cli", "serve", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "models.m.provider" in r.stderr and "unknown provider 'p'" in r.stderr
    assert "Traceback" not in r.stderr


# -- start-up failures: check-config reports what serve would refuse, serve refuses before listening -----------------

BASE = """
server: {{port: {port}{server}}}
ledger: {{path: "{ledger}"}}
providers:
  fake: {{format: openai, base_url: "http://127.0.0.1:9/v1", api_key_env: {key_env}}}
{providers}models:
  small: {{provider: fake, price: {{input: 0.1, output: 0.4}}}}
{models}tiers:
  chat: {{models: [small]}}
{tiers}default_tier: chat
fallback_model: small
"""


def _config(tmp: Path, **over: str) -> Path:
    fields = {"port": str(free_port()), "server": "", "ledger": str(tmp / "ledger.db"), "key_env": "FAKE_KEY",
              "providers": "", "models": "", "tiers": ""}
    fields.update(over)
    path = tmp / "tierwise.yaml"
    path.write_text(BASE.format(**fields))
    return path


def _not_a_directory(tmp: Path) -> dict[str, str]:
    # A path under a regular file fails for root too (chmod 0o555 would not stop root from writing).
    (tmp / "a-file").write_text("x")
    return {"ledger": str(tmp / "a-file" / "ledger.db")}


def _not_a_ledger(tmp: Path) -> dict[str, str]:
    (tmp / "notes.db").write_bytes(b"these are my notes, not an SQLite database" * 100)
    return {"ledger": str(tmp / "notes.db")}


def _journal_is_a_file(tmp: Path) -> dict[str, str]:
    (tmp / "a-file").write_text("x")
    return {"ledger": f'{tmp / "ledger.db"}", journal_dir: "{tmp / "a-file"}'}  # closes and reopens the quotes


STARTUP_FAILURES = {
    "provider key env unset": (lambda tmp: {"key_env": "TW_UNSET_KEY"}, "providers.fake.api_key_env",
                               "environment variable TW_UNSET_KEY is not set"),
    "gateway keys env unset": (lambda tmp: {"server": ", api_keys_env: TW_UNSET_KEYS"}, "server.api_keys_env",
                               "TW_UNSET_KEYS"),
    "ledger under a file": (_not_a_directory, "ledger.path", "is not a directory"),
    "ledger not a ledger": (_not_a_ledger, "ledger.path", "is not a tierwise ledger"),
    "journal dir a file": (_journal_is_a_file, "ledger.path", "journal"),
    "gate artifact missing": (lambda tmp: {"tiers": (
        "  steps: {policy: cascade, cascade: {rungs: [{model: small, gate: {kind: learned, artifact: "
        f"'{tmp}/gate.json'}}}}, {{model: small}}]}}}}\n")}, "tiers.steps.cascade.rungs[0].gate", "gate.json"),
    "gguf missing": (lambda tmp: {
        "providers": "  loc: {format: llamacpp}\n",
        "models": f"  local: {{provider: loc, gguf: '{tmp}/missing.gguf', price: {{input: 0, output: 0}}}}\n",
    }, "models.local.gguf", "missing.gguf"),
}


@pytest.mark.parametrize("case", list(STARTUP_FAILURES))
def test_check_config_reports_what_serve_refuses(tmp_path: Path, case: str) -> None:
    make, path, needle = STARTUP_FAILURES[case]
    cfg = _config(tmp_path, **make(tmp_path))
    env = {"FAKE_KEY": "sk-x", "PATH": "/usr/bin:/bin"}
    check = subprocess.run([sys.executable, "-m", "tierwise.cli", "check-config", str(cfg)],
                           capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert check.returncode == 1, check.stdout + check.stderr
    problem = next(line for line in check.stderr.splitlines() if line.strip().startswith(f"- {path} (line "))
    assert needle in problem
    serve = subprocess.run([sys.executable, "-m", "tierwise.cli", "serve", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert serve.returncode == 2, serve.stderr
    assert problem in serve.stderr.splitlines()  # the very same message
    assert "serving on" not in serve.stderr and "Traceback" not in serve.stderr
    assert list(tmp_path.glob("*.db-wal")) == []  # check-config and a refused serve wrote no ledger


def test_check_config_passes_what_serve_accepts(tmp_path: Path) -> None:
    from tierwise.ledger import SQLiteLedgerStore

    cfg = _config(tmp_path)

    def check() -> None:
        r = subprocess.run([sys.executable, "-m", "tierwise.cli", "check-config", str(cfg)], capture_output=True,
                           text=True, timeout=60, env={"FAKE_KEY": "sk-x", "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
        assert r.returncode == 0, r.stderr

    check()
    assert not (tmp_path / "ledger.db").exists()  # checked, not created
    SQLiteLedgerStore(tmp_path / "ledger.db").close()  # an existing ledger is checked without touching it
    before = sorted(p.name for p in tmp_path.iterdir())
    check()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_serve_refuses_a_taken_port_before_saying_it_serves(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = _config(tmp_path, port=str(taken.getsockname()[1]))
        r = subprocess.run([sys.executable, "-m", "tierwise.cli", "serve", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=60, env={"FAKE_KEY": "sk-x", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2, r.stderr
    assert "cannot listen on 127.0.0.1" in r.stderr and "serving on" not in r.stderr
    assert "Traceback" not in r.stderr


def test_serve_failure_after_the_checks_is_one_clear_line(tmp_path: Path) -> None:
    """A failure the checks cannot foresee (here: the ledger's fallback file is a directory, found only when the
    service imports it) still ends in one line and exit 2, before "serving on"."""
    cfg = _config(tmp_path)
    (tmp_path / "ledger.db.unwritten.jsonl").mkdir()
    r = subprocess.run([sys.executable, "-m", "tierwise.cli", "serve", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60, env={"FAKE_KEY": "sk-x", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("tierwise:")]
    assert len(lines) == 1 and "cannot start" in lines[0] and "ledger.db.unwritten.jsonl" in lines[0], r.stderr
    assert "serving on" not in r.stderr and "Traceback" not in r.stderr


def test_keep_alive_requests_during_drain_get_503_connection_close(tmp_path: Path) -> None:
    """After SIGTERM the listener closes and in-flight requests finish; a request arriving meanwhile on an open
    keep-alive connection is answered 503 (OpenAI error shape, Connection: close) and booked, not reset."""
    with FakeUpstream() as up:
        proc, url, db = start_gateway(tmp_path, up.base_url)
        msgs = [{"role": "user", "content": "hi"}]
        # one connection only: a request can succeed only on the keep-alive connection opened before the signal
        client = httpx.Client(base_url=url, timeout=10, limits=httpx.Limits(max_connections=1))
        try:
            first = client.post("/v1/chat/completions", json={"messages": msgs})
            assert first.status_code == 200 and first.headers.get("connection") != "close"
            up.set(latency_s=1.5)
            slow: dict = {}
            t = threading.Thread(target=lambda: slow.update(r=httpx.post(
                url + "/v1/chat/completions", json={"messages": msgs}, timeout=10)))
            t.start()
            time.sleep(0.4)  # the slow request is in flight
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)  # the drain has begun
            late = client.post("/v1/chat/completions", json={"messages": msgs}, headers={"X-Task": "chat"})
            assert late.status_code == 503
            assert late.headers["connection"] == "close"
            err = late.json()["error"]
            assert err["code"] == "shutting_down" and err["type"] == "server_error" and "shutting down" in err["message"]
            late_id = late.headers["x-tierwise-request-id"]
            with pytest.raises(httpx.ConnectError):  # the listener is closed: nothing new gets in
                httpx.get(url + "/healthz", timeout=2)
        finally:
            client.close()
        t.join(10)
        _, stderr = proc.communicate(timeout=20)
        assert proc.returncode == 0, stderr
        assert slow["r"].status_code == 200  # in flight when the signal came: finished
        rows = {r[0]: r[1:] for r in sqlite3.connect(db).execute("select id, status, http_status, tier from requests")}
        assert rows[late_id] == ("rejected", 503, "chat")  # the refused request has its record
        assert rows[slow["r"].headers["x-tierwise-request-id"]][:2] == ("ok", 200)
        assert "Traceback" not in stderr
