"""What the shared state costs a request: admit latency and Redis round trips per request, memory vs Redis.

    python bench/state_redis.py [--url redis://127.0.0.1:6379/0] [--requests 4000]

Each simulated request does what the service does on the hot path with keys, budgets and rate limits on: one
``admit`` (a key cap, a customer cap, the global cap, two model caps, rpm + tpm, a session and three candidate models)
and, when it ends, one non-blocking ``settle`` (real cost, per-model cost, a session pin on one request in eight).
Callers run on one uvloop event loop, 1 at a time and 16 at a time; between admit and settle a caller yields once
(the upstream call). Admit latency is timed around the awaited call; round trips are the backend's own counters
(EVALSHA calls, settle batches included) divided by requests; Redis's own time per script comes from
``INFO commandstats``. Every run uses a fresh key prefix, deleted afterwards. Writes ``bench/results/state_redis.md``
with the machine and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from tierwise.state.backend import Cap, RateLimit, Settlement, StateBackend
from tierwise.state.memory_backend import MemoryStateBackend
from tierwise.state.redis_backend import RedisStateBackend, redacted

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "overhead"))
import procs  # noqa: E402

CAPS = [Cap("key:k_bench", 1e6, 1e7), Cap("customer:acme", 1e6, 1e7), Cap("global", 1e7, 1e8),
        Cap("model:large", 1e6), Cap("model:small", 1e6)]
LIMITS = [RateLimit("key:k_bench", 10_000_000, 10_000_000_000)]
MODELS = ("large", "small", "fb")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def run(backend: StateBackend, requests: int, callers: int, tag: str) -> dict[str, float]:
    lat: list[float] = []
    per_caller = requests // callers

    async def caller(c: int) -> None:
        for i in range(per_caller):
            rid = f"{tag}-{c}-{i}"
            t = time.perf_counter()
            adm = await backend.admit(rid, CAPS, LIMITS, 0.002, 1500, {}, 900, f"s{c}", MODELS)
            lat.append((time.perf_counter() - t) * 1000)
            assert adm.refused is None, adm.refused
            await asyncio.sleep(0)  # the upstream call
            backend.settle(Settlement(rid, 0.0015, 1200, {"small": 0.0015}, f"s{c}", "small" if i % 8 == 0 else None))

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(callers)))
    if isinstance(backend, RedisStateBackend):
        assert await backend.flush(30)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    n = per_caller * callers
    out = {"n": n, "p50": statistics.median(lat), "p99": pct(lat, 0.99), "rps": n / wall, "cpu_us": cpu / n * 1e6,
           "rt": 0.0, "admit_rt": 0.0, "settle_rt": 0.0, "batch": 0.0}
    if isinstance(backend, RedisStateBackend):
        rt = backend.round_trips
        out.update(rt=(rt["admit"] + rt["settle"]) / n, admit_rt=rt["admit"] / n, settle_rt=rt["settle"] / n,
                   batch=backend.settled / max(1, rt["settle"]))
    return out


def script_usec(url: str) -> dict[str, float]:
    c = redis.Redis.from_url(url)
    try:
        stats = c.info("commandstats")
    finally:
        c.close()
    e = stats.get("cmdstat_evalsha", {})
    return {"calls": float(e.get("calls", 0)), "usec": float(e.get("usec", 0))}


def cleanup(url: str, prefix: str) -> None:
    c = redis.Redis.from_url(url)
    try:
        keys = list(c.scan_iter(match="{" + prefix + "}:*", count=1000))
        for i in range(0, len(keys), 1000):
            c.delete(*keys[i:i + 1000])
    finally:
        c.close()


async def bench(url: str, requests: int) -> tuple[list[dict[str, Any]], float]:
    rows: list[dict[str, Any]] = []
    redis_server_us = 0.0
    for callers in (1, 16):
        for kind in ("memory", "redis"):
            prefix = f"twbench-{uuid.uuid4().hex[:8]}"
            backend: StateBackend = MemoryStateBackend() if kind == "memory" else \
                RedisStateBackend(url, prefix=prefix)
            try:
                await run(backend, 200, callers, "warm")  # scripts loaded, connections open
                if isinstance(backend, RedisStateBackend):
                    backend.round_trips.clear()
                    backend.settled = 0
                before = script_usec(url)
                r = await run(backend, requests, callers, "run")
                after = script_usec(url)
                if kind == "redis":
                    calls = after["calls"] - before["calls"]
                    r["server_us"] = (after["usec"] - before["usec"]) / max(1.0, calls)
                    redis_server_us = max(redis_server_us, r["server_us"])
                rows.append({"backend": kind, "callers": callers, **r})
                print(rows[-1], flush=True)
            finally:
                await backend.aclose()
                if kind == "redis":
                    cleanup(url, prefix)
    return rows, redis_server_us


def redis_facts(url: str) -> str:
    c = redis.Redis.from_url(url)
    try:
        info = c.info("server")
    finally:
        c.close()
    return f"Redis {info.get('redis_version')} on this machine ({redacted(url)}, over loopback TCP)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("TIERWISE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "state_redis.md")
    args = ap.parse_args()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    load0, busy0, t_start = procs.loadavg(), procs.machine_busy_s(), time.time()
    with runner:
        rows, _ = runner.run(bench(args.url, args.requests))
    wall = time.time() - t_start
    busy = (procs.machine_busy_s() - busy0) / wall
    m = procs.machine_facts()
    lines = [
        "# State backends: admit latency and Redis round trips per request",
        "",
        f"Command: `python bench/state_redis.py --requests {args.requests}` — "
        f"{dt.datetime.now().isoformat(timespec='seconds')}, {wall:.0f} s.",
        f"Machine: {m['nproc']} cores, {m['cpu_model']}, {m['mem_total_mb']} MB, Python {m['python']}, "
        f"kernel {m['kernel']}, redis-py {redis.__version__} (hiredis parser). {redis_facts(args.url)}. "
        f"Load average before {load0}, after {procs.loadavg()}; the machine was about {busy:.2f} cores busy "
        "during the run (this benchmark, Redis, and whatever else was running).",
        "",
        "Each request: one `admit` (5 caps of which 2 model caps, rpm + tpm, a session, 3 candidate models) and one "
        "`settle` (queued; sent by the backend's task in batches). Callers share one uvloop event loop.",
        "",
        "| backend | callers | admit p50 ms | admit p99 ms | requests/s | client CPU µs/request | "
        "round trips/request | of which admit | of which settle | settlements/batch | Redis µs/script |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        redis_cols = (f"{r['rt']:.2f} | {r['admit_rt']:.2f} | {r['settle_rt']:.3f} | {r['batch']:.1f} | "
                      f"{r['server_us']:.0f}") if r["backend"] == "redis" else "0 | 0 | 0 | – | –"
        lines.append(f"| {r['backend']} | {r['callers']} | {r['p50']:.3f} | {r['p99']:.3f} | {r['rps']:,.0f} | "
                     f"{r['cpu_us']:.0f} | {redis_cols} |")
    lines += [
        "",
        "Admit latency with 16 callers includes waiting for the event loop (16 callers' work queued on one core), "
        "not only Redis. Round trips: an admit is always one EVALSHA; settlements that queue up while a batch is in "
        "flight go out together, so at one caller each request costs 2 round trips and with concurrency fewer. "
        "'Redis µs/script' is Redis's own time per EVALSHA (admit and settle batches together, from "
        "`INFO commandstats`); Redis runs scripts one at a time, so it bounds the state's throughput on one shard.",
        "",
    ]
    text = "\n".join(lines)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
