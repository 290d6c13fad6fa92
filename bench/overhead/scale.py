"""Gateway overhead with keys + budgets + rate limits on, from the zero-setup default to Redis + PostgreSQL replicas.

    python bench/overhead/scale.py            # full: 4 setups x 2 rounds x (1, 16, 64 clients) x 3 targets, ~10 min
    python bench/overhead/scale.py --quick    # 1 round, 1 and 16 clients, 0.5 s warm-up + 2 s each, ~3 min
    python bench/overhead/scale.py --readme   # also rewrite the README's "Gateway overhead" table from this run
    python bench/overhead/scale.py --from-json bench/results/scale.json [--readme]   # re-render a saved run

One command measures, for each setup of ``scale_setups.py`` (SQLite default; Redis state + PostgreSQL ledger with 3
replicas; the same with ``--workers 1`` and ``--workers 2``): added latency p50/p99 at one client (gateway − direct
to the mock upstream), max sustained RPS, gateway CPU per request (CPU time of every gateway process ÷ requests
served) beside the bare aiohttp proxy's (``bare_proxy.py``) measured in the same block, Redis round trips per
request (``INFO commandstats`` deltas of a private Redis, see ``scale_setups.redis_counters``) and Redis's and
PostgreSQL's own CPU
per request, and after SIGTERM that the ledger holds one row per request. Direct, bare and gateway runs are
interleaved within each setup's block, every round; cells are medians over rounds with the [min–max] spread.

Writes ``bench/results/scale.md`` and ``scale.json`` (``--quick``: ``scale-quick.*``) with the machine, its load and
the CPU other processes used during every run. Needs ``redis-server`` on PATH (or ``--redis-url``) and PostgreSQL at
``--pg-dsn`` (default: the test server on 127.0.0.1:5432, database ``test``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
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
import scale_report  # noqa: E402
import scale_setups as setups  # noqa: E402
from run import git_rev  # noqa: E402
from stats import summarize_us  # noqa: E402

TARGETS = ("direct", "bare", "gateway")


def measure(target: str, urls: list[str], served: list[int], conc: int, rnd: int, warmup: float, duration: float,
            bearer: str, redis_url: str | None) -> dict:
    """One load generator run; CPU of the served processes, of Redis and PostgreSQL, and of the machine around it."""
    pg = setups.postgres_pids() if redis_url else []
    cpu0, pg0 = setups.cpu_of(served), setups.cpu_of(pg)
    r0 = setups.redis_counters(redis_url) if redis_url else {}
    busy0, wall0, load0 = procs.machine_busy_s(), time.time(), procs.loadavg()
    cmd = [sys.executable, str(HERE / "loadgen.py"), "-c", str(conc), "--duration", str(duration),
           "--warmup", str(warmup), "--bearer", bearer]
    for url in urls:
        cmd += ["--url", url]
    done = subprocess.run(cmd, capture_output=True, timeout=warmup + duration + 120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed: {done.stderr.decode()[-2000:]}")
    busy1, wall1 = procs.machine_busy_s(), time.time()
    cpu1, pg1 = setups.cpu_of(served), setups.cpu_of(pg)
    r1 = setups.redis_counters(redis_url) if redis_url else {}
    res = orjson.loads(done.stdout)
    lat = res.pop("latencies_us")
    res.pop("ttfts_us")
    sent = max(res["sent"], 1)
    out = {
        **res, "target": target, "round": rnd, "stream": False, "rps": res["measured"] / duration,
        "latency": summarize_us(lat), "processes": len(served),
        "server_cpu_us_per_req": 1e6 * (cpu1 - cpu0) / sent,
        "external_cores": max(0.0, (busy1 - busy0) - (cpu1 - cpu0) - (pg1 - pg0) - res["loadgen_cpu_s"]
                              - ((r1["cpu_s"] - r0["cpu_s"]) if r0 else 0.0)) / (wall1 - wall0),
        "loadavg_before": load0,
    }
    if r0:
        out |= {"redis_round_trips_per_req": (r1["round_trips"] - r0["round_trips"]) / sent,
                "redis_commands_per_req": (r1["commands"] - r0["commands"]) / sent,
                "redis_evalsha_per_req": (r1["evalsha"] - r0["evalsha"]) / sent,
                "redis_cpu_us_per_req": 1e6 * (r1["cpu_s"] - r0["cpu_s"]) / sent,
                "postgres_cpu_us_per_req": 1e6 * (pg1 - pg0) / sent}
    return out


def run_setup(spec: setups.Spec, tmp: Path, base: dict[str, procs.Server], concs: tuple[int, ...], rounds: int,
              warmup: float, duration: float, redis_url: str, pg_dsn: str) -> dict:
    print(f"== {spec.name}: {spec.label}", flush=True)
    dep = setups.start(spec, tmp, base["mock"].base, redis_url, pg_dsn)
    runs: list[dict] = []
    try:
        for rnd in range(rounds):
            order = TARGETS if rnd % 2 == 0 else TARGETS[::-1]
            for conc in concs:
                for target in order:
                    if target == "gateway":
                        urls, served = dep.urls, dep.pids()
                    else:
                        server = base["mock" if target == "direct" else "bare"]
                        urls, served = [server.base + "/v1/chat/completions"], [server.pid]
                    run = measure(target, urls, served, conc, rnd, warmup, duration, dep.bearer,
                                  redis_url if spec.shared and target == "gateway" else None)
                    runs.append(run)
                    lat = run["latency"]
                    extra = (f" redis_round_trips/req={run['redis_round_trips_per_req']:.2f}"
                             if "redis_round_trips_per_req" in run else "")
                    print(f"  r{rnd} c={conc:<3} {target:<8} rps={run['rps']:7.0f} p50={lat.get('p50', 0):7.3f} ms "
                          f"p99={lat.get('p99', 0):7.3f} ms cpu/req={run['server_cpu_us_per_req']:5.0f} us "
                          f"err={run['errors']}{extra} ext_load={run['external_cores']:.2f}", flush=True)
    finally:
        codes = dep.stop()
    gw = [r for r in runs if r["target"] == "gateway"]
    try:
        ledger = setups.ledger_check(dep, pg_dsn, dep.warm_requests + sum(r["sent"] for r in gw),
                                     dep.warm_requests + sum(r["ok"] for r in gw))
    finally:
        setups.cleanup(dep, pg_dsn, redis_url)
    print(f"  ledger: {ledger['rows']} rows for {ledger['requests_sent']} requests -> "
          f"{'PASS' if ledger['pass'] else 'FAIL'}", flush=True)
    return {"name": spec.name, "label": spec.label, "replicas": spec.replicas, "workers": spec.workers,
            "shared": spec.shared, "startup_s": dep.startup_s, "exit_codes": codes, "ledger": ledger, "runs": runs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round, 1 and 16 clients, 0.5 s + 2 s per run (~3 min)")
    ap.add_argument("--rounds", type=int, help="rounds per setting (default 2; --quick: 1)")
    ap.add_argument("--duration", type=float, help="measured seconds per run (default 5; --quick: 2)")
    ap.add_argument("--warmup", type=float, help="unmeasured seconds per run (default 1; --quick: 0.5)")
    ap.add_argument("--setups", default=",".join(s.name for s in setups.SPECS),
                    help="comma-separated subset of: " + ", ".join(s.name for s in setups.SPECS))
    ap.add_argument("--redis-url", help="use this Redis instead of a private redis-server (its commandstats then "
                                        "include other clients' commands)")
    ap.add_argument("--pg-dsn", default=os.environ.get("TIERWISE_BENCH_PG_DSN",
                                                       "host=127.0.0.1 port=5432 user=postgres dbname=test"))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--readme", action="store_true", help="rewrite README.md's gateway-overhead table from this run")
    ap.add_argument("--from-json", type=Path, help="render the report (and --readme) from a saved scale*.json; no run")
    args = ap.parse_args()
    if args.from_json is not None:
        data = orjson.loads(args.from_json.read_bytes())
        md = scale_report.render(data)
        args.from_json.with_suffix(".md").write_text(md)
        print(md)
        if args.readme:
            rel = args.from_json.with_suffix(".md").resolve().relative_to(REPO)
            scale_report.update_readme(REPO / "README.md", data, str(rel))
        return 0
    rounds = args.rounds or (1 if args.quick else 2)
    duration = args.duration or (2.0 if args.quick else 5.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    concs = (1, 16) if args.quick else (1, 16, 64)
    wanted = args.setups.split(",")
    specs = [s for s in setups.SPECS if s.name in wanted]
    if len(specs) != len(wanted):
        ap.error(f"unknown setup in {args.setups!r}")
    command = "python bench/overhead/scale.py" + (" --quick" if args.quick else "")
    meta = {"command": command, "started": dt.datetime.now().isoformat(timespec="seconds"), "git": git_rev(),
            "machine": procs.machine_facts(), "loadavg_before": procs.loadavg(), "rounds": rounds,
            "duration_s": duration, "warmup_s": warmup, "concurrency": list(concs)}
    t0 = time.time()
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="tierwise-scale-") as tmpdir:
        tmp = Path(tmpdir)
        redis = None if args.redis_url or not any(s.shared for s in specs) else setups.PrivateRedis(tmp)
        redis_url = args.redis_url or (redis.url if redis else "")
        py = sys.executable
        mock = procs.Server("mock", [py, str(HERE / "mock_upstream.py")], tmp / "mock.log")
        mock.wait_ready("/health")
        bare = procs.Server("bare", [py, str(HERE / "bare_proxy.py"), "--upstream", mock.base], tmp / "bare.log")
        bare.wait_ready("/health")
        base = {"mock": mock, "bare": bare}
        try:
            if redis_url:
                meta["redis"] = "private redis-server (no persistence)" if redis else "external (--redis-url)"
                meta["redis_version"] = _redis_version(redis_url)
            for spec in specs:
                results.append(run_setup(spec, tmp, base, concs, rounds, warmup, duration, redis_url, args.pg_dsn))
        finally:
            for s in base.values():
                s.stop()
            if redis is not None:
                redis.stop()
    meta["loadavg_after"] = procs.loadavg()
    meta["elapsed_s"] = time.time() - t0
    data = {"meta": meta, "setups": results}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "scale-quick" if args.quick else "scale"
    (args.out / f"{stem}.json").write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    md = scale_report.render(data)
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    if args.readme:
        scale_report.update_readme(REPO / "README.md", data, f"bench/results/{stem}.md")
    return 0 if all(s["ledger"]["pass"] for s in results) else 1


def _redis_version(url: str) -> str:
    import redis

    c = redis.Redis.from_url(url)
    try:
        return str(c.info("server").get("redis_version"))
    finally:
        c.close()


if __name__ == "__main__":
    raise SystemExit(main())
