"""Real `tierwise serve` processes for tests: a free loopback port, a one-model config on a fake upstream, start."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

#: the provider key the processes get from their environment: tests assert it never reaches a log or a client
SECRET = "sk-proc-secret"

_started: list[subprocess.Popen] = []


def reap() -> None:
    """Kill every process :func:`start_serve` started that is still running (a test that failed half-way)."""
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp: Path, upstream_url: str, port: int, ledger: str, extra: str = "",
                 name: str = "tierwise") -> Path:
    """``<tmp>/<name>.yaml``: one model on the fake upstream; ``ledger`` is the ledger: mapping, ``extra`` more
    top-level YAML (state:, budgets:, …)."""
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(f"""
server: {{port: {port}, request_deadline_s: 20}}
ledger: {ledger}
{extra}providers:
  fake: {{format: openai, base_url: "{upstream_url}", api_key_env: FAKE_KEY, timeout_s: 10}}
models:
  small: {{provider: fake, price: {{input: 0.1, output: 0.4}}}}
tiers:
  chat: {{models: [small]}}
default_tier: chat
fallback_model: small
""")
    return cfg


def start_serve(cfg: Path, port: int, *, timeout_s: float = 30.0, args: tuple[str, ...] = (),
                preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen:
    """A real `tierwise serve` process (``args``: more serve flags, e.g. ``--workers``); returns once /healthz
    answers. ``preexec_fn`` runs in the child before it starts (e.g. to set resource limits)."""
    return wait_ready(spawn_serve(cfg, args=args, preexec_fn=preexec_fn), port, timeout_s=timeout_s)


def spawn_serve(cfg: Path, *, args: tuple[str, ...] = (), preexec_fn: Callable[[], None] | None = None,
                stderr_path: Path | None = None, reap_after_test: bool = True) -> subprocess.Popen:
    """Start `tierwise serve` without waiting for it (several at once: then :func:`wait_ready` each). With
    ``stderr_path`` its log goes to that file instead of a pipe (a long-running process nobody reads from must
    not fill a pipe and block). ``reap_after_test=False``: a module-scoped fixture's process, which that fixture
    stops (conftest's reaper would kill it after the first test)."""
    err = open(stderr_path, "w") if stderr_path is not None else subprocess.PIPE  # noqa: SIM115 (the child owns it)
    proc = subprocess.Popen([sys.executable, "-m", "tierwise.cli", "serve", "--config", str(cfg), *args],
                            stdout=subprocess.DEVNULL if stderr_path is not None else subprocess.PIPE, stderr=err,
                            text=True, env={"FAKE_KEY": SECRET, "PATH": "/usr/bin:/bin"}, preexec_fn=preexec_fn)
    if stderr_path is not None:
        err.close()  # type: ignore[union-attr]
    proc.log_path = stderr_path  # type: ignore[attr-defined]
    if reap_after_test:
        _started.append(proc)
    return proc


def log_tail(proc: subprocess.Popen, chars: int = 3000) -> str:
    """The end of a finished process's stderr (from its pipe, or from its log file)."""
    _, err = proc.communicate(timeout=30)
    path = getattr(proc, "log_path", None)
    if err is None and path is not None:
        err = Path(path).read_text(errors="replace")
    return (err or "")[-chars:]


def wait_ready(proc: subprocess.Popen, port: int, *, timeout_s: float = 30.0) -> subprocess.Popen:
    """Return ``proc`` once its /healthz on ``port`` answers 200; fail with its stderr if it exits or never does."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError("gateway exited at start: " + log_tail(proc))
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("gateway did not start: " + log_tail(proc))
