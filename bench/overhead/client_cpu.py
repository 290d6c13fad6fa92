"""CPU per upstream call: aiohttp's ClientSession (what the gateway used until 2026-12-03) vs tierwise's own client.

    python bench/overhead/client_cpu.py [--rounds 5] [--requests 8000] [-c 16]

One process, one uvloop, the benchmark's lean mock upstream (``mock_upstream.py``) in another process. Each round
sends the same ~200-token chat body ``--requests`` times from ``-c`` concurrent callers through each client in turn
(session/pool warmed first) and reads the process's CPU time (user + system) around the batch: CPU µs per call,
parse of the JSON answer included. The aiohttp client is configured as the gateway configured it (keep-alive pool,
default headers, a per-call ``ClientTimeout``); tierwise's is :class:`tierwise.providers.wire.Origin` as
``HttpProvider`` uses it. Writes ``bench/results/client_cpu.md`` with the machine and its load average.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import resource
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
import uvloop

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import procs  # noqa: E402
from run import git_rev  # noqa: E402

from tierwise.providers.wire import Origin  # noqa: E402

HEADERS = {"Content-Type": "application/json", "Accept": "application/json", "Authorization": "Bearer bench"}


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def batch(call: Callable[[], Awaitable[object]], n: int, conc: int) -> None:
    async def worker(k: int) -> None:
        for _ in range(k):
            await call()
    await asyncio.gather(*[worker(n // conc) for _ in range(conc)])


async def measure(kind: str, base: str, n: int, conc: int) -> float:
    body = loadgen.request_body(False)
    if kind == "aiohttp":
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30),
                                        headers=HEADERS, skip_auto_headers=("User-Agent",))
        timeout = aiohttp.ClientTimeout(total=60, connect=5)

        async def call() -> object:
            async with session.post(base + "/v1/chat/completions", data=body, timeout=timeout) as resp:
                return orjson.loads(await resp.read())
        close: Callable[[], Awaitable[None]] = session.close
    else:
        origin = Origin(base + "/v1", HEADERS, max_connections=256, connect_timeout_s=5)

        async def call() -> object:
            conn, resp = await origin.post("/chat/completions", body, timeout_s=60, streaming=False)
            try:
                return orjson.loads(await resp.read())
            finally:
                origin.release(conn)
        close = origin.aclose
    await batch(call, max(conc, n // 4), conc)  # warm the pool
    c0 = cpu_s()
    await batch(call, n, conc)
    used = cpu_s() - c0
    await close()
    return 1e6 * used / (n // conc * conc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=8000)
    ap.add_argument("-c", "--concurrency", type=int, default=16)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    load0 = procs.loadavg()
    results: dict[str, list[float]] = {"aiohttp": [], "tierwise": []}
    with tempfile.TemporaryDirectory(prefix="tierwise-client-cpu-") as tmp:
        mock = procs.Server("mock", [sys.executable, str(HERE / "mock_upstream.py")], Path(tmp) / "mock.log")
        mock.wait_ready("/health")
        try:
            for _ in range(args.rounds):
                for kind in results:
                    results[kind].append(uvloop.run(measure(kind, mock.base, args.requests, args.concurrency)))
        finally:
            mock.stop()
    med = {k: statistics.median(v) for k, v in results.items()}
    facts = procs.machine_facts()
    lines = [
        "# CPU per upstream call: aiohttp ClientSession vs tierwise's client (`tierwise.providers.wire`)", "",
        f"Command: `python bench/overhead/client_cpu.py --rounds {args.rounds} --requests {args.requests} "
        f"-c {args.concurrency}` — {dt.datetime.now().isoformat(timespec='seconds')}, git {git_rev()}. Machine: "
        f"{facts['nproc']} cores, {facts['cpu_model']}, Python {sys.version.split()[0]}, aiohttp "
        f"{aiohttp.__version__}. Load average before {load0}, after {procs.loadavg()} (other sessions' work shares "
        "the machine; the two clients alternate every round, so both see the same load).", "",
        "CPU time of the calling process (user + system) per call, JSON answer parsed; the mock upstream's CPU is "
        "not counted.", "",
        "| client | median CPU µs/call | rounds |", "|---|---:|---|",
    ]
    lines += [f"| {k} | {med[k]:.0f} | {', '.join(f'{x:.0f}' for x in v)} |" for k, v in results.items()]
    lines += ["", f"tierwise's client uses {med['tierwise'] / med['aiohttp']:.2f}× aiohttp's CPU per call."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "client_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
