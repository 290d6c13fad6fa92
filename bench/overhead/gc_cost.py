"""What the cyclic garbage collector costs the gateway per request, with ``server.gc`` on (the default) and off.

    python bench/overhead/gc_cost.py [--rounds 4] [--duration 4] [-c 16] [--out bench/results/gc_cost.md]

Two governed gateways (virtual key, budgets and rate limits, SQLite ledger and crash journal: ``run.py
--governance``'s config) serve side by side against one mock upstream: **tuned** with the shipped defaults
(``server.gc: {freeze: true, young_threshold: 10000}``) and **python** with Python's collector as it comes
(``{freeze: false, young_threshold: 0}``). Each is started through a small launcher that times every collection
with ``gc.callbacks`` (bench-only: the product has no such hook) and reports the totals per generation when sent
SIGUSR1; runs alternate, round after round. Per run: requests, collections and collector seconds per generation,
the longest pause, and CPU µs per request of the whole process. The collector's time is measured directly, so it
holds up on a busy machine where CPU per request swings by ±20 %.
"""

from __future__ import annotations

import argparse
import ast
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import procs  # noqa: E402
import run  # noqa: E402
from ab_cpu import write_config  # noqa: E402

SETTINGS = {"tuned": {}, "python": {"server": {"gc": {"freeze": False, "young_threshold": 0}}}}

# Runs `tierwise serve` with every collection timed; SIGUSR1 writes {generation: [count, seconds, longest since the
# last report]} to
# $GC_COST_OUT (the handler runs on the main thread between bytecodes, like any Python signal handler).
LAUNCHER = """
import gc, os, signal, sys, time
acc = {0: [0, 0.0, 0.0], 1: [0, 0.0, 0.0], 2: [0, 0.0, 0.0]}
began = [0.0]
def timed(phase, info):
    if phase == "start":
        began[0] = time.perf_counter()
    else:
        took = time.perf_counter() - began[0]
        a = acc[info["generation"]]
        a[0] += 1; a[1] += took; a[2] = max(a[2], took)
gc.callbacks.append(timed)
def dump(*_):
    with open(os.environ["GC_COST_OUT"], "w") as f:
        f.write(repr(acc))
    for a in acc.values():
        a[2] = 0.0  # the longest pause is per report: the run's, not start-up's
signal.signal(signal.SIGUSR1, dump)
from tierwise.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start(name: str, tmp: Path, upstream: str) -> procs.Server:
    d = tmp / name
    d.mkdir()
    cfg, port = write_config(d, upstream, True, SETTINGS[name])
    bearer = run.governance_key(cfg)
    env = {**os.environ, "GC_COST_OUT": str(d / "gc.txt")}
    server = procs.Server(name, [sys.executable, "-c", LAUNCHER, "serve", "--config", str(cfg)], d / "serve.log",
                          cwd=str(d), env=env, port=port)
    server.wait_ready("/healthz")
    server.bearer = bearer  # type: ignore[attr-defined]
    server.gc_file = d / "gc.txt"  # type: ignore[attr-defined]
    return server


def gc_totals(server: procs.Server) -> dict[int, list[float]]:
    path: Path = server.gc_file  # type: ignore[attr-defined]
    path.unlink(missing_ok=True)
    os.kill(server.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if path.exists() and (text := path.read_text()):
            return ast.literal_eval(text)  # type: ignore[no-any-return]
        time.sleep(0.01)
    raise RuntimeError(f"{server.name} did not report its collector totals")


def one_run(server: procs.Server, conc: int, duration: float) -> dict:
    g0, c0 = gc_totals(server), procs.cpu_s(server.pid)
    done = subprocess.run([sys.executable, str(HERE / "loadgen.py"), "--url", server.base + "/v1/chat/completions",
                           "-c", str(conc), "--duration", str(duration), "--warmup", "0.5",
                           "--bearer", server.bearer],  # type: ignore[attr-defined]
                          capture_output=True, check=True)
    c1, g1 = procs.cpu_s(server.pid), gc_totals(server)
    res = orjson.loads(done.stdout)
    if res["errors"]:
        raise RuntimeError(f"{server.name}: {res['errors']} errors, e.g. {res['error_samples'][:2]}")
    n = max(1, res["sent"])
    return {"requests": n, "cpu_us": 1e6 * (c1 - c0) / n,
            "gc_us": 1e6 * sum(g1[g][1] - g0[g][1] for g in g1) / n,
            "collections": {g: int(g1[g][0] - g0[g][0]) for g in g1},
            "longest_ms": 1e3 * max(g1[g][2] for g in g1)}  # since g0's report: this run's


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("-c", "--concurrency", type=int, default=16)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gc_cost.md")
    args = ap.parse_args()
    load0, began = procs.loadavg(), time.time()
    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="tierwise-gc-") as tmpdir:
        tmp = Path(tmpdir)
        mock = procs.Server("mock", [sys.executable, str(HERE / "mock_upstream.py")], tmp / "mock.log")
        mock.wait_ready("/health")
        servers = {}
        try:
            for name in SETTINGS:
                servers[name] = start(name, tmp, mock.base)
            for rnd in range(args.rounds):
                for name in (list(servers) if rnd % 2 == 0 else list(servers)[::-1]):
                    runs[name].append(one_run(servers[name], args.concurrency, args.duration))
                print(f"round {rnd}: " + "  ".join(f"{n} gc {r[-1]['gc_us']:.1f} µs/req, cpu {r[-1]['cpu_us']:.0f}"
                                                   for n, r in runs.items()), flush=True)
        finally:
            for s in [*servers.values(), mock]:
                s.stop()
    facts = procs.machine_facts()
    lines = ["# The garbage collector's cost per request (`server.gc`)", "",
             f"Command: `python bench/overhead/gc_cost.py --rounds {args.rounds} --duration {args.duration:g} "
             f"-c {args.concurrency}` — {time.strftime('%Y-%m-%dT%H:%M:%S')}, {time.time() - began:.0f} s. "
             f"Machine: {facts['nproc']} cores, {facts['cpu_model']}; load average before {load0}, after "
             f"{procs.loadavg()}. Governed gateway (virtual key, budgets, rate limits, SQLite ledger + journal), "
             f"{args.concurrency} clients, runs of {args.duration:g} s alternating between the two settings.", "",
             "| setting | collector µs/request (median [min–max]) | collections per 10k requests (gen 0 / 1 / 2) "
             "| longest pause | process CPU µs/request (median [min–max]) |", "|---|---:|---:|---:|---:|"]
    for name, rs in runs.items():
        gc_us, cpu = [r["gc_us"] for r in rs], [r["cpu_us"] for r in rs]
        total = sum(r["requests"] for r in rs)
        per = " / ".join(f"{1e4 * sum(r['collections'][g] for r in rs) / total:.1f}" for g in (0, 1, 2))
        label = "tuned (default: freeze, young 10,000)" if name == "tuned" else "python (freeze off, young 700)"
        lines.append(f"| {label} | {statistics.median(gc_us):.1f} [{min(gc_us):.1f}–{max(gc_us):.1f}] | {per} | "
                     f"{max(r['longest_ms'] for r in rs):.1f} ms | {statistics.median(cpu):.0f} "
                     f"[{min(cpu):.0f}–{max(cpu):.0f}] |")
    lines += ["", "The collector's time is timed directly (`gc.callbacks`); process CPU per request also moves with "
              "the machine's load and is shown for scale."]
    md = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
