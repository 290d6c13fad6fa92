"""CPU per request of the gateway with telemetry off, metrics on (the default) and metrics + tracing, interleaved.

    python bench/telemetry_ab.py [--rev HEAD] [--rounds 6] [--duration 3] [-c 16]

The same code (``src`` of ``--rev``, or ``WORKTREE``) is served three times with three configs (``run.py
--telemetry`` off / metrics / tracing, tracing with exporter none), against one mock upstream, and measured round
after round in alternating order with the bare aiohttp proxy as reference (``bench/overhead/ab_cpu.py``'s method:
CPU time of the serving process ÷ requests, which outside load disturbs far less than latency or throughput).
Writes ``bench/results/telemetry_ab.md`` with the machine's load average.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent / "overhead"
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import procs  # noqa: E402
import run  # noqa: E402
from ab_cpu import cpu_per_request, export  # noqa: E402

MODES = ("off", "metrics", "tracing")


def start(mode: str, src: Path, tmp: Path, upstream: str) -> procs.Server:
    d = tmp / mode
    d.mkdir()
    port = procs.free_port()
    cfg = d / "tierwise.yaml"
    cfg.write_text(run.GATEWAY_CONFIG.format(port=port, ledger=d / "ledger.db", upstream=upstream, journal="true")
                   + run.TELEMETRY_CONFIG[mode])
    server = procs.Server(mode, [sys.executable, "-m", "tierwise.cli", "serve", "--config", str(cfg)],
                          d / "serve.log", cwd=str(d), env={**os.environ, "PYTHONPATH": str(src)}, port=port)
    server.wait_ready("/healthz")
    return server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", default="HEAD", help="git revision whose src is served (or WORKTREE)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("-c", "--concurrency", type=int, default=16)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "telemetry_ab.md")
    args = ap.parse_args()
    load0 = procs.loadavg()
    with tempfile.TemporaryDirectory(prefix="tierwise-telemetry-ab-") as tmpdir:
        tmp = Path(tmpdir)
        src = export(args.rev, tmp / "src-export")
        py = sys.executable
        mock = procs.Server("mock", [py, str(HERE / "mock_upstream.py")], tmp / "mock.log")
        mock.wait_ready("/health")
        bare = procs.Server("bare", [py, str(HERE / "bare_proxy.py"), "--upstream", mock.base], tmp / "bare.log")
        bare.wait_ready("/health")
        servers = {"bare": bare}
        try:
            for mode in MODES:
                servers[mode] = start(mode, src, tmp, mock.base)
            cpu: dict[str, list[float]] = {n: [] for n in servers}
            for rnd in range(args.rounds):
                order = list(servers) if rnd % 2 == 0 else list(servers)[::-1]
                for name in order:
                    cpu[name].append(cpu_per_request(servers[name], args.concurrency, args.duration, "bench"))
                print(f"round {rnd}: " + "  ".join(f"{n} {cpu[n][-1]:.0f}" for n in servers), flush=True)
        finally:
            for s in [*servers.values(), mock]:
                s.stop()
    load1 = procs.loadavg()
    med = {n: statistics.median(v) for n, v in cpu.items()}
    paired = {m: statistics.median(a - b for a, b in zip(cpu[m], cpu["off"], strict=True)) for m in MODES[1:]}
    lines = [
        "# Gateway CPU per request: telemetry off / metrics / metrics + tracing",
        "",
        f"Made by `python bench/telemetry_ab.py --rev {args.rev} --rounds {args.rounds} --duration {args.duration:g} "
        f"-c {args.concurrency}` on {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M')} UTC, {os.cpu_count()} "
        f"cores; load average {load0} before, {load1} after (other sessions share the machine). Non-streaming "
        "requests, SQLite ledger with journal, tracing with exporter none; CPU of the serving process ÷ requests, "
        "the four servers measured in alternating order each round.",
        "",
        "| server | median CPU µs/request | rounds | median paired difference to off |",
        "|---|---:|---|---:|",
    ]
    for n in servers:
        diff = f"{paired[n]:+.0f}" if n in paired else ""
        lines.append(f"| {n} | {med[n]:.0f} | {', '.join(f'{x:.0f}' for x in cpu[n])} | {diff} |")
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
