"""The gateway deployments ``scale.py`` measures, as real processes: configs, start/stop, CPU, Redis and ledger checks.

Every setup has virtual keys required (one key made with ``tierwise keys create``), a key budget, a customer cap, a
global cap and rate limits (all far above what a run spends: every request is authenticated, admitted, reserved and
settled, none refused), the crash journal on, and one model behind the mock upstream:

- ``sqlite``: the zero-setup default — one process, memory state, SQLite ledger and governance store;
- ``redis-pg-x3``: three ``tierwise serve`` replicas (own ports, own journals, as on three hosts) sharing Redis state
  and a PostgreSQL ledger and governance store; the load generator spreads its clients over them round-robin;
- ``redis-pg-w1`` / ``redis-pg-w2``: one ``tierwise serve --workers N`` (one port, SO_REUSEPORT) on Redis + PostgreSQL:
  how throughput grows with processes on this machine's cores.

Redis is a private ``redis-server`` started for the run (its ``INFO commandstats`` and CPU then count this gateway's
commands only; no persistence) unless ``--redis-url`` names one; PostgreSQL is the server at ``--pg-dsn`` with a
fresh schema per setup, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import procs

HERE = Path(__file__).resolve().parent

BASE = """\
server: {{host: 127.0.0.1, port: {port}, request_deadline_s: 30}}
providers:
  mock: {{format: openai, base_url: "{upstream}/v1", api_key: sk-bench-not-a-secret, timeout_s: 10}}
models:
  bench-model: {{provider: mock, upstream: gpt-4o-mini, price: {{input: 0.15, output: 0.6, cache_read: 0.075}}}}
tiers:
  chat: {{description: "helpful reply", models: [bench-model], policy: priority}}
default_tier: chat
fallback_model: bench-model
budgets:
  caps:
    global: {{daily_usd: 100000, monthly_usd: 1000000}}
    customer:*: {{daily_usd: 100000}}
"""
SQLITE = """\
ledger: {{backend: sqlite, path: "{ledger}", journal: true}}
governance: {{keys: required, path: "{gov}"}}
"""
SHARED = """\
ledger: {{backend: postgres, dsn: "{dsn}", pg_schema: {schema}, path: "{local}", journal: true}}
state: {{backend: redis, url: "{redis}", prefix: "{prefix}"}}
governance: {{keys: required}}
"""


@dataclass(frozen=True)
class Spec:
    name: str
    shared: bool  # Redis state + PostgreSQL ledger (else memory state + SQLite)
    replicas: int = 1  # separate `tierwise serve` processes, each on its own port
    workers: int = 1  # `tierwise serve --workers N` (one port)

    @property
    def label(self) -> str:
        if not self.shared:
            return "SQLite ledger, memory state, 1 process"
        if self.replicas > 1:
            return f"Redis state + PostgreSQL ledger, {self.replicas} replicas (separate `tierwise serve`)"
        return f"Redis state + PostgreSQL ledger, `--workers {self.workers}`"


SPECS = (Spec("sqlite", False), Spec("redis-pg-x3", True, replicas=3), Spec("redis-pg-w1", True),
         Spec("redis-pg-w2", True, workers=2))


class PrivateRedis:
    """A throwaway ``redis-server`` on a free loopback port: no persistence, our commands only."""

    def __init__(self, tmp: Path) -> None:
        self.port = procs.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = open(tmp / "redis.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(tmp)], stdout=self.log, stderr=self.log)
        import redis

        deadline = time.time() + 20
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=1).ping()
                return
            except Exception:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("private redis-server did not start (see redis.log)") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


def script_commands() -> frozenset[str]:
    """The commands tierwise's Lua scripts run (``redis.call('…')`` in :mod:`tierwise.state.redis_backend`)."""
    import tierwise.state.redis_backend as rb

    text = Path(rb.__file__).read_text()
    return frozenset(m.lower() for m in re.findall(r"redis\.p?call\(\s*['\"](\w+)", text))


def redis_counters(url: str) -> dict[str, float]:
    """Commands served so far and the server's CPU seconds (user + sys).

    ``INFO commandstats`` counts the commands a Lua script runs as well as the client's, so the client's round trips
    are the commands no tierwise script runs (EVALSHA, SCRIPT LOAD, connection set-up, and anything new a future
    hot path might send); a client-sent command that a script also uses (``TIME``/``MGET`` of the metrics' usage
    read, not exercised here) would be missed. ``INFO`` itself (this function) is left out."""
    import redis

    c = redis.Redis.from_url(url)
    try:
        stats, cpu = c.info("commandstats"), c.info("cpu")
    finally:
        c.close()
    calls = {k.removeprefix("cmdstat_"): float(v.get("calls", 0)) for k, v in stats.items() if k != "cmdstat_info"}
    inner = script_commands()
    return {"commands": sum(calls.values()), "evalsha": calls.get("evalsha", 0.0),
            "round_trips": sum(v for k, v in calls.items() if k.split("|")[0] not in inner),
            "cpu_s": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])}


def children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (``--workers`` processes), from /proc."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def postgres_pids() -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == "postgres":
                    out.append(int(entry))
            except OSError:
                continue
    return out


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += procs.cpu_s(pid)
        except (OSError, ValueError, IndexError):
            continue  # exited
    return total


@dataclass
class Deployment:
    """One setup's running gateway processes."""

    spec: Spec
    tmp: Path
    servers: list[procs.Server] = field(default_factory=list)
    bearer: str = ""
    schema: str = ""
    prefix: str = ""
    startup_s: float = 0.0
    warm_requests: int = 0

    @property
    def urls(self) -> list[str]:
        return [s.base + "/v1/chat/completions" for s in self.servers]

    def pids(self) -> list[int]:
        """Every gateway process (a --workers supervisor and its workers)."""
        out = []
        for s in self.servers:
            out += [s.pid, *children(s.pid)]
        return out

    def stop(self) -> dict[str, int]:
        return {f"gateway{i}": s.stop(60) for i, s in enumerate(self.servers)}


def start(spec: Spec, tmp: Path, upstream: str, redis_url: str, pg_dsn: str) -> Deployment:
    """Configs, the bench key (``tierwise keys create``, as an operator would), then the processes, one by one (the
    first creates the PostgreSQL schema)."""
    from run import governance_key

    d = Deployment(spec, tmp / spec.name)
    d.tmp.mkdir()
    if spec.shared:
        d.schema, d.prefix = f"twbench_{uuid.uuid4().hex[:10]}", f"twb{uuid.uuid4().hex[:8]}"
    cfgs = []
    for i in range(spec.replicas):
        port = procs.free_port()
        local = d.tmp / f"replica{i}"
        local.mkdir()
        extra = (SHARED.format(dsn=pg_dsn, schema=d.schema, local=local / "ledger", redis=redis_url, prefix=d.prefix)
                 if spec.shared else SQLITE.format(ledger=local / "ledger.db", gov=d.tmp / "governance.db"))
        cfg = local / "tierwise.yaml"
        cfg.write_text(BASE.format(port=port, upstream=upstream) + extra)
        cfgs.append((cfg, port))
    t0 = time.time()
    try:
        d.bearer = governance_key(cfgs[0][0])
        for i, (cfg, port) in enumerate(cfgs):
            cmd = [sys.executable, "-m", "tierwise.cli", "serve", "--config", str(cfg)]
            if spec.workers > 1:
                cmd += ["--workers", str(spec.workers)]
            server = procs.Server(f"gateway{i}", cmd, d.tmp / f"replica{i}" / "serve.log", cwd=str(cfg.parent),
                                  port=port)
            d.servers.append(server)
            server.wait_ready("/healthz")
        d.startup_s = time.time() - t0
        for url in d.urls:  # lazy initialisation off the clock; each is one more ledger row
            for _ in range(2 * spec.workers):
                first_request(url, d.bearer)
                d.warm_requests += 1
    except BaseException:  # a setup that cannot start leaves no process, schema or Redis keys behind
        d.stop()
        with contextlib.suppress(Exception):  # the original error is the one to see
            cleanup(d, pg_dsn, redis_url)
        raise
    return d


def first_request(url: str, bearer: str) -> None:
    from loadgen import request_body

    req = urllib.request.Request(url, data=request_body(False), headers={"Content-Type": "application/json",
                                                                         "Authorization": f"Bearer {bearer}"})
    with urllib.request.urlopen(req, timeout=30) as resp:  # loopback only
        resp.read()


def ledger_check(d: Deployment, pg_dsn: str, sent: int, ok: int) -> dict:
    """After SIGTERM: one ledger row per request sent (distinct ids), every 200 booked ``ok``."""
    if d.spec.shared:
        import psycopg

        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            table = f'"{d.schema}".tierwise_ledger'
            rows, distinct = conn.execute(f"SELECT count(*), count(DISTINCT id) FROM {table}").fetchone()  # type: ignore[misc]
            by_status = dict(conn.execute(f"SELECT status, count(*) FROM {table} GROUP BY status").fetchall())
    else:
        import sqlite3

        with sqlite3.connect(d.tmp / "replica0" / "ledger.db") as conn:
            rows, distinct = conn.execute("SELECT count(*), count(DISTINCT id) FROM requests").fetchone()
            by_status = dict(conn.execute("SELECT status, count(*) FROM requests GROUP BY status").fetchall())
    return {"rows": rows, "distinct_ids": distinct, "by_status": by_status, "requests_sent": sent,
            "requests_ok": ok, "pass": rows == sent == distinct and by_status.get("ok", 0) == ok}


def cleanup(d: Deployment, pg_dsn: str, redis_url: str) -> None:
    if not d.spec.shared:
        return
    import psycopg
    import redis

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{d.schema}" CASCADE')
    c = redis.Redis.from_url(redis_url)
    try:
        keys = list(c.scan_iter(match="{" + d.prefix + "}:*", count=1000))
        for i in range(0, len(keys), 1000):
            c.delete(*keys[i:i + 1000])
    finally:
        c.close()
