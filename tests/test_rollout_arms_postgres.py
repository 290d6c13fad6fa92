"""Shadow and canary on a PostgreSQL ledger: the arm column, the arms tables beside the ledger in its schema, and the
CLI (canary report / promote / history, shadow report) reading them — same server and per-test schema as
tests/test_ledger_postgres.py (CI runs them with the server up: TIERWISE_NO_SKIPS turns a skip into a failure)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest
import yaml

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer
from tests.test_ledger_postgres import _DOWN, PG, pg  # noqa: F401 - the fixture
from tierwise.cli import main
from tierwise.config import load_config
from tierwise.rollout.canary import bucket

pytestmark = pytest.mark.skipif(_DOWN is not None, reason=_DOWN or "")


def test_canary_and_shadow_on_postgres(pg: PG, upstream: FakeUpstream, tmp_path: Path,  # noqa: F811
                                       capsys: pytest.CaptureFixture[str]) -> None:
    doc = {
        "ledger": {"backend": "postgres", "dsn": pg.dsn, "pg_schema": pg.schema, "path": str(tmp_path / "gw"),
                   "flush_interval_ms": 20},
        "providers": {"fake": {"format": "openai", "base_url": upstream.base_url, "api_key": "sk-t", "timeout_s": 2}},
        "models": {"small": {"provider": "fake", "price": {"input": 0.1, "output": 0.4}},
                   "large": {"provider": "fake", "price": {"input": 2.5, "output": 10}}},
        "tiers": {"chat": {"models": ["large"]}},
        "default_tier": "chat", "fallback_model": "large",
        "canary": {"name": "pg-canary", "share": 0.5, "tiers": {"chat": {"models": ["small"], "fallback": "small"}}},
        "shadow": {"name": "pg-shadow", "tiers": {"chat": {"models": ["small"]}}},
    }
    path = tmp_path / "tierwise.yaml"
    path.write_text(yaml.safe_dump(doc))
    gw = GatewayServer(load_config(path)).start()
    client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=20)
    try:
        for i in range(30):
            client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi " * (i + 1)}],
                                           extra_headers={"X-Session-Id": f"pg-{i}"})
        gw.flush_ledger()
        rows = gw.rows()
        assert {r["session_id"]: r["arm"] for r in rows} == {
            f"pg-{i}": ("canary:pg-canary" if bucket("pg-canary", f"pg-{i}") < 0.5 else "control:pg-canary")
            for i in range(30)}
        deadline = time.monotonic() + 10
        while len(pg.query(f'SELECT 1 FROM "{pg.schema}".tierwise_shadow')) < 30:
            assert time.monotonic() < deadline, "shadow records not written"
            time.sleep(0.05)
    finally:
        client.close()
        gw.stop()
    assert main(["canary", "report", "pg-canary", "-c", str(path), "--format", "json"]) == 0
    m = {x["metric"]: x for x in json.loads(capsys.readouterr().out)["metrics"]}
    cost = m["cost_per_request_usd"]
    assert cost["n_control"] + cost["n_canary"] == 30 and cost["canary"] < cost["control"] and cost["significant"]
    assert main(["canary", "promote", "pg-canary", "-c", str(path), "--actor", "ops", "--reason", "cheaper"]) == 0
    capsys.readouterr()
    assert main(["canary", "history", "pg-canary", "-c", str(path)]) == 0
    assert "promote   0.5 -> 1.0 by ops: cheaper" in capsys.readouterr().out
    assert pg.query(f'SELECT share, status FROM "{pg.schema}".tierwise_canary_state') == [(1.0, "promoted")]
    assert main(["shadow", "report", "pg-shadow", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("chat"))
    n, same = line.split()[1:3]
    in_canary = sum(bucket("pg-canary", f"pg-{i}") < 0.5 for i in range(30))
    # the shadow picks small; the request's own plan picked large in control and small in the canary arm
    assert n == "30" and same == f"{in_canary / 30:.1%}"
