"""API keys: principals in the ledger, 401 in OpenAI's error shape, keys never logged."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for
from tests.schemas import validate


@pytest.fixture
def keyed(upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GatewayServer]:
    monkeypatch.setenv("TW_TEST_KEYS", "team-a:sk-aaa-111, team-b:sk-bbb-222")
    cfg = config_for(upstream.base_url, tmp_path)
    cfg.server.api_keys_env = "TW_TEST_KEYS"
    gw = GatewayServer(cfg).start()
    yield gw
    gw.stop()


def test_keys_map_to_principals(keyed: GatewayServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    msg = [{"role": "user", "content": "hi"}]
    for key in ("sk-aaa-111", "sk-bbb-222"):
        c = openai.OpenAI(base_url=keyed.base_url, api_key=key, max_retries=0)
        c.chat.completions.create(model="chat", messages=msg)
    assert [r["principal"] for r in keyed.rows()] == ["team-a", "team-b"]
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
        r = httpx.post(keyed.base_url + "/chat/completions", json={"messages": msg}, headers=headers)
        assert r.status_code == 401
        validate(r.json(), "ErrorResponse")
        assert r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(keyed.base_url + "/models").status_code == 401
    assert httpx.get(keyed.url + "/healthz").status_code == 200  # probes need no key
    assert "sk-aaa-111" not in caplog.text and "sk-wrong" not in caplog.text
    rows = keyed.rows()
    assert [(r["principal"], r["status"], r["http_status"]) for r in rows[2:]] == [
        ("unauthenticated", "rejected", 401)] * 2  # refused, never routed, still booked (no cost)
    assert all(r["cost_usd"] == 0 for r in rows[2:])
