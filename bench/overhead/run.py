"""Gateway overhead benchmark: the same load generator direct to a fast mock, through a bare aiohttp proxy (the
Python floor) and through the tierwise gateway (ledger on: one SQLite row per request), all on 127.0.0.1.

    python bench/overhead/run.py            # full: 2 rounds x 5 settings x 3 targets, ~4 minutes
    python bench/overhead/run.py --quick    # 1 round, shorter windows, < 1 minute
    python bench/overhead/run.py --no-journal   # the same with the ledger's crash journal off (for comparison)
    python bench/overhead/run.py --governance   # virtual keys required, budgets and rate limits on every request
    python bench/overhead/run.py --telemetry off|metrics|tracing   # /metrics off, on (the default), + OTel spans

Writes ``bench/results/overhead.md`` (the table, also printed) and ``bench/results/overhead.json`` (every run, with
latency ladders, CPU, RSS, machine load). See ``bench/overhead/README.md`` for what each number means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import procs  # noqa: E402
import report  # noqa: E402
from loadgen import request_body  # noqa: E402
from stats import summarize_us  # noqa: E402

TARGETS = ("direct", "bare", "gateway")
NONSTREAM_CONC = (1, 16, 64)
STREAM_CONC = (1, 16)

GATEWAY_CONFIG = """\
server: {{host: 127.0.0.1, port: {port}, request_deadline_s: 30}}
ledger: {{backend: sqlite, path: "{ledger}", journal: {journal}}}
providers:
  mock: {{format: openai, base_url: "{upstream}/v1", api_key: sk-bench-not-a-secret, timeout_s: 10}}
models:
  bench-model: {{provider: mock, upstream: gpt-4o-mini, price: {{input: 0.15, output: 0.6, cache_read: 0.075}}}}
tiers:
  chat: {{description: "helpful reply", models: [bench-model], policy: priority}}
default_tier: chat
fallback_model: bench-model
"""

# Every request authenticated by a virtual key and governed: the key's principal has a daily budget and rate limits,
# its customer and the whole gateway have caps (all far above what a run spends, so every request is admitted,
# reserved and settled, and none is refused).
GOVERNANCE_CONFIG = """governance: {{keys: required, path: "{gov}"}}
budgets:
  caps:
    global: {{daily_usd: 100000, monthly_usd: 1000000}}
    customer:*: {{daily_usd: 100000}}
"""


# --telemetry: metrics are on by default (as shipped); 'tracing' adds an OpenTelemetry span tree per request (made
# and ended; exporter none, so the numbers exclude an exporter's serialisation on its own thread)
TELEMETRY_CONFIG = {
    "off": "telemetry: {metrics: {enabled: false}}\n",
    "metrics": "",
    "tracing": "telemetry: {tracing: {enabled: true, exporter: none}}\n",
}


def governance_key(cfg: Path, env: dict[str, str] | None = None) -> str:
    """A virtual key for the bench's principal, created through the CLI as an operator would (``env``: that of the
    tierwise version to run, e.g. its ``PYTHONPATH``)."""
    out = subprocess.run([sys.executable, "-m", "tierwise.cli", "keys", "create", "--config", str(cfg),
                          "--principal", "bench", "--customer", "bench-co", "--daily-budget-usd", "100000",
                          "--rpm", "10000000", "--tpm", "1000000000", "--json"],
                         capture_output=True, text=True, check=True, env=env)
    return str(orjson.loads(out.stdout)["key"])


def start_servers(tmp: Path, journal: bool = True, governance: bool = False,
                  telemetry: str = "metrics") -> dict[str, procs.Server]:
    py = sys.executable
    mock = procs.Server("mock", [py, str(HERE / "mock_upstream.py")], tmp / "mock.log")
    mock.wait_ready("/health")
    bare = procs.Server("bare", [py, str(HERE / "bare_proxy.py"), "--upstream", mock.base], tmp / "bare.log")
    bare.wait_ready("/health")
    port = procs.free_port()
    cfg = tmp / "tierwise.yaml"
    cfg.write_text(GATEWAY_CONFIG.format(port=port, ledger=tmp / "ledger.db", upstream=mock.base,
                                         journal="true" if journal else "false")
                   + (GOVERNANCE_CONFIG.format(gov=tmp / "governance.db") if governance else "")
                   + TELEMETRY_CONFIG[telemetry])
    bearer = governance_key(cfg) if governance else "bench"
    gw = procs.Server("gateway", [py, "-m", "tierwise.cli", "serve", "--config", str(cfg)], tmp / "gateway.log",
                      cwd=str(tmp), port=port)
    gw.startup_s = gw.wait_ready("/healthz")  # type: ignore[attr-defined]
    gw.bearer = bearer  # type: ignore[attr-defined]
    return {"mock": mock, "bare": bare, "gateway": gw}


def url_of(target: str, servers: dict[str, procs.Server]) -> str:
    server = servers["mock" if target == "direct" else target]
    return server.base + "/v1/chat/completions"


def one_run(target: str, stream: bool, conc: int, rnd: int, servers: dict[str, procs.Server],
            warmup: float, duration: float, keep: dict | None) -> dict:
    """One loadgen process against one target; CPU of every process and of the whole machine around it."""
    pids = {name: s.pid for name, s in servers.items()}
    cpu0 = {name: procs.cpu_s(pid) for name, pid in pids.items()}
    busy0, wall0, load0 = procs.machine_busy_s(), time.time(), procs.loadavg()
    cmd = [sys.executable, str(HERE / "loadgen.py"), "--url", url_of(target, servers), "-c", str(conc),
           "--duration", str(duration), "--warmup", str(warmup),
           "--bearer", getattr(servers["gateway"], "bearer", "bench")] + (["--stream"] if stream else [])
    done = subprocess.run(cmd, capture_output=True, timeout=warmup + duration + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed: {done.stderr.decode()[-2000:]}")
    busy1, wall1 = procs.machine_busy_s(), time.time()
    cpu1 = {name: procs.cpu_s(pid) for name, pid in pids.items()}
    res = orjson.loads(done.stdout)
    lat, ttft = res.pop("latencies_us"), res.pop("ttfts_us")
    if keep is not None:
        keep[f"{target}/{'stream' if stream else 'json'}/c{conc}/r{rnd}"] = {"latency_us": lat, "ttft_us": ttft}
    ours = sum(cpu1[n] - cpu0[n] for n in pids) + res["loadgen_cpu_s"]
    wall = wall1 - wall0
    served = servers["mock" if target == "direct" else target]
    return {
        **res, "target": target, "round": rnd, "rps": res["measured"] / duration,
        "latency": summarize_us(lat), "ttft": summarize_us(ttft) if stream else {},
        "cpu_s": {n: cpu1[n] - cpu0[n] for n in pids} | {"loadgen": res["loadgen_cpu_s"]},
        # CPU the served process spent per request (all requests this run sent, warm-up included)
        "server_cpu_us_per_req": 1e6 * (cpu1[served.name] - cpu0[served.name]) / max(res["sent"], 1),
        "external_cores": max(0.0, (busy1 - busy0) - ours) / wall, "loadavg_before": load0,
        "rss_kb": {n: procs.status_kb(pid, "VmRSS") for n, pid in pids.items()},
    }


def first_request_ms(gw: procs.Server) -> float:
    """Latency of the very first chat request after start-up (lazy initialisation shows up here, e.g. tokenizers)."""
    req = urllib.request.Request(gw.base + "/v1/chat/completions", data=request_body(False),
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {getattr(gw, 'bearer', 'bench')}"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=30) as resp:  # loopback only
        resp.read()
    return (time.perf_counter() - t0) * 1000


def ledger_check(db: Path, sent: int, ok: int) -> dict:
    """After the gateway's SIGTERM shutdown: exactly one row per request sent to it, and every 200 booked as ok."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
        by_status = dict(conn.execute("SELECT status, count(*) FROM requests GROUP BY status").fetchall())
        distinct = conn.execute("SELECT count(DISTINCT id) FROM requests").fetchone()[0]
    return {"rows": rows, "distinct_ids": distinct, "by_status": by_status, "requests_sent": sent,
            "requests_ok": ok, "pass": rows == sent == distinct and by_status.get("ok", 0) == ok}


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "src"], capture_output=True,
                               text=True, check=True).stdout.strip()
        return rev + ("+dirty-src" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round, 0.5 s warm-up + 2 s per setting (< 1 minute)")
    ap.add_argument("--rounds", type=int, help="rounds per setting (default 2; --quick: 1)")
    ap.add_argument("--duration", type=float, help="measured seconds per setting (default 5; --quick: 2)")
    ap.add_argument("--warmup", type=float, help="unmeasured seconds per setting (default 1; --quick: 0.5)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="results directory")
    ap.add_argument("--keep-samples", type=Path, help="also write every raw latency sample to this JSON file")
    ap.add_argument("--no-journal", action="store_true", help="turn the ledger's crash journal off")
    ap.add_argument("--governance", action="store_true",
                    help="virtual keys required, budgets (key, customer, global) and rate limits on every request")
    ap.add_argument("--telemetry", choices=sorted(TELEMETRY_CONFIG), default="metrics",
                    help="off: /metrics off; metrics: on (the default config); tracing: metrics + OpenTelemetry spans")
    args = ap.parse_args()
    rounds = args.rounds or (1 if args.quick else 2)
    duration = args.duration or (2.0 if args.quick else 5.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    keep: dict | None = {} if args.keep_samples else None
    command = ("python bench/overhead/run.py" + (" --quick" if args.quick else "")
               + (" --no-journal" if args.no_journal else "") + (" --governance" if args.governance else "")
               + (f" --telemetry {args.telemetry}" if args.telemetry != "metrics" else ""))
    meta = {"command": command, "started": dt.datetime.now().isoformat(timespec="seconds"), "git": git_rev(),
            "machine": procs.machine_facts(), "loadavg_before": procs.loadavg(), "rounds": rounds,
            "duration_s": duration, "warmup_s": warmup}
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="tierwise-overhead-") as tmpdir:
        tmp = Path(tmpdir)
        servers = start_servers(tmp, journal=not args.no_journal, governance=args.governance,
                                telemetry=args.telemetry)
        gw = servers["gateway"]
        try:
            time.sleep(0.5)  # let start-up work settle before reading "idle" memory
            meta["startup_s"] = gw.startup_s  # type: ignore[attr-defined]
            meta["rss_cold_kb"] = {n: procs.status_kb(s.pid, "VmRSS") for n, s in servers.items()}
            meta["first_request_ms"] = first_request_ms(gw)
            time.sleep(0.5)
            # "idle" = started and warmed by one request, no load: what a deployment sits at between bursts
            meta["rss_idle_kb"] = {n: procs.status_kb(s.pid, "VmRSS") for n, s in servers.items()}
            runs: list[dict] = []
            plan = [(False, c) for c in NONSTREAM_CONC] + [(True, c) for c in STREAM_CONC]
            for rnd in range(rounds):
                order = TARGETS if rnd % 2 == 0 else TARGETS[::-1]  # alternate so no target always goes first
                for stream, conc in plan:
                    for target in order:
                        run = one_run(target, stream, conc, rnd, servers, warmup, duration, keep)
                        runs.append(run)
                        lat = run["latency"]
                        print(f"  r{rnd} {'stream' if stream else 'json  '} c={conc:<3} {target:<8} "
                              f"rps={run['rps']:8.0f} p50={lat.get('p50', 0):7.3f} ms p99={lat.get('p99', 0):7.3f} ms"
                              f" err={run['errors']} ext_load={run['external_cores']:.2f} cores", flush=True)
            meta["rss_after_load_kb"] = {n: procs.status_kb(s.pid, "VmRSS") for n, s in servers.items()}
            meta["rss_peak_kb"] = {n: procs.status_kb(s.pid, "VmHWM") for n, s in servers.items()}
        finally:
            rcs = {n: s.stop() for n, s in servers.items()}
        meta["exit_codes"] = rcs
        gw_runs = [r for r in runs if r["target"] == "gateway"]
        meta["ledger"] = ledger_check(tmp / "ledger.db", 1 + sum(r["sent"] for r in gw_runs),
                                      1 + sum(r["ok"] for r in gw_runs))  # +1: the first request
    meta["loadavg_after"] = procs.loadavg()
    meta["elapsed_s"] = time.time() - t_start
    results = {"meta": meta, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = (("overhead-quick" if args.quick else "overhead") + ("-nojournal" if args.no_journal else "")
            + ("-governance" if args.governance else "")
            + (f"-telemetry-{args.telemetry}" if args.telemetry != "metrics" else ""))
    (args.out / f"{stem}.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    md = report.render(results, NONSTREAM_CONC, STREAM_CONC)
    (args.out / f"{stem}.md").write_text(md)
    if keep is not None:
        args.keep_samples.write_bytes(orjson.dumps(keep))
    print(md)
    return 0 if meta["ledger"]["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
