"""A/B of the gateway's CPU per request between two versions of the code, interleaved on one machine.

    python bench/overhead/ab_cpu.py --a HEAD~5 [--b WORKTREE] [--rounds 10] [--duration 3] [-c 16] [--governance]
    python bench/overhead/ab_cpu.py --a WORKTREE --a-extra "server: {gc: {freeze: false, young_threshold: 0}}"

On a shared machine throughput and latency swing with other sessions' load, so a change's effect is read from CPU
time per request (``/proc``: the gateway process's user + system time during a run ÷ requests it served), with the
two versions run alternately, round after round, against one mock upstream, and the bare aiohttp proxy measured
between them as the reference. Each version is the ``src`` tree of a git revision (``git archive``) or of the working
tree (``WORKTREE``), put first on ``PYTHONPATH`` of its own ``tierwise serve`` (the same config: SQLite ledger and
crash journal on; ``--governance``: virtual key, budgets and rate limits; ``--a-extra`` / ``--b-extra``: YAML merged
into that version's config, to A/B a setting rather than code). Prints per-round CPU µs/request, the
per-round ratio A/B (paired: A and B measured seconds apart) and its median, and the machine's load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import procs  # noqa: E402
import run  # noqa: E402


def export(rev: str, into: Path) -> Path:
    """``src`` of ``rev`` (or of the working tree for ``WORKTREE``) under ``into``; returns the src directory."""
    into.mkdir(parents=True)
    if rev == "WORKTREE":
        shutil.copytree(REPO / "src", into / "src", ignore=shutil.ignore_patterns("__pycache__"))
    else:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def merged(base: dict, extra: dict) -> dict:
    """``extra`` over ``base``, mappings merged key by key (``server: {gc: …}`` keeps the bench's host and port)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_config(d: Path, upstream: str, governance: bool, extra: dict | None = None) -> tuple[Path, int]:
    """``run.py``'s gateway config (its governance block too when asked) in ``d``, ``extra`` merged over it, on a
    free port: (config path, port)."""
    port = procs.free_port()
    cfg = d / "tierwise.yaml"
    text = (run.GATEWAY_CONFIG.format(port=port, ledger=d / "ledger.db", upstream=upstream, journal="true")
            + (run.GOVERNANCE_CONFIG.format(gov=d / "governance.db") if governance else ""))
    if extra:
        text = yaml.safe_dump(merged(yaml.safe_load(text), extra), sort_keys=False)
    cfg.write_text(text)
    return cfg, port


def start_gateway(name: str, src: Path, tmp: Path, upstream: str, governance: bool, extra: str = "") -> procs.Server:
    d = tmp / f"{name}-run"  # tmp/<name> holds that version's source
    d.mkdir()
    cfg, port = write_config(d, upstream, governance, yaml.safe_load(extra) if extra else None)
    env = {**os.environ, "PYTHONPATH": str(src)}
    bearer = run.governance_key(cfg, env) if governance else "bench"
    server = procs.Server(name, [sys.executable, "-m", "tierwise.cli", "serve", "--config", str(cfg)], d / "serve.log",
                          cwd=str(d), env=env, port=port)
    server.wait_ready("/healthz")
    server.bearer = bearer  # type: ignore[attr-defined]
    return server


def cpu_per_request(server: procs.Server, conc: int, duration: float, bearer: str) -> float:
    c0 = procs.cpu_s(server.pid)
    done = subprocess.run([sys.executable, str(HERE / "loadgen.py"), "--url", server.base + "/v1/chat/completions",
                           "-c", str(conc), "--duration", str(duration), "--warmup", "0.5", "--bearer", bearer],
                          capture_output=True, check=True)
    c1 = procs.cpu_s(server.pid)
    res = orjson.loads(done.stdout)
    if res["errors"]:
        raise RuntimeError(f"{server.name}: {res['errors']} errors, e.g. {res['error_samples'][:2]}")
    return 1e6 * (c1 - c0) / max(1, res["sent"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="git revision of version A (or WORKTREE)")
    ap.add_argument("--b", default="WORKTREE", help="git revision of version B (default: the working tree)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--duration", type=float, default=3.0, help="measured seconds per run")
    ap.add_argument("-c", "--concurrency", type=int, default=16)
    ap.add_argument("--governance", action="store_true", help="virtual key, budgets and rate limits on")
    ap.add_argument("--a-extra", default="", help="YAML merged into version A's config")
    ap.add_argument("--b-extra", default="", help="YAML merged into version B's config")
    args = ap.parse_args()
    load0 = procs.loadavg()
    with tempfile.TemporaryDirectory(prefix="tierwise-ab-") as tmpdir:
        tmp = Path(tmpdir)
        srcs = {"A": export(args.a, tmp / "A"), "B": export(args.b, tmp / "B")}
        py = sys.executable
        mock = procs.Server("mock", [py, str(HERE / "mock_upstream.py")], tmp / "mock.log")
        mock.wait_ready("/health")
        bare = procs.Server("bare", [py, str(HERE / "bare_proxy.py"), "--upstream", mock.base], tmp / "bare.log")
        bare.wait_ready("/health")
        servers = {"bare": bare}
        try:
            for name, src in srcs.items():
                servers[name] = start_gateway(name, src, tmp, mock.base, args.governance,
                                              args.a_extra if name == "A" else args.b_extra)
            cpu: dict[str, list[float]] = {n: [] for n in servers}
            for rnd in range(args.rounds):
                order = list(servers) if rnd % 2 == 0 else list(servers)[::-1]
                for name in order:
                    cpu[name].append(cpu_per_request(servers[name], args.concurrency, args.duration,
                                                     getattr(servers[name], "bearer", "bench")))
                print(f"round {rnd}: " + "  ".join(f"{n} {cpu[n][-1]:.0f} µs/req" for n in servers), flush=True)
        finally:
            for s in [*servers.values(), mock]:
                s.stop()
    ratio = [a / b for a, b in zip(cpu["A"], cpu["B"], strict=True)]
    extras = "".join(f"; {n} config + {x!r}" for n, x in (("A", args.a_extra), ("B", args.b_extra)) if x)
    print(f"\nA = {args.a}, B = {args.b}{extras}, {args.concurrency} clients, {args.rounds} rounds × {args.duration:g} s"
          f"{', governance on' if args.governance else ''}; load average before {load0}, after {procs.loadavg()}")
    for n in servers:
        print(f"{n:>4}: median {statistics.median(cpu[n]):.0f} µs/request  (rounds: "
              f"{', '.join(f'{x:.0f}' for x in cpu[n])})")
    print(f"A/B per round: {', '.join(f'{x:.3f}' for x in ratio)}; median {statistics.median(ratio):.3f}")
    for n in ("A", "B"):
        print(f"{n}/bare median: {statistics.median(a / b for a, b in zip(cpu[n], cpu['bare'], strict=True)):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
