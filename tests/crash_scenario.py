"""Kill `tierwise serve` with SIGKILL under concurrent load, restart it, and account for every request.

Shared by ``tests/test_crash_durability.py`` (a short run in CI) and ``bench/crash_durability.py`` (a longer run
whose figures go to ``bench/results/``). Every client request carries a unique OpenAI ``user`` field: the gateway
records it as the session id and forwards it upstream, so each call the mock upstream counted can be matched to
its ledger row without trusting the gateway's own bookkeeping.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.fakes.upstream import FakeUpstream
from tests.procs import free_port, start_serve, write_config


@dataclass
class CrashResult:
    acknowledged: dict[str, str] = field(default_factory=dict)  # user -> request id of a complete 200 answer
    upstream_users: list[str] = field(default_factory=list)  # the user field of every call the upstream counted
    rows: list[tuple[str, str | None, str]] = field(default_factory=list)  # (id, session_id, status)
    client_errors: int = 0
    seconds_loaded: float = 0.0

    @property
    def row_by_user(self) -> dict[str | None, list[tuple[str, str]]]:
        out: dict[str | None, list[tuple[str, str]]] = {}
        for rid, user, status in self.rows:
            out.setdefault(user, []).append((rid, status))
        return out

    def problems(self) -> list[str]:
        """Every way the ledger disagrees with what clients and the upstream saw (empty: nothing lost)."""
        out = []
        by_user = self.row_by_user
        ids = Counter(rid for rid, _, _ in self.rows)
        out += [f"request id {rid} has {n} rows" for rid, n in ids.items() if n > 1]
        out += [f"user {u} has {len(v)} rows" for u, v in by_user.items() if u is not None and len(v) > 1]
        for user, rid in self.acknowledged.items():
            got = by_user.get(user, [])
            if [r for r, s in got if r == rid and s == "ok"] != [rid]:
                out.append(f"acknowledged {user} ({rid}) has rows {got}")
        out += [f"upstream call for {u} has no row" for u in set(self.upstream_users) if u not in by_user]
        return out

    def summary(self) -> dict[str, int | float]:
        statuses = Counter(s for _, _, s in self.rows)
        return {
            "acknowledged_responses": len(self.acknowledged),
            "upstream_calls": len(self.upstream_users),
            "ledger_rows": len(self.rows),
            "interrupted_rows": statuses.get("interrupted", 0),
            "client_errors_after_kill": self.client_errors,
            "problems": len(self.problems()),
            "seconds_under_load": round(self.seconds_loaded, 2),
        }


def _client(url: str, k: int, stop: threading.Event, res: CrashResult, lock: threading.Lock) -> None:
    with httpx.Client(timeout=10) as c:
        i = 0
        while not stop.is_set():
            user = f"c{k}-{i}"
            i += 1
            body = {"messages": [{"role": "user", "content": f"hello {user}"}], "user": user}
            try:
                if i % 3 == 0:  # every third request streams: its record is booked before [DONE]
                    body["stream"] = True
                    with c.stream("POST", url + "/v1/chat/completions", json=body) as r:
                        text = "".join(r.iter_text())
                        done = r.status_code == 200 and text.rstrip().endswith("data: [DONE]")
                        rid = r.headers.get("x-tierwise-request-id")
                else:
                    r = c.post(url + "/v1/chat/completions", json=body)
                    done, rid = r.status_code == 200, r.headers.get("x-tierwise-request-id")
            except httpx.HTTPError:
                with lock:
                    res.client_errors += 1
                time.sleep(0.01)
                continue
            if done and rid:
                with lock:
                    res.acknowledged[user] = rid


def run(tmp: Path, *, clients: int = 8, load_s: float = 1.5, upstream_latency_s: float = 0.02) -> CrashResult:
    """Load, SIGKILL, restart (the restart replays the journal), SIGTERM; collect what each side saw."""
    port = free_port()
    db = tmp / "ledger.db"
    # A huge batch and interval: nothing reaches SQLite before the kill, so every row must come from the journal.
    ledger = f'{{path: "{db}", flush_interval_ms: 60000, batch_size: 1000000}}'
    res = CrashResult()
    # the mock logs a traceback for every stream the kill cuts off; those are expected here
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    with FakeUpstream(max_records=1_000_000) as up:
        up.set(latency_s=upstream_latency_s)
        cfg = write_config(tmp, up.base_url, port, ledger)
        proc = start_serve(cfg, port)
        url = f"http://127.0.0.1:{port}"
        stop, lock = threading.Event(), threading.Lock()
        threads = [threading.Thread(target=_client, args=(url, k, stop, res, lock)) for k in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(load_s)
        proc.send_signal(signal.SIGKILL)
        res.seconds_loaded = time.perf_counter() - t0
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(15)
        proc = start_serve(cfg, port)  # replays the dead process's journal before it serves
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        if proc.returncode != 0:
            raise AssertionError(f"restarted gateway exited {proc.returncode}: {err[-3000:]}")
        res.upstream_users = [r.body["user"] for r in up.requests
                              if r.path.endswith("/chat/completions") and isinstance(r.body, dict)]
    with sqlite3.connect(db) as conn:
        res.rows = list(conn.execute("SELECT id, session_id, status FROM requests"))
    return res
