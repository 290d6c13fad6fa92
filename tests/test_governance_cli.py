"""``tierwise keys …`` and ``tierwise principals …`` as real subprocesses, on SQLite and PostgreSQL, against a real
gateway sharing the store: the scripted interfaces, the key printed once, rotation and revocation taking effect,
and every error one line on stderr with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.governance_env import GovEnv, config_text, gateway_config, gov_fixture  # noqa: F401  (the gov fixture)
from tests.harness import GatewayServer

MSG = [{"role": "user", "content": "hi"}]


class CLI:
    def __init__(self, cfg: Path) -> None:
        self.cfg = cfg
        self.env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tierwise.cli", *args, "--config", str(self.cfg)],
                              capture_output=True, text=True, timeout=60, env=self.env)

    def ok(self, *args: str) -> Any:
        r = self.run(*args)
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        return json.loads(r.stdout) if "--json" in args else r.stdout

    def fails(self, *args: str, says: str) -> str:
        r = self.run(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert says in lines[0], lines[0]
        return lines[0]


@pytest.fixture
def cli(gov: GovEnv, tmp_path: Path) -> CLI:
    cfg = tmp_path / "tierwise.yaml"
    cfg.write_text(config_text(gov))
    return CLI(cfg)


@pytest.fixture
def gateway_on_store(upstream: FakeUpstream, tmp_path: Path, gov: GovEnv) -> Iterator[GatewayServer]:
    gw = GatewayServer(gateway_config(upstream.base_url, tmp_path, gov, refresh_s=0.2, ledger="gw-ledger.db")).start()
    yield gw
    gw.stop()


def call(gw: GatewayServer, key: str, model: str = "chat") -> int:
    return httpx.post(gw.base_url + "/chat/completions", json={"model": model, "messages": MSG},
                      headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code


def eventually(gw: GatewayServer, key: str, status: int, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while call(gw, key) != status:
        assert time.monotonic() < deadline, f"still not {status}"
        time.sleep(0.05)


def test_keys_create_list_rotate_revoke(cli: CLI, gov: GovEnv, gateway_on_store: GatewayServer) -> None:
    gw = gateway_on_store
    made = cli.ok("keys", "create", "--principal", "acme", "--customer", "Acme", "--department", "search",
                  "--tier-access", "chat,label", "--daily-budget-usd", "12.5", "--monthly-budget-usd", "300",
                  "--rpm", "60", "--tpm", "90000", "--json")
    key, kid = made["key"], made["id"]
    assert made["principal_created"] is True and kid.startswith("key_") and key.startswith("tw-")
    p = cli.ok("principals", "show", "acme", "--json")
    assert (p["customer"], p["department"], p["allowed_tiers"], p["daily_budget_usd"], p["monthly_budget_usd"],
            p["rpm"], p["tpm"]) == ("Acme", "search", ["chat", "label"], 12.5, 300.0, 60, 90000)
    assert [k["id"] for k in p["keys"]] == [kid]
    assert call(gw, key) == 200 and call(gw, key, "cheap") == 403
    assert gw.rows()[-2]["key_id"] == kid

    # the principal exists now: limit flags become this key's overrides; attributes must agree
    second = cli.ok("keys", "create", "--principal", "acme", "--name", "ci", "--customer", "Acme", "--rpm", "5",
                    "--tier-access", "label", "--json")
    assert second["principal_created"] is False and second["name"] == "ci"
    shown = cli.ok("keys", "show", second["id"], "--json")
    assert shown["rpm"] == 5 and shown["allowed_tiers"] == ["label"] and "hash" not in shown
    assert call(gw, second["key"], "label") == 200 and call(gw, second["key"], "chat") == 403
    cli.fails("keys", "create", "--principal", "acme", "--customer", "Other", "--json", says="--customer")
    cli.fails("keys", "create", "--principal", "acme", "--name", "ci", "--json", says="already exists")
    cli.fails("keys", "create", "--principal", "acme", "--tier-access", "cheap", "--json", says="--tier-access")

    listed = cli.ok("keys", "list", "--json")
    assert [k["id"] for k in listed] == [kid, second["id"]]
    text = json.dumps(listed) + cli.ok("keys", "list") + json.dumps(cli.ok("principals", "list", "--json"))
    for secret in (key, second["key"]):
        assert secret not in text and secret[11:] not in text
    assert all("hash" not in k for k in listed)
    for row in gov.rows("keys"):
        assert row["hash"] not in text

    rotated = cli.ok("keys", "rotate", kid, "--grace-s", "0", "--json")
    assert rotated["replaces"] == kid and rotated["key"] != key
    eventually(gw, key, 401)
    assert call(gw, rotated["key"]) == 200
    out = cli.ok("keys", "revoke", rotated["id"])
    assert rotated["id"] in out
    eventually(gw, rotated["key"], 401)
    statuses = {k["id"]: k["status"] for k in cli.ok("keys", "list", "--json")}
    assert statuses == {kid: "expired", second["id"]: "active", rotated["id"]: "revoked"}
    human = cli.ok("keys", "create", "--principal", "bob")
    assert human.splitlines()[1].startswith("tw-")  # the key on its own line, for humans


def test_principals_verbs(cli: CLI) -> None:
    made = cli.ok("principals", "create", "team-a", "--customer", "ACME Inc", "--project", "p9", "--value-tier",
                  "premium", "--models", "small", "--revenue-per-request-usd", "0.02", "--json")
    assert made["value_tier"] == "premium" and made["allowed_models"] == ["small"] and not made["disabled"]
    cli.ok("principals", "create", "team-b", "--disabled")
    assert [p["name"] for p in cli.ok("principals", "list", "--json")] == ["team-a", "team-b"]
    table = cli.ok("principals", "list")
    assert "team-a" in table and "ACME Inc" in table and "disabled" in table
    upd = cli.ok("principals", "update", "team-a", "--rpm", "100", "--project", "", "--models", "*", "--json")
    assert (upd["rpm"], upd["project"], upd["allowed_models"], upd["customer"]) == (100, None, None, "ACME Inc")
    assert cli.ok("principals", "update", "team-b", "--enable", "--json")["disabled"] is False
    cli.ok("keys", "create", "--principal", "team-a")
    gone = cli.ok("principals", "delete", "team-a", "--json")
    assert gone == {"name": "team-a", "deleted": True, "keys_deleted": 1}
    cli.fails("principals", "show", "team-a", says="no principal named 'team-a'")
    assert cli.ok("keys", "list", "--json") == []


def test_cli_errors_are_one_line_and_exit_2(cli: CLI, tmp_path: Path, gov: GovEnv) -> None:
    cli.fails("keys", "create", "--principal", "x", "--rpm", "abc", "--json", says="--rpm: not a whole number")
    cli.fails("keys", "create", "--principal", "x", "--rpm", "0", "--json", says="--rpm")
    cli.fails("keys", "create", "--principal", "x", "--daily-budget-usd", "-5", "--json", says="--daily-budget-usd")
    cli.fails("keys", "create", "--principal", "x", "--monthly-budget-usd", "1e12", "--json",
              says="--monthly-budget-usd")
    cli.fails("keys", "create", "--principal", "x", "--daily-budget-usd", "nan", "--json", says="--daily-budget-usd")
    cli.fails("keys", "create", "--principal", "x", "--tier-access", "chat,nope", "--json", says="unknown tier 'nope'")
    cli.fails("keys", "create", "--principal", "", "--json", says="must not be empty")
    cli.fails("keys", "create", "--json", says="--principal")
    cli.fails("keys", "create", "--principal", "x", "--expires-at", "yesterday", says="--expires-at")
    cli.fails("keys", "create", "--principal", "x", "--expires-at", "2001-01-01", says="expires_at")
    assert cli.ok("principals", "list", "--json") == []  # nothing half-made by the refusals above
    cli.fails("keys", "revoke", "key_000000000000", says="no key with id 'key_000000000000'")
    cli.fails("keys", "rotate", "key_000000000000", says="no key")
    cli.fails("keys", "rotate", "key_000000000000", "--grace-s", "-1", says="--grace-s")
    cli.fails("principals", "create", "a b", says="name")
    cli.fails("principals", "update", "nobody", "--rpm", "5", says="no principal named 'nobody'")
    cli.fails("principals", "update", "nobody", says="nothing to update")
    cli.fails("principals", "create", "dup-x", "--rpm", "1", "--tpm", "x", says="--tpm")
    cli.ok("principals", "create", "dup")
    cli.fails("principals", "create", "dup", says="already exists")
    cli.fails("keys", "frobnicate", says="invalid choice")
    # an unreachable PostgreSQL store: one line, without the password
    bad = tmp_path / "bad.yaml"
    bad.write_text(config_text(GovEnv("postgres", tmp_path, "tw_nowhere"))
                   .replace("dbname=test", "dbname=test password=hunter2-secret").replace("port=5432", "port=1"))
    line = CLI(bad).fails("keys", "list", says="cannot connect to the PostgreSQL governance store")
    assert "hunter2-secret" not in line
    missing = tmp_path / "nope.yaml"
    CLI(missing).fails("keys", "list", says="nope.yaml")
