"""CPU per script call on the request path: redis-py's pooled connection vs tierwise's pipelined one.

    python bench/state_resp.py [--rounds 5] [--calls 8000] [-c 16] [--url redis://127.0.0.1:6379/0]

One process, one uvloop, ``-c`` concurrent callers each running an atomic Lua script (``EVALSHA``, one key, one
argument, as admission does) ``--calls`` times in all, through (a) redis-py's asyncio connection pool the way
``RedisStateBackend`` used it until 2026-12-03 (check out a connection, send the packed command, read the reply,
release) and (b) :class:`tierwise.state.resp.RespConnection`; the two alternate every round. CPU time of this
process (user + system) per call; Redis's own CPU is not counted. Writes ``bench/results/state_resp.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import resource
import statistics
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis
import uvloop
from redis.asyncio import Redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench" / "overhead"))

import procs  # noqa: E402
from run import git_rev  # noqa: E402

from tierwise.state.resp import RespConnection  # noqa: E402

SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure(kind: str, url: str, key: str, calls: int, conc: int) -> float:
    client = Redis.from_url(url, decode_responses=True, socket_timeout=0.5)
    sha = await client.script_load(SCRIPT)
    pool = client.connection_pool
    resp = RespConnection(dict(pool.connection_kwargs), 0.5)

    async def pooled() -> object:
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(conn.pack_command("EVALSHA", sha, 1, key, 1), False)
            return await conn.read_response()
        finally:
            await pool.release(conn)

    async def pipelined() -> object:
        return await resp.call("EVALSHA", sha, 1, key, 1)

    call: Callable[[], Awaitable[object]] = pooled if kind == "redis-py" else pipelined

    async def worker(k: int) -> None:
        for _ in range(k):
            await call()

    await asyncio.gather(*[worker(200) for _ in range(conc)])  # warm
    c0 = cpu_s()
    await asyncio.gather(*[worker(calls // conc) for _ in range(conc)])
    used = cpu_s() - c0
    await resp.aclose()
    await client.aclose()
    return 1e6 * used / (calls // conc * conc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=8000)
    ap.add_argument("-c", "--concurrency", type=int, default=16)
    ap.add_argument("--url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    key = f"twbench-resp-{uuid.uuid4().hex[:8]}"
    load0 = procs.loadavg()
    results: dict[str, list[float]] = {"redis-py": [], "tierwise": []}
    try:
        for _ in range(args.rounds):
            for kind in results:
                results[kind].append(uvloop.run(measure(kind, args.url, key, args.calls, args.concurrency)))
    finally:
        redis.Redis.from_url(args.url).delete(key)
    med = {k: statistics.median(v) for k, v in results.items()}
    facts = procs.machine_facts()
    lines = [
        "# CPU per Redis script call: redis-py's pool vs tierwise's pipelined connection (`tierwise.state.resp`)", "",
        f"Command: `python bench/state_resp.py --rounds {args.rounds} --calls {args.calls} -c {args.concurrency}` — "
        f"{dt.datetime.now().isoformat(timespec='seconds')}, git {git_rev()}. Machine: {facts['nproc']} cores, "
        f"{facts['cpu_model']}, Python {facts['python']}, redis-py {redis.__version__}. Load average before {load0}, "
        f"after {procs.loadavg()} (the two alternate every round, so both see the same load).", "",
        "| client | median CPU µs/call | rounds |", "|---|---:|---|",
    ]
    lines += [f"| {k} | {med[k]:.0f} | {', '.join(f'{x:.0f}' for x in v)} |" for k, v in results.items()]
    lines += ["", f"tierwise's connection uses {med['tierwise'] / med['redis-py']:.2f}× redis-py's CPU per call."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "state_resp.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
