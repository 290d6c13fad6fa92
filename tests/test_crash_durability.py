"""The ledger against crashes, kills and full disks, with real `tierwise serve` processes and real signals."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.crash_scenario import run
from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for
from tests.procs import free_port, start_serve, write_config

CHAT = "/v1/chat/completions"
MSG = {"messages": [{"role": "user", "content": "hello"}]}


def test_sigkill_under_load_loses_no_record_and_duplicates_none(tmp_path: Path) -> None:
    res = run(tmp_path, clients=8, load_s=1.5)
    assert res.problems() == []
    s = res.summary()
    assert s["acknowledged_responses"] > 50, s  # the load really ran
    assert s["upstream_calls"] >= s["acknowledged_responses"]
    # requests in flight at the kill: billed upstream, never answered, booked at their estimate on restart
    assert s["interrupted_rows"] >= 1, s


@contextlib.contextmanager
def small_disk(path: Path, size: str = "1m") -> Iterator[bool]:
    """A tmpfs of ``size`` at ``path``; yields True when mounted (root), False when the test must fall back to
    a file-size limit on the gateway process (an equivalent a non-root user can create)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    (path / "filler").touch()  # created while there is room (see fill)
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Write a file until the file system at ``path`` is full (it may already be)."""
    filler = path / "filler"
    for chunk in (65536, 512):  # big blocks, then the last partial block
        with contextlib.suppress(OSError), open(filler, "ab") as f:
            while True:
                f.write(b"\0" * chunk)
                f.flush()
    return filler


def _serve_limited(cfg: Path, port: int, fsize: int) -> subprocess.Popen:
    """`tierwise serve` whose files cannot grow beyond ``fsize`` bytes (EFBIG, like a full disk)."""
    return start_serve(cfg, port, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize)))


def test_full_disk_refuses_new_traffic_loudly_and_loses_nothing(tmp_path: Path) -> None:
    with FakeUpstream() as up, small_disk(tmp_path / "disk") as mounted:
        port, db = free_port(), tmp_path / "disk" / "ledger.db"
        cfg = write_config(tmp_path, up.base_url, port, f'{{path: "{db}", flush_interval_ms: 20}}')
        proc = start_serve(cfg, port) if mounted else _serve_limited(cfg, port, 96 * 1024)
        url = f"http://127.0.0.1:{port}"
        answered: dict[str, int] = {}
        with httpx.Client(base_url=url, timeout=10) as c:
            for _ in range(5):
                r = c.post(CHAT, json=MSG)
                assert r.status_code == 200
                answered[r.headers["x-tierwise-request-id"]] = 200
            filler = fill(tmp_path / "disk") if mounted else None
            refused = None
            for _ in range(3000):  # the journal's last page may still take a few lines
                r = c.post(CHAT, json=MSG)
                answered[r.headers["x-tierwise-request-id"]] = r.status_code
                if r.status_code != 200:
                    refused = r
                    break
            assert refused is not None and refused.status_code == 503
            err = refused.json()["error"]
            assert err["code"] == "ledger_unavailable" and "cannot record" in err["message"]
            assert up.calls == sum(1 for s in answered.values() if s == 200)  # refused: no upstream spend
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["ledger"]["journal_healthy"] is False
            if filler is not None:  # space comes back: so does service, without a restart
                filler.unlink()
                r = c.post(CHAT, json=MSG)
                assert r.status_code == 200
                answered[r.headers["x-tierwise-request-id"]] = 200
                for _ in range(100):
                    if c.get("/readyz").status_code == 200:
                        break
                    time.sleep(0.05)
                assert c.get("/readyz").status_code == 200
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        assert "CRITICAL" in stderr and "refusing request" in stderr and "Traceback" not in stderr
        if not mounted:  # the file-size limit never lifts: what could not be stored is in the journal or fallback
            return
        assert proc.returncode == 0
        with contextlib.closing(sqlite3.connect(db)) as conn:
            rows = dict(conn.execute("SELECT id, http_status FROM requests"))
    assert rows == answered  # every answer, refusals included, has its row with the status the client saw


def test_serve_mode_keeps_serving_and_the_fallback_file_on_another_disk_keeps_the_rows(tmp_path: Path) -> None:
    fallback = tmp_path / "elsewhere" / "unwritten.jsonl"
    fallback.parent.mkdir()
    with FakeUpstream() as up, small_disk(tmp_path / "disk") as mounted:
        if not mounted:
            pytest.skip("needs a tmpfs mount (root): the file-size-limit fallback cannot free space")
        port, db = free_port(), tmp_path / "disk" / "ledger.db"
        ledger = f'{{path: "{db}", flush_interval_ms: 20, on_unwritable: serve, fallback_path: "{fallback}"}}'
        cfg = write_config(tmp_path, up.base_url, port, ledger)
        proc = start_serve(cfg, port)
        ids = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            assert c.post(CHAT, json=MSG).status_code == 200
            fill(tmp_path / "disk")
            for _ in range(40):
                r = c.post(CHAT, json=MSG)
                assert r.status_code == 200  # the operator chose availability over crash safety
                ids.append(r.headers["x-tierwise-request-id"])
        proc.send_signal(signal.SIGTERM)  # the disk is still full at shutdown
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "CRITICAL" in stderr
        saved = {json.loads(line)["id"] for line in fallback.read_text().splitlines()}
        assert set(ids) <= saved | _journal_ids(Path(f"{db}.journal"))
        (tmp_path / "disk" / "filler").unlink()
        proc = start_serve(cfg, port)  # the next start imports the fallback file and replays the journal
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        with contextlib.closing(sqlite3.connect(db)) as conn:
            stored = {r[0] for r in conn.execute("SELECT id FROM requests")}
        assert set(ids) <= stored


def _journal_ids(directory: Path) -> set[str]:
    out: set[str] = set()
    for seg in directory.glob("seg-*.jsonl"):
        for line in seg.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                out.add(json.loads(line)["id"])
    return out


def test_a_cancelled_request_books_its_estimate(tmp_path: Path) -> None:
    with FakeUpstream() as up:
        up.set(latency_s=2.0)
        gw = GatewayServer(config_for(up.base_url, tmp_path)).start()
        try:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(gw.base_url + "/chat/completions", json=MSG, timeout=0.5)
            for _ in range(100):
                rows = gw.rows()
                if rows:
                    break
                time.sleep(0.05)
            (row,) = rows
            assert row["status"] == "client_cancelled" and row["estimated_cost_usd"] > 0
            assert row["cost_usd"] == pytest.approx(row["estimated_cost_usd"])
            assert row["cost_breakdown"]["estimated"] == pytest.approx(row["estimated_cost_usd"])
            assert any("estimate" in n for n in row["notes"])
        finally:
            gw.stop()


def test_no_journal_no_change_for_the_memory_backend(tmp_path: Path) -> None:
    from tierwise.config.schema import LedgerConfig
    from tierwise.ledger import journal_dir

    assert journal_dir(LedgerConfig(backend="memory")) is None
    assert journal_dir(LedgerConfig(path=str(tmp_path / "l.db"))) == Path(f"{tmp_path / 'l.db'}.journal")
    assert journal_dir(LedgerConfig(path="x.db", journal=False)) is None
    assert os.path.basename(str(journal_dir(LedgerConfig(path="x.db", journal_dir="/var/j")))) == "j"
