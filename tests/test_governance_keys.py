"""Virtual keys end to end, on SQLite and PostgreSQL: stored only as a hash, 401/403 in OpenAI's shape through a
real gateway, rotation grace, revocation seen by a second gateway within refresh_s, a flood of bad keys kept off
the store, a key revoked mid-stream, nothing secret in logs or the ledger."""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.governance_env import GovEnv, gateway_config, gov_fixture, make_key  # noqa: F401  (the gov fixture)
from tests.harness import GatewayServer
from tests.schemas import validate
from tierwise.gateway.app import GATEWAY_KEY
from tierwise.governance.auth import Authenticator, resolve
from tierwise.governance.keys import generate_key, hash_key, looks_like_key, new_key_id
from tierwise.governance.store import (
    GovernanceStore,
    GovernanceStoreError,
    KeyRecord,
    PrincipalPatch,
    PrincipalRecord,
    parse,
)

MSG = [{"role": "user", "content": "hi"}]


def chat(gw: GatewayServer, key: str | None, model: str = "chat", **body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.post(gw.base_url + "/chat/completions", json={"model": model, "messages": MSG, **body},
                      headers=headers, timeout=10)


def auth_of(gw: GatewayServer) -> Authenticator:
    assert gw.runner is not None
    auth = gw.runner.app[GATEWAY_KEY].auth
    assert auth is not None
    return auth


def wait_until(cond: Callable[[], bool], timeout: float = 5.0, step: float = 0.02) -> float:
    """Seconds until ``cond()`` held (fails after ``timeout``)."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        time.sleep(step)
    return time.monotonic() - start


def assert_401(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 401, r.text
    body = r.json()
    validate(body, "ErrorResponse")
    assert body["error"]["type"] == "authentication_error" and body["error"]["code"] == "invalid_api_key"
    return body


@pytest.fixture
def store(gov: GovEnv) -> Iterator[GovernanceStore]:
    s = gov.store()
    yield s
    s.close()


@pytest.fixture
def keyed(upstream: FakeUpstream, tmp_path: Path, gov: GovEnv, store: GovernanceStore) -> Iterator[GatewayServer]:
    gw = GatewayServer(gateway_config(upstream.base_url, tmp_path, gov)).start()
    yield gw
    gw.stop()


# -- keys ---------------------------------------------------------------------------------------------------


def test_keys_are_random_256_bit_and_hashed_with_sha256() -> None:
    keys = {generate_key() for _ in range(1000)}
    assert len(keys) == 1000
    for k in list(keys)[:50]:
        assert looks_like_key(k) and k.startswith("tw-") and len(k) == 46  # 43 base64url chars = 256 bits
        assert hash_key(k) == hashlib.sha256(k.encode()).hexdigest()
    assert not looks_like_key("tw-short") and not looks_like_key("sk-" + "a" * 43)
    assert new_key_id().startswith("key_") and len(new_key_id()) == 16


def test_key_shown_once_and_only_its_hash_stored(gov: GovEnv, store: GovernanceStore) -> None:
    kid, key = make_key(store, "acme", customer="Acme Corp")
    rows = gov.rows("keys")
    assert len(rows) == 1 and rows[0]["id"] == kid
    assert rows[0]["hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert rows[0]["prefix"] == key[:11] and len(rows[0]["prefix"]) == 11
    assert key not in gov.raw_bytes().decode("latin-1")  # nowhere in the database files / tables
    assert key[11:].encode() not in gov.raw_bytes()
    rec = store.get_key(kid)
    shown = [rec.as_dict(), *(k.as_dict() for k in store.list_keys())]
    for d in shown:
        assert "hash" not in d and "key" not in d and rows[0]["hash"] not in repr(d) and key not in repr(d)
    assert rows[0]["hash"] not in repr(rec)


def test_overrides_only_narrow() -> None:
    p = PrincipalRecord(name="acme", allowed_tiers=("chat", "label"), allowed_models=None, daily_budget_usd=10.0,
                        monthly_budget_usd=None, rpm=60, tpm=None, customer="Acme", value_tier="premium")
    k = KeyRecord(id="key_000000000001", name=None, principal="acme", prefix="tw-x", created_at=0.0,
                  allowed_tiers=("label", "think"), allowed_models=("small",), daily_budget_usd=50.0,
                  monthly_budget_usd=100.0, rpm=10, tpm=5000)
    got = resolve(k, p)
    assert got.name == "acme" and got.key_id == "key_000000000001" and got.customer == "Acme"
    assert got.allowed_tiers == frozenset({"label"}) and got.allowed_models == frozenset({"small"})
    # the principal's own limits, shared by its keys, and the key's on top (never above the principal's)
    assert (got.daily_budget_usd, got.monthly_budget_usd, got.rpm, got.tpm) == (10.0, None, 60, None)
    assert (got.key_daily_budget_usd, got.key_monthly_budget_usd, got.key_rpm, got.key_tpm) == (10.0, 100.0, 10, 5000)
    bare = resolve(KeyRecord(id="key_000000000002", name=None, principal="acme", prefix="tw-y", created_at=0.0), p)
    assert bare.allowed_tiers == frozenset({"chat", "label"}) and bare.allowed_models is None and bare.rpm == 60
    assert (bare.key_daily_budget_usd, bare.key_rpm) == (None, None)


# -- the gateway --------------------------------------------------------------------------------------------


def test_required_keys_401_shapes_and_attribution(keyed: GatewayServer, store: GovernanceStore,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    kid, key = make_key(store, "acme", customer="Acme", department="search", project="p1")
    assert_401(chat(keyed, None))
    assert_401(chat(keyed, "tw-" + "A" * 43))  # well-formed, unknown
    assert_401(chat(keyed, "not-a-key"))
    assert_401(httpx.get(keyed.base_url + "/models"))
    r = chat(keyed, key)
    assert r.status_code == 200, r.text
    rows = keyed.rows()
    ok = [row for row in rows if row["status"] == "ok"]
    assert len(ok) == 1 and ok[0]["principal"] == "acme" and ok[0]["key_id"] == kid
    assert ok[0]["customer"] == "Acme" and ok[0]["department"] == "search" and ok[0]["project"] == "p1"
    refused = [row for row in rows if row["status"] == "rejected"]
    assert [(row["principal"], row["http_status"]) for row in refused] == [("unauthenticated", 401)] * 3
    text = caplog.text + repr(rows)
    assert key not in text and hash_key(key) not in text


def test_key_created_after_start_works_at_once_and_disabled_principal_is_refused(
        keyed: GatewayServer, store: GovernanceStore) -> None:
    _, key = make_key(store, "late")  # not in the gateway's map yet: one lookup finds it
    assert chat(keyed, key).status_code == 200
    store.update_principal("late", parse(PrincipalPatch, {"disabled": True}))
    wait_until(lambda: chat(keyed, key).status_code == 401, timeout=3)
    assert "disabled" in assert_401(chat(keyed, key))["error"]["message"]


def test_optional_keys(upstream: FakeUpstream, tmp_path: Path, gov: GovEnv, store: GovernanceStore) -> None:
    _, key = make_key(store, "acme")
    gw = GatewayServer(gateway_config(upstream.base_url, tmp_path, gov, keys="optional")).start()
    try:
        assert chat(gw, None).status_code == 200  # no key: the anonymous principal
        assert chat(gw, key).status_code == 200
        assert_401(chat(gw, "tw-" + "B" * 43))  # a bad key is still refused
        assert [r["principal"] for r in gw.rows() if r["status"] == "ok"] == ["anonymous", "acme"]
    finally:
        gw.stop()


def test_allow_lists_403_and_models_listing(keyed: GatewayServer, store: GovernanceStore) -> None:
    _, key = make_key(store, "acme", allowed_tiers=["label", "chat"], key_fields={"allowed_tiers": ["label"],
                                                                                 "allowed_models": ["small"]})
    assert chat(keyed, key, model="label").status_code == 200
    r = chat(keyed, key, model="chat")
    assert r.status_code == 403, r.text
    validate(r.json(), "ErrorResponse")
    assert r.json()["error"]["type"] == "permission_error"
    listed = httpx.get(keyed.base_url + "/models", headers={"Authorization": f"Bearer {key}"})
    assert listed.status_code == 200
    validate(listed.json(), "ListModelsResponse")
    assert {m["id"] for m in listed.json()["data"]} == {"auto", "label", "small"}
    _, open_key = make_key(store, "everything")
    every = httpx.get(keyed.base_url + "/models", headers={"Authorization": f"Bearer {open_key}"}).json()
    assert {"auto", "chat", "label", "cheap", "think", "small", "large", "thinker", "fb"} <= {m["id"] for m in every["data"]}


def test_rotation_grace_then_401(keyed: GatewayServer, store: GovernanceStore) -> None:
    kid, old = make_key(store, "acme", key_fields={"name": "prod"})
    assert chat(keyed, old).status_code == 200
    new_rec, new = store.rotate_key(kid, grace_s=1.5)
    rotated_at = time.time()
    assert new_rec.name == "prod" and store.get_key(kid).name is None and store.get_key(kid).replaced_by == new_rec.id
    assert chat(keyed, new).status_code == 200
    assert chat(keyed, old).status_code == 200  # within the grace period
    time.sleep(max(0.0, rotated_at + 1.6 - time.time()))
    body = assert_401(chat(keyed, old))
    assert "expired" in body["error"]["message"]
    assert chat(keyed, new).status_code == 200
    assert store.get_key(kid).status() == "expired"


def test_revoke_seen_by_a_second_gateway_within_refresh_s(upstream: FakeUpstream, tmp_path: Path, gov: GovEnv,
                                                          store: GovernanceStore) -> None:
    refresh_s = 0.3
    _, key = make_key(store, "acme")
    gws = [GatewayServer(gateway_config(upstream.base_url, tmp_path, gov, refresh_s=refresh_s,
                                        ledger=f"ledger{i}.db")).start() for i in (1, 2)]
    try:
        assert all(chat(gw, key).status_code == 200 for gw in gws)
        kid = store.list_keys("acme")[0].id
        store.revoke_key(kid)  # as the CLI or another replica's admin API would
        took = [wait_until(lambda gw=gw: chat(gw, key).status_code == 401, timeout=5, step=0.01) for gw in gws]
        assert max(took) <= refresh_s + 0.5, took  # refresh_s, plus a loaded CI machine's slack
        assert "revoked" in assert_401(chat(gws[1], key))["error"]["message"]
    finally:
        for gw in gws:
            gw.stop()


def test_flood_of_bad_keys_does_not_hit_the_store_per_request(upstream: FakeUpstream, tmp_path: Path,
                                                              gov: GovEnv, store: GovernanceStore) -> None:
    cfg = gateway_config(upstream.base_url, tmp_path, gov, refresh_s=0.2)
    cfg.governance.max_lookups_per_s = 5
    cfg.governance.negative_cache_s = 60
    gw = GatewayServer(cfg).start()
    try:
        auth = auth_of(gw)
        assert auth.store is not None
        calls = {"lookup": 0}
        real_lookup = auth.store.lookup

        def counting(digest: str) -> Any:
            calls["lookup"] += 1
            return real_lookup(digest)

        auth.store.lookup = counting  # type: ignore[method-assign]
        _, good = make_key(store, "acme")
        assert chat(gw, good).status_code == 200  # created after start: one lookup
        assert calls["lookup"] == 1
        start = time.monotonic()
        results: list[int] = []
        lock = threading.Lock()

        def hammer(tokens: list[str]) -> None:
            with httpx.Client(timeout=10) as c:
                for t in tokens:
                    r = c.post(gw.base_url + "/chat/completions", json={"messages": MSG},
                               headers={"Authorization": f"Bearer {t}"})
                    with lock:
                        results.append(r.status_code)

        same_bad = "tw-" + "C" * 43
        distinct = ["tw-" + secrets.token_urlsafe(32)[:43] for _ in range(300)]
        batches = [distinct[i::4] for i in range(4)] + [[same_bad] * 100, ["garbage-token"] * 100]
        threads = [threading.Thread(target=hammer, args=(b,)) for b in batches]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        elapsed = time.monotonic() - start
        assert len(results) == 500 and set(results) == {401}
        lookups = calls["lookup"] - 1
        assert lookups <= 5 + 5 * elapsed + 1, (lookups, elapsed)  # the bucket, not one per request
        assert lookups < 500 / 10
        time.sleep(0.3)  # the bucket refills
        assert chat(gw, same_bad).status_code == 401  # at most one lookup (none if the flood already cached it)
        before = calls["lookup"]
        for _ in range(20):
            assert chat(gw, same_bad).status_code == 401  # negative cache: no lookup at all
        assert calls["lookup"] == before
        assert chat(gw, good).status_code == 200  # real keys are in memory: unaffected by the flood
    finally:
        gw.stop()


def test_revoked_mid_stream_finishes_then_401(keyed: GatewayServer, upstream: FakeUpstream,
                                              store: GovernanceStore) -> None:
    kid, key = make_key(store, "acme")
    assert chat(keyed, key).status_code == 200  # loaded
    upstream.set(reply=" ".join(f"w{i}" for i in range(30)), inter_chunk_s=0.03)
    lines: list[str] = []
    with httpx.stream("POST", keyed.base_url + "/chat/completions", json={"model": "chat", "messages": MSG,
                      "stream": True}, headers={"Authorization": f"Bearer {key}"}, timeout=20) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and not lines:
                store.revoke_key(kid)  # revoked while the stream is in flight
            if line:
                lines.append(line)
    assert lines[-1] == "data: [DONE]" and len(lines) > 20  # the request in flight completed
    wait_until(lambda: chat(keyed, key).status_code == 401, timeout=3)
    streamed = [row for row in keyed.rows() if row["stream"]]
    assert len(streamed) == 1 and streamed[0]["status"] == "ok" and streamed[0]["key_id"] == kid


def test_store_unreachable_on_a_miss_is_503(keyed: GatewayServer, store: GovernanceStore) -> None:
    auth = auth_of(keyed)
    assert auth.store is not None

    def down(digest: str) -> Any:
        raise GovernanceStoreError("cannot connect to the PostgreSQL governance store (host=db): refused")

    auth.store.lookup = down  # type: ignore[method-assign]
    r = chat(keyed, "tw-" + "D" * 43)
    assert r.status_code == 503, r.text
    validate(r.json(), "ErrorResponse")
    assert r.json()["error"]["code"] == "auth_unavailable" and "host=db" not in r.text


def test_static_keys_come_first(upstream: FakeUpstream, tmp_path: Path, gov: GovEnv, store: GovernanceStore,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TW_STATIC_KEYS", "ops:sk-static-111")
    _, key = make_key(store, "acme")
    cfg = gateway_config(upstream.base_url, tmp_path, gov)
    cfg.server.api_keys_env = "TW_STATIC_KEYS"
    gw = GatewayServer(cfg).start()
    try:
        assert chat(gw, "sk-static-111").status_code == 200
        assert chat(gw, key).status_code == 200
        assert_401(chat(gw, "sk-static-112"))
        assert [r["principal"] for r in gw.rows() if r["status"] == "ok"] == ["ops", "acme"]
    finally:
        gw.stop()


def test_postgres_store_survives_lost_connections(gov: GovEnv, store: GovernanceStore) -> None:
    if gov.backend != "postgres":
        return  # SQLite has no connection to lose
    import psycopg

    from tests.governance_env import BASE_DSN

    kid, _ = make_key(store, "acme")

    def kill() -> None:
        with psycopg.connect(BASE_DSN, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE application_name = "
                         "'tierwise-governance' AND pid <> pg_backend_pid()")

    kill()
    assert store.get_key(kid).id == kid  # a read reconnects
    kill()
    assert store.revoke_key(kid).status() == "revoked"  # a write whose first statement found the connection gone


def test_governance_ddl_takes_the_ledgers_schema_lock() -> None:
    """Both create tables in one PostgreSQL schema: they must serialise on the same advisory lock."""
    pytest.importorskip("psycopg")
    from tierwise.governance.store import schema_lock_key
    from tierwise.ledger.postgres import _lock_key

    for schema in ("tierwise", "tw_other"):
        assert schema_lock_key(schema) == _lock_key("ledger.schema", schema)
