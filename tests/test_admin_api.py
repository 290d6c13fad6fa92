"""The admin API over real HTTP, on SQLite and PostgreSQL: its own listener started by a real ``tierwise serve``
(the public port refuses /admin), the admin key, principals and keys through their whole life, bad input (400
naming the field, 404, 409), same_listener mounting, and serve/check-config refusing an admin without a key."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.governance_env import (
    ADMIN_KEY,
    GovEnv,
    config_text,
    gateway_config,
    gov_fixture,  # noqa: F401  (the gov fixture)
    load,
)
from tests.harness import GatewayServer
from tests.schemas import validate
from tierwise.gateway.admin import start_admin

H = {"Authorization": f"Bearer {ADMIN_KEY}"}
MSG = [{"role": "user", "content": "hi"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    validate(body, "ErrorResponse")
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


class AdminServer:
    """The admin listener alone (start_admin), on a loopback port in a thread of its own."""

    def __init__(self, cfg: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner, port = asyncio.run_coroutine_threadsafe(start_admin(cfg, ADMIN_KEY, port=0),
                                                              self.loop).result(30)
        self.url = f"http://127.0.0.1:{port}/admin"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def admin(gov: GovEnv) -> Iterator[AdminServer]:
    srv = AdminServer(load(config_text(gov, extra="admin: {port: 0}\n")))
    yield srv
    srv.stop()


# -- a real `tierwise serve` with the admin API on its own port -------------------------------------------------


def _serve(cfg_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tierwise.cli", "serve", "--config", str(cfg_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_up(proc: subprocess.Popen[str], url: str) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError("gateway exited: " + (proc.communicate()[1] or ""))
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("gateway did not start: " + proc.communicate()[1])


def test_serve_runs_the_admin_api_on_its_own_port(gov: GovEnv, tmp_path: Path) -> None:
    with FakeUpstream() as up:
        port, admin_port = free_port(), free_port()
        cfg = tmp_path / "tierwise.yaml"
        cfg.write_text(config_text(gov, port=port, upstream=up.base_url,
                                   extra=f"admin: {{host: 127.0.0.1, port: {admin_port}}}\n"))
        proc = _serve(cfg, {"PATH": "/usr/bin:/bin", "TIERWISE_ADMIN_KEY": ADMIN_KEY})
        public, adm = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}/admin"
        secrets_seen: list[str] = [ADMIN_KEY]
        try:
            _wait_up(proc, public + "/healthz")
            _wait_up(proc, adm + "/keys")
            # the public listener knows nothing of /admin, with or without the admin key
            for headers in ({}, H):
                assert error_of(httpx.get(public + "/admin/principals", headers=headers), 404)["code"] == "not_found"
                error_of(httpx.post(public + "/admin/keys", json={"principal": "x"}, headers=headers), 404)
            # the admin listener wants its key
            assert error_of(httpx.get(adm + "/principals"), 401)["code"] == "invalid_admin_key"
            assert error_of(httpx.get(adm + "/principals", headers={"Authorization": "Bearer nope"}), 401)["type"] \
                == "authentication_error"
            assert error_of(httpx.get(adm + "/principals", headers={"x-api-key": ADMIN_KEY[:-1]}), 401)
            assert httpx.get(adm + "/principals", headers={"x-api-key": ADMIN_KEY}).status_code == 200

            r = httpx.post(adm + "/principals", json={"name": "acme", "customer": "Acme", "allowed_tiers": ["chat"],
                                                      "daily_budget_usd": 25, "rpm": 600}, headers=H)
            assert r.status_code == 201 and r.json()["allowed_tiers"] == ["chat"]
            r = httpx.post(adm + "/keys", json={"principal": "acme", "name": "prod"}, headers=H)
            assert r.status_code == 201, r.text
            created = r.json()
            key, kid = created["key"], created["id"]
            secrets_seen.append(key)
            assert created["prefix"] == key[:11] and "hash" not in created
            for body in (httpx.get(adm + "/keys", headers=H).text, httpx.get(adm + f"/keys/{kid}", headers=H).text,
                         httpx.get(adm + "/keys?principal=acme", headers=H).text):
                assert key not in body and '"hash"' not in body and kid in body

            auth = {"Authorization": f"Bearer {key}"}
            ok = httpx.post(public + "/v1/chat/completions", json={"model": "chat", "messages": MSG}, headers=auth)
            assert ok.status_code == 200, ok.text
            assert httpx.post(public + "/v1/chat/completions", json={"model": "label", "messages": MSG},
                              headers=auth).status_code == 403

            r = httpx.post(adm + f"/keys/{kid}/rotate", json={"grace_s": 1.5}, headers=H)
            assert r.status_code == 201, r.text
            new_key, new_id = r.json()["key"], r.json()["id"]
            secrets_seen.append(new_key)
            assert r.json()["replaces"] == kid and r.json()["name"] == "prod"
            assert r.json()["replaced_key_expires_at"] == pytest.approx(time.time() + 1.5, abs=1.0)
            rotated = time.time()
            for k in (key, new_key):
                assert httpx.post(public + "/v1/chat/completions", json={"messages": MSG},
                                  headers={"Authorization": f"Bearer {k}"}).status_code == 200
            time.sleep(max(0.0, rotated + 1.7 - time.time()))
            old = httpx.post(public + "/v1/chat/completions", json={"messages": MSG}, headers=auth)
            assert error_of(old, 401)["code"] == "invalid_api_key"
            assert httpx.get(adm + f"/keys/{kid}", headers=H).json()["status"] == "expired"

            # a revoke through this process's admin API applies to its gateway at once
            r = httpx.post(adm + f"/keys/{new_id}/revoke", headers=H)
            assert r.status_code == 200 and r.json()["status"] == "revoked"
            refused = httpx.post(public + "/v1/chat/completions", json={"messages": MSG},
                                 headers={"Authorization": f"Bearer {new_key}"})
            assert "revoked" in error_of(refused, 401)["message"]
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert f"admin API on http://127.0.0.1:{admin_port}/admin" in err and "Traceback" not in err
        assert all(s not in out + err for s in secrets_seen)
        with socket.socket() as s:  # the admin listener is closed too
            assert s.connect_ex(("127.0.0.1", admin_port)) != 0


def test_serve_and_check_config_refuse_an_admin_api_without_its_key(tmp_path: Path) -> None:
    gov = GovEnv("sqlite", tmp_path)
    cfg = tmp_path / "tierwise.yaml"
    cfg.write_text(config_text(gov, port=free_port(), extra=f"admin: {{port: {free_port()}}}\n"))
    env = {"PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "tierwise.cli", "serve", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 2 and "admin.api_key_env" in r.stderr and "TIERWISE_ADMIN_KEY" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    short = subprocess.run([sys.executable, "-m", "tierwise.cli", "check-config", str(cfg)], capture_output=True,
                           text=True, timeout=60, env={**env, "TIERWISE_ADMIN_KEY": "short"})
    assert short.returncode == 1 and "shorter than 16" in short.stderr and "short" not in short.stdout
    port = free_port()
    cfg.write_text(config_text(gov, port=port, extra=f"admin: {{port: {port}}}\n"))
    same = subprocess.run([sys.executable, "-m", "tierwise.cli", "check-config", str(cfg)], capture_output=True,
                          text=True, timeout=60, env={**env, "TIERWISE_ADMIN_KEY": ADMIN_KEY})
    assert same.returncode == 1 and "admin.port" in same.stderr and "same_listener" in same.stderr


# -- the endpoints ---------------------------------------------------------------------------------------------


def test_principals_and_keys_through_their_life(admin: AdminServer) -> None:
    u = admin.url
    assert httpx.post(u + "/principals", json={"name": "acme", "department": "search"}, headers=H).status_code == 201
    assert httpx.post(u + "/principals", json={"name": "beta"}, headers=H).status_code == 201
    listed = httpx.get(u + "/principals", headers=H).json()
    assert listed["object"] == "list" and [p["name"] for p in listed["data"]] == ["acme", "beta"]
    r = httpx.patch(u + "/principals/acme", json={"rpm": 120, "department": None, "value_tier": "premium"},
                    headers=H)
    assert r.status_code == 200, r.text
    got = httpx.get(u + "/principals/acme", headers=H).json()
    assert (got["rpm"], got["department"], got["value_tier"]) == (120, None, "premium")
    assert got["updated_at"] >= got["created_at"]
    k1 = httpx.post(u + "/keys", json={"principal": "acme", "rpm": 10, "allowed_models": ["small"]}, headers=H)
    k2 = httpx.post(u + "/keys", json={"principal": "beta", "name": "beta-ci"}, headers=H)
    assert k1.status_code == k2.status_code == 201
    assert [k["id"] for k in httpx.get(u + "/keys?principal=acme", headers=H).json()["data"]] == [k1.json()["id"]]
    assert len(httpx.get(u + "/keys", headers=H).json()["data"]) == 2
    r = httpx.delete(u + "/principals/acme", headers=H)
    assert r.status_code == 200 and r.json()["keys_deleted"] == [k1.json()["id"]]
    error_of(httpx.get(u + "/principals/acme", headers=H), 404)
    error_of(httpx.get(u + f"/keys/{k1.json()['id']}", headers=H), 404)
    r = httpx.post(u + f"/keys/{k2.json()['id']}/revoke", headers=H)
    assert r.json()["status"] == "revoked"
    assert httpx.post(u + f"/keys/{k2.json()['id']}/revoke", headers=H).status_code == 200  # idempotent
    assert error_of(httpx.post(u + f"/keys/{k2.json()['id']}/rotate", headers=H), 409)["code"] == "conflict"


BAD: list[tuple[str, str, Any, int, str | None]] = [
    # method, path, JSON body (bytes: sent raw), status, param the error names
    ("POST", "/principals", b"{not json", 400, None),
    ("POST", "/principals", b"[1, 2]", 400, None),
    ("POST", "/principals", b"", 400, None),
    ("POST", "/principals", {"customer": "x"}, 400, "name"),
    ("POST", "/principals", {"name": ""}, 400, "name"),
    ("POST", "/principals", {"name": "has space"}, 400, "name"),
    ("POST", "/principals", {"name": "x", "colour": "red"}, 400, "colour"),
    ("POST", "/principals", {"name": "x", "rpm": "60"}, 400, "rpm"),
    ("POST", "/principals", {"name": "x", "rpm": 0}, 400, "rpm"),
    ("POST", "/principals", {"name": "x", "tpm": -5}, 400, "tpm"),
    ("POST", "/principals", {"name": "x", "rpm": 1.5}, 400, "rpm"),
    ("POST", "/principals", {"name": "x", "rpm": True}, 400, "rpm"),
    ("POST", "/principals", {"name": "x", "daily_budget_usd": -1}, 400, "daily_budget_usd"),
    ("POST", "/principals", {"name": "x", "monthly_budget_usd": 5e12}, 400, "monthly_budget_usd"),
    ("POST", "/principals", {"name": "x", "daily_budget_usd": "10"}, 400, "daily_budget_usd"),
    ("POST", "/principals", {"name": "x", "allowed_tiers": ["chat", "nope"]}, 400, "allowed_tiers"),
    ("POST", "/principals", {"name": "x", "allowed_models": ["gpt-99"]}, 400, "allowed_models"),
    ("POST", "/principals", {"name": "x", "allowed_tiers": "chat"}, 400, "allowed_tiers"),
    ("POST", "/principals", {"name": "x", "allowed_tiers": []}, 400, "allowed_tiers"),
    ("POST", "/principals", {"name": "x", "customer": ""}, 400, "customer"),
    ("POST", "/principals", {"name": "x", "disabled": "yes"}, 400, "disabled"),
    ("POST", "/principals", {"name": "acme"}, 409, "name"),
    ("PATCH", "/principals/acme", {}, 400, None),
    ("PATCH", "/principals/acme", {"name": "other"}, 400, "name"),
    ("PATCH", "/principals/acme", {"disabled": None}, 400, "disabled"),
    ("PATCH", "/principals/nobody", {"rpm": 5}, 404, None),
    ("DELETE", "/principals/nobody", None, 404, None),
    ("GET", "/principals/bad%20name", None, 404, None),
    ("POST", "/keys", {"principal": "nobody"}, 404, "principal"),
    ("POST", "/keys", {}, 400, "principal"),
    ("POST", "/keys", {"principal": "acme", "name": "dup"}, 409, "name"),
    ("POST", "/keys", {"principal": "acme", "allowed_tiers": ["label"]}, 400, "allowed_tiers"),
    ("POST", "/keys", {"principal": "acme", "expires_at": 1000}, 400, "expires_at"),
    ("POST", "/keys", {"principal": "acme", "key": "tw-mine"}, 400, "key"),
    ("GET", "/keys?colour=red", None, 400, "colour"),
    ("GET", "/keys?principal=nobody", None, 404, "principal"),
    ("GET", "/keys/key_000000000000", None, 404, None),
    ("GET", "/keys/tw-not-an-id", None, 404, None),
    ("POST", "/keys/key_000000000000/rotate", None, 404, None),
    ("POST", "/keys/{kid}/rotate", {"grace_s": -1}, 400, "grace_s"),
    ("POST", "/keys/{kid}/rotate", {"grace_s": "60"}, 400, "grace_s"),
    ("POST", "/keys/{kid}/rotate", {"grace_s": 1e12}, 400, "grace_s"),
    ("POST", "/keys/{kid}/rotate", {"grace": 60}, 400, "grace"),
    ("POST", "/keys/key_000000000000/revoke", None, 404, None),
    ("DELETE", "/keys", None, 405, None),
    ("GET", "/nothing-here", None, 404, None),
]


def test_bad_admin_input(admin: AdminServer, gov: GovEnv) -> None:
    u = admin.url
    assert httpx.post(u + "/principals", json={"name": "acme", "allowed_tiers": ["chat"]}, headers=H).status_code \
        == 201
    kid = httpx.post(u + "/keys", json={"principal": "acme", "name": "dup"}, headers=H).json()["id"]
    with httpx.Client(headers=H, timeout=10) as c:
        for method, path, body, status, param in BAD:
            kw: dict[str, Any] = {}
            if isinstance(body, bytes):
                kw["content"] = body
            elif body is not None:
                kw["json"] = body
            r = c.request(method, u + path.format(kid=kid), **kw)
            err = error_of(r, status)
            assert err["param"] == param, (method, path, body, err)
            if param is not None and status == 400:
                assert param in err["message"], err
    # nothing was changed by the refused requests
    assert [p["name"] for p in httpx.get(u + "/principals", headers=H).json()["data"]] == ["acme"]
    assert [k["status"] for k in httpx.get(u + "/keys", headers=H).json()["data"]] == ["active"]
    assert len(gov.rows("keys")) == 1


def test_same_listener_mounts_admin_under_admin(upstream: FakeUpstream, tmp_path: Path, gov: GovEnv,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERWISE_ADMIN_KEY", ADMIN_KEY)
    cfg = gateway_config(upstream.base_url, tmp_path, gov, extra="admin: {same_listener: true}\n")
    gw = GatewayServer(cfg).start()
    try:
        error_of(httpx.get(gw.url + "/admin/principals"), 401)
        assert httpx.post(gw.url + "/admin/principals", json={"name": "acme"}, headers=H).status_code == 201
        key = httpx.post(gw.url + "/admin/keys", json={"principal": "acme"}, headers=H).json()["key"]
        r = httpx.post(gw.base_url + "/chat/completions", json={"messages": MSG},
                       headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        assert gw.rows()[-1]["principal"] == "acme"
    finally:
        gw.stop()


def test_spend_anomaly_alerts_are_listed(upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    """A runaway principal's alert shows on the admin API; ``since`` filters, bad input is a 400."""
    gov = GovEnv("sqlite", tmp_path)
    monkeypatch.setenv("TIERWISE_ADMIN_KEY", ADMIN_KEY)
    upstream.set(prompt_tokens=1000, completion_tokens=1000)  # large: $0.0125 a request
    cfg = gateway_config(upstream.base_url, tmp_path, gov, extra="admin: {same_listener: true}\n"
                         "anomalies: {bucket_s: 3600, min_buckets: 3, min_usd: 0.02}\n")
    gw = GatewayServer(cfg).start()
    try:
        httpx.post(gw.url + "/admin/principals", json={"name": "loop"}, headers=H)
        key = httpx.post(gw.url + "/admin/keys", json={"principal": "loop"}, headers=H).json()["key"]
        assert gw.svc is not None
        det, now = gw.svc.anomalies, time.time()
        for i in range(3):  # three quiet past buckets of history, as three earlier hours would leave
            det.observe("loop", "large", 0.001, now - (3 - i) * 3600)
        for _ in range(4):  # then this hour: $0.05 in a few seconds
            r = httpx.post(gw.base_url + "/chat/completions", json={"messages": MSG},
                           headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200
        listed = httpx.get(gw.url + "/admin/alerts", headers=H).json()["data"]
        assert [(a["object"], a["principal"], a["model"]) for a in listed] == [("spend_anomaly", "loop", "large")]
        assert httpx.get(gw.url + "/admin/alerts", params={"since": time.time() + 60}, headers=H).json()["data"] == []
        error_of(httpx.get(gw.url + "/admin/alerts", params={"since": "yesterday"}, headers=H), 400)
        error_of(httpx.get(gw.url + "/admin/alerts"), 401)
    finally:
        gw.stop()
