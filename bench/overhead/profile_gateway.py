"""Where the gateway spends its CPU per request: py-spy samples the gateway process while the load generator runs.

    python bench/overhead/profile_gateway.py [--stream] [--governance] [-c 16] [--seconds 8] [--top 25]

Starts the same mock + gateway as ``run.py``, attaches ``py-spy record --format raw`` (collapsed stacks) to the
gateway for the load's duration, and prints the functions with the most *self* time and the most *inclusive* time,
as a share of the gateway's busy samples, plus CPU µs/request. Writes the collapsed stacks (feed them to any
flame-graph tool) and the summary to ``bench/results/profile-<json|stream>.{txt,md}``. Needs ``py-spy`` (pip) and
ptrace permission on the gateway (root, or ``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import procs  # noqa: E402
from run import REPO, start_servers  # noqa: E402


def parse_collapsed(text: str) -> tuple[Counter[str], Counter[str], int]:
    """Self and inclusive sample counts per frame (``function (file:line)`` without the line) from py-spy raw."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        self_c[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return self_c, incl, total


def _frame(raw: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``: aggregate over lines of one function."""
    name, _, where = raw.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "src/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("-c", "--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--gil", action="store_true",
                    help="sample only the thread holding the GIL (py-spy --gil): shares of Python CPU, without the "
                         "time other threads spend waiting for the GIL or in C code that released it")
    ap.add_argument("--native", action="store_true", help="also C/Rust frames (py-spy --native)")
    ap.add_argument("--keep-stacks", action="store_true", help="also write the collapsed stacks (~300 kB)")
    ap.add_argument("--governance", action="store_true",
                    help="virtual key required, budgets and rate limits on every request (as run.py --governance)")
    args = ap.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    kind = ("stream" if args.stream else "json") + ("-governance" if args.governance else "") + ("-gil" if args.gil else "")
    load0 = procs.loadavg()
    with tempfile.TemporaryDirectory(prefix="tierwise-profile-") as tmpdir:
        tmp = Path(tmpdir)
        servers = start_servers(tmp, governance=args.governance)
        gw = servers["gateway"]
        raw = tmp / "stacks.txt"
        try:
            cmd = [sys.executable, str(HERE / "loadgen.py"), "--url", gw.base + "/v1/chat/completions",
                   "-c", str(args.concurrency), "--duration", str(args.seconds + 1), "--warmup", "1",
                   "--bearer", getattr(gw, "bearer", "bench")]
            load = subprocess.Popen(cmd + (["--stream"] if args.stream else []), stdout=subprocess.PIPE)
            time.sleep(1.0)  # profile the steady state, not the warm-up
            cpu0 = procs.cpu_s(gw.pid)
            spy = subprocess.run([pyspy, "record", "--pid", str(gw.pid), "--duration", str(int(args.seconds)),
                                  "--rate", str(args.rate), "--format", "raw", "--output", str(raw), "--threads",
                                  *(["--gil"] if args.gil else []), *(["--native"] if args.native else [])],
                                 capture_output=True, text=True, check=False)
            cpu1 = procs.cpu_s(gw.pid)
            out, _ = load.communicate(timeout=args.seconds + 60)
        finally:
            for s in servers.values():
                s.stop()
        if spy.returncode != 0 or not raw.exists():
            print(spy.stderr, file=sys.stderr)
            return 1
        import orjson

        res = orjson.loads(out)
        text = raw.read_text()
    per_s = res["measured"] / (args.seconds + 1)
    self_c, incl, total = parse_collapsed(text)
    lines = [f"# Gateway profile: {kind}, {args.concurrency} clients, py-spy {args.rate} Hz for {args.seconds:g} s",
             "", f"Load average before/after {load0} / {procs.loadavg()} on {procs.machine_facts()['nproc']} cores "
             "(a busy machine slows everything; shares of the profile hold up better than absolute numbers).",
             "", f"Throughput {per_s:.0f} req/s, gateway CPU {(cpu1 - cpu0) / args.seconds:.2f} cores "
             f"≈ {1e6 * (cpu1 - cpu0) / args.seconds / per_s:.0f} µs/request; {total} busy samples "
             "(all threads; idle excluded).", "", "## Self time", "", "| % | function |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} | `{f}` |" for f, n in self_c.most_common(args.top)]
    lines += ["", "## Inclusive time", "", "| % | function |", "|---:|---|"]
    threads = sorted(((n, f) for f, n in incl.items() if f.startswith("thread (")), reverse=True)
    wrappers = ("thread (", "<module> (", "_run_code (", "_run_module_as_main (", "main (tierwise/cli.py)",
                "cmd_serve (", "serve (tierwise/gateway/server.py)", "Thread.run (", "Thread._bootstrap")
    lines.insert(6, "Threads: " + ", ".join(f"{f.split()[1].strip('()')}: {100 * n / total:.0f}%" for n, f in threads)
                 + " (the first is the event loop; the other busy one is the ledger writer).")
    lines.insert(7, "")
    lines += [f"| {100 * n / total:.1f} | `{f}` |" for f, n in incl.most_common(args.top + len(wrappers))
              if not f.startswith(wrappers)][:args.top]
    md = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"profile-{kind}.md").write_text(md)
    if args.keep_stacks:
        (args.out / f"profile-{kind}.txt").write_text(text)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
