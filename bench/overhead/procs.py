"""Processes under test and what /proc says about them and about the machine.

Each server runs in its own process (as in production), bound to 127.0.0.1 on a kernel-chosen port. CPU time and
memory come from /proc, so they are measured the same way for the mock, the bare proxy and the gateway.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A port the kernel considers free on 127.0.0.1 (for servers that cannot report a port-0 bind)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A child process serving HTTP on 127.0.0.1; ``stop()`` sends SIGTERM and waits for a clean exit."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, cwd: str | None = None,
                 env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE if port is None else self._log,
                                     stderr=self._log)
        self.port = port if port is not None else self._read_port()

    def _read_port(self, timeout_s: float = 20.0) -> int:
        """Servers started with port 0 print ``PORT <n>`` as their first stdout line."""
        assert self.proc.stdout is not None
        deadline = time.time() + timeout_s
        line = b""
        while time.time() < deadline and self.proc.poll() is None:
            line = self.proc.stdout.readline()
            if line.startswith(b"PORT "):
                return int(line.split()[1])
        raise RuntimeError(f"{self.name} did not report its port: {line!r}; log: {self.log_path.read_text()[-2000:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, path: str, timeout_s: float = 60.0) -> float:
        """Poll ``GET path`` until 200; returns the seconds it took (start-up time)."""
        t0 = time.time()
        while time.time() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.base + path, timeout=2) as resp:  # loopback only
                    if resp.status == 200:
                        return time.time() - t0
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout_s}s: {self.log_path.read_text()[-2000:]}")

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def status_kb(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM, …)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (its threads included)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_s() -> float:
    """CPU seconds all cores spent not idle since boot (user+nice+system+irq+softirq+steal)."""
    parts = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def machine_facts() -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = status_kb_meminfo("MemTotal")
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "mem_total_mb": mem_kb // 1024,
            "python": sys.version.split()[0], "kernel": os.uname().release, "isa": isa_flags()}


def isa_flags() -> list[str]:
    """The CPU's vector extensions that pick the embedder's integer kernels (AVX2's vpmaddubsw against VNNI): what
    can move the minilm-onnx vectors, and so the routing results, between machines (bench/results/embed_spread.md)."""
    flags = next((ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("flags")), [])
    return [f for f in ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]


def status_kb_meminfo(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0
