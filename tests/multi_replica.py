"""Three real `tierwise serve` replicas on one Redis and one PostgreSQL, behind one fake upstream, for
``tests/test_multi_replica.py``: configs, processes, the public CLI, the shared ledger and the shared state.

Every cluster has its own PostgreSQL schema (ledger and governance tables; dropped afterwards) and its own Redis key
prefix (its keys deleted afterwards), so parallel runs on the shared servers never collide. Each replica has its own
config file, port and local ledger files (crash journal, fallback file), as on three hosts.

Clients tag every request with a unique id twice: the OpenAI ``user`` field, which the gateway forwards upstream
(so each call the fake upstream saw names its request), and the ``X-Tierwise-Tags: rid=…`` header, which the ledger
records (so each row names its request) — the test matches clients, upstream calls and ledger rows without
trusting the gateway's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests import procs
from tests.fakes.upstream import FakeUpstream
from tierwise.state.backend import Usage

PG_DSN = os.environ.get("TIERWISE_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")
REDIS_URL = os.environ.get("TIERWISE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RESERVATION_TTL_S = 12.0  # a killed replica's reservations are released this long after they were made
PRICES = {"small": (0.1, 0.4), "large": (2.5, 10.0)}  # USD per million input / output tokens


def problem() -> str | None:
    """Why the shared servers cannot be used here (None: both answer)."""
    try:
        import psycopg
        import redis
    except ImportError as exc:
        return f"{exc.name} is not installed: pip install -e '.[test]'"
    try:
        with psycopg.connect(PG_DSN, connect_timeout=3):
            pass
    except psycopg.Error as exc:
        return f"PostgreSQL not reachable at {PG_DSN} ({type(exc).__name__}); start it or set TIERWISE_TEST_PG_DSN"
    try:
        c = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        c.ping()
        c.close()
    except Exception as exc:
        return f"Redis not reachable ({type(exc).__name__}): start it or set TIERWISE_TEST_REDIS_URL"
    return None


def config_text(port: int, local: Path, schema: str, prefix: str, upstream_url: str, caps: str) -> str:
    return f"""
server: {{port: {port}, request_deadline_s: 10}}
ledger: {{backend: postgres, dsn: "{PG_DSN}", pg_schema: {schema}, path: "{local}", flush_interval_ms: 50}}
state: {{backend: redis, url: "{REDIS_URL}", prefix: "{prefix}", timeout_s: 5}}
governance: {{keys: required, refresh_s: 0.2}}
budgets: {{reservation_ttl_s: {RESERVATION_TTL_S}, caps: {{{caps}}}}}
retry: {{max_retries: 1, base_delay_ms: 5, max_delay_ms: 20}}
providers:
  fake: {{format: openai, base_url: "{upstream_url}", api_key_env: FAKE_KEY, timeout_s: 8}}
models:
  small: {{provider: fake, upstream: small-up, price: {{input: {PRICES['small'][0]}, output: {PRICES['small'][1]}}}}}
  large: {{provider: fake, upstream: large-up, price: {{input: {PRICES['large'][0]}, output: {PRICES['large'][1]}}}}}
tiers:
  label: {{models: [small]}}
  chat: {{models: [large, small]}}
default_tier: chat
fallback_model: small
"""


@dataclass
class Answer:
    """What one client saw for one request."""

    uid: str
    replica: int
    status: int | None  # None: no HTTP answer (connection refused or cut)
    request_id: str | None = None
    complete: bool = False  # a 200 whose body was whole (a stream ended with [DONE])
    model: str | None = None
    code: str | None = None  # the error code of a non-200
    message: str = ""
    sent_at: float = 0.0
    done_at: float = 0.0  # when the client had the whole answer (or gave up)


@dataclass
class Cluster:
    tmp: Path
    up: FakeUpstream
    schema: str
    prefix: str
    caps: str
    ports: list[int] = field(default_factory=list)
    cfgs: list[Path] = field(default_factory=list)
    procs: list[subprocess.Popen | None] = field(default_factory=list)
    _book: Any = None  # the replicas' price book (see reservation)

    # -- processes ---------------------------------------------------------------------------------------------

    def start(self, n: int = 3) -> Cluster:
        for i in range(n):
            port = procs.free_port()
            d = self.tmp / f"replica{i}"
            d.mkdir(exist_ok=True)
            cfg = d / "tierwise.yaml"
            cfg.write_text(config_text(port, d / "ledger", self.schema, self.prefix, self.up.base_url, self.caps))
            self.ports.append(port)
            self.cfgs.append(cfg)
            self.procs.append(None)
        self.cli("check-config", str(self.cfgs[0]), config=False)  # reaches Redis and PostgreSQL, or says why
        for i in range(n):  # all at once on a fresh schema, as a deployment starts them: they race to create it
            self.procs[i] = procs.spawn_serve(self.cfgs[i], stderr_path=self.log(i), reap_after_test=False)
        for i in range(n):
            procs.wait_ready(self.procs[i], self.ports[i], timeout_s=180)  # type: ignore[arg-type]
        return self

    def log(self, i: int) -> Path:
        return self.tmp / f"replica{i}" / "serve.log"

    def restart(self, i: int) -> None:
        self.procs[i] = procs.spawn_serve(self.cfgs[i], stderr_path=self.log(i), reap_after_test=False)
        procs.wait_ready(self.procs[i], self.ports[i], timeout_s=120)  # type: ignore[arg-type]

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    def stop_all(self) -> dict[int, int]:
        """SIGTERM every live replica; their return codes."""
        live = [(i, p) for i, p in enumerate(self.procs) if p is not None and p.poll() is None]
        for _, p in live:
            p.send_signal(signal.SIGTERM)
        out = {}
        for i, p in live:
            try:
                out[i] = p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                out[i] = p.wait(30)
        return out

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    # -- the public CLI ----------------------------------------------------------------------------------------

    def cli(self, *args: str, replica: int = 0, config: bool = True) -> str:
        """``tierwise ARGS --config <the replica's config>``; its stdout (a non-zero exit fails the test)."""
        more = ["--config", str(self.cfgs[replica])] if config else []
        r = subprocess.run([sys.executable, "-m", "tierwise.cli", *args, *more],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "FAKE_KEY": procs.SECRET})
        assert r.returncode == 0, f"tierwise {' '.join(args)} exited {r.returncode}: {r.stderr[-2000:]}"
        return r.stdout

    def create_key(self, principal: str, *flags: str) -> tuple[str, str]:
        """``tierwise keys create --principal P FLAGS --json``: (key id, key)."""
        out = json.loads(self.cli("keys", "create", "--principal", principal, *flags, "--json"))
        return out["id"], out["key"]

    def spend(self, by: str, since: float) -> dict[str, Any]:
        """``tierwise spend --by BY --format json`` over [since, an hour from now)."""
        return json.loads(self.cli("spend", "--by", by, "--since", str(int(since)), "--until",
                                   f"{time.time() + 3600:.0f}", "--format", "json"))

    # -- the shared ledger and state ---------------------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(PG_DSN, autocommit=True, row_factory=dict_row) as conn:
            return list(conn.execute(
                f'SELECT id, ts, status, http_status, principal, key_id, customer, department, session_id, model, '
                f'cost_usd, estimated_cost_usd, tags, attempts FROM "{self.schema}".tierwise_ledger').fetchall())

    def rows_for(self, uids: set[str], timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """The ledger once it holds a row for each of ``uids`` (the writers flush every 50 ms) or ``timeout_s``
        passed (the caller's assertions then say what is missing)."""
        deadline = time.time() + timeout_s
        while True:
            rows = self.rows()
            if uids <= {r["tags"].get("rid") for r in rows} or time.time() > deadline:
                return rows
            time.sleep(0.2)

    def usage(self, scopes: list[str]) -> dict[str, Usage]:
        """Each scope's settled and reserved spend today and this month, read through the StateBackend interface
        (``read_usage``: reserves and releases nothing)."""
        from tierwise.state.redis_backend import RedisStateBackend

        async def read() -> dict[str, Usage]:
            st = RedisStateBackend(REDIS_URL, prefix=self.prefix, timeout_s=5)
            try:
                return await st.read_usage(scopes)
            finally:
                await st.aclose()

        return asyncio.run(read())

    def metric(self, replica: int, name: str, scope: str) -> float | None:
        """A budget gauge of ``scope`` for today from a replica's public ``/metrics`` (None: not exposed)."""
        text = httpx.get(f"{self.url(replica)}/metrics", timeout=30).text
        for line in text.splitlines():
            if line.startswith(name + "{") and f'scope="{scope}"' in line and 'period="day"' in line:
                return float(line.rsplit(" ", 1)[1])
        return None

    def usage_once_released(self, scopes: list[str], timeout_s: float) -> dict[str, Usage]:
        """:meth:`usage` once nothing is reserved on any of ``scopes`` any more, or after ``timeout_s``."""
        deadline = time.time() + timeout_s
        while True:
            usage = self.usage(scopes)
            if not any(u.daily_reserved for u in usage.values()) or time.time() > deadline:
                return usage
            time.sleep(0.3)

    def pins(self, sessions: list[str]) -> dict[str, str | None]:
        """The model each session is pinned to in the shared state (an admit that governs nothing reads it)."""
        from tierwise.state.redis_backend import RedisStateBackend

        async def probe() -> dict[str, str | None]:
            st = RedisStateBackend(REDIS_URL, prefix=self.prefix, timeout_s=5)
            try:
                return {s: (await st.admit(f"probe-{uuid.uuid4().hex}", [], [], 0.0, 0, {}, 5.0, session_id=s)).pin
                        for s in sessions}
            finally:
                await st.aclose()

        return asyncio.run(probe())

    def cleanup(self) -> None:
        import psycopg
        import redis

        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        c = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(c.scan_iter(match="{" + self.prefix + "}:*", count=1000))
            for i in range(0, len(keys), 1000):
                c.delete(*keys[i:i + 1000])
        finally:
            c.close()


@contextlib.contextmanager
def cluster(tmp: Path, caps: str, n: int = 3) -> Iterator[Cluster]:
    """``n`` replicas on a fresh schema and prefix, behind one fake upstream; stopped and cleaned up afterwards."""
    tag = uuid.uuid4().hex[:10]
    with FakeUpstream(max_records=1_000_000) as up:
        c = Cluster(tmp, up, f"tw_mr_{tag}", f"twmr-{tag}", caps)
        try:
            yield c.start(n)
        finally:
            for p in c.procs:
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait(30)
            c.cleanup()


def request_body(uid: str, max_tokens: int = 300) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"hello {uid}"}], "user": uid, "max_tokens": max_tokens}


def reservation(c: Cluster, uid: str, tier: str = "label") -> float:
    """What the gateway reserves against each budget for the request ``uid`` sent (tier ``label``: one model, so
    the worst case over the plan is that model's), computed by the gateway's own code on a replica's config."""
    from tierwise.config import load_config_text
    from tierwise.pricing import PriceBook

    if c._book is None:
        c._book = PriceBook(load_config_text(c.cfgs[0].read_text(), env={"FAKE_KEY": procs.SECRET}))
    return c._book.estimator(request_body(uid), tier).ceiling("small")


def send(client: httpx.Client, c: Cluster, replica: int, key: str, uid: str, *, tier: str = "label",
         stream: bool = False, session: str | None = None, max_tokens: int = 300) -> Answer:
    """One chat request from ``key`` to a replica, tagged with ``uid`` (see the module docstring)."""
    body = request_body(uid, max_tokens)
    headers = {"Authorization": f"Bearer {key}", "X-Tierwise-Tags": f"rid={uid}"}
    if session is not None:
        headers["X-Session-Id"] = session
    url = f"{c.url(replica)}/v1/tiers/{tier}/chat/completions"
    ans = Answer(uid, replica, None, sent_at=time.time())
    try:
        if stream:
            body["stream"] = True
            with client.stream("POST", url, json=body, headers=headers) as r:
                text = "".join(r.iter_text())
                ans.status, ans.complete = r.status_code, r.status_code == 200 and text.rstrip().endswith("[DONE]")
                _head(ans, r, text)
        else:
            r = client.post(url, json=body, headers=headers)
            ans.status, ans.complete = r.status_code, r.status_code == 200 and "choices" in r.json()
            _head(ans, r, r.text)
    except (httpx.HTTPError, ValueError):
        ans.complete = False  # the connection was refused or cut: whatever status came, no whole answer
    ans.done_at = time.time()
    return ans


def _head(ans: Answer, r: httpx.Response, text: str) -> None:
    ans.request_id = r.headers.get("x-tierwise-request-id")
    ans.model = r.headers.get("x-tierwise-model")
    if r.status_code != 200:
        err = json.loads(text).get("error", {})
        ans.code, ans.message = err.get("code"), err.get("message", "")


class Traffic:
    """Client threads, each sending its jobs round-robin over the replicas that are not marked down."""

    def __init__(self, c: Cluster) -> None:
        self.c = c
        self.answers: list[Answer] = []
        self.down: set[int] = set()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._n = 0

    def uid(self, kind: str) -> str:
        with self._lock:
            self._n += 1
            return f"{kind}-{self._n}-{uuid.uuid4().hex[:6]}"

    def client(self, key: str, kind: str, count: int | None, offset: int = 0, replicas: tuple[int, ...] = (0, 1, 2),
               **kw: Any) -> threading.Thread:
        """A thread sending ``count`` requests (None: until :attr:`stop`) from ``key``; every third streams."""

        def run() -> None:
            with httpx.Client(timeout=60) as client:
                i = 0
                while (count is None or i < count) and not self.stop.is_set():
                    live = [r for r in replicas if r not in self.down]
                    if not live:
                        return
                    replica = live[(offset + i) % len(live)]
                    ans = send(client, self.c, replica, key, self.uid(kind), stream=i % 3 == 2, **kw)
                    with self._lock:
                        self.answers.append(ans)
                    i += 1

        return threading.Thread(target=run, daemon=True)

    def run(self, threads: list[threading.Thread], timeout_s: float = 300) -> None:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout_s)
        assert not any(t.is_alive() for t in threads), "client threads did not finish"


def upstream_users(up: FakeUpstream) -> list[str]:
    """The ``user`` of every chat call the fake upstream received (one per attempt)."""
    return [r.body["user"] for r in up.requests
            if r.path.endswith("/chat/completions") and isinstance(r.body, dict) and "user" in r.body]
