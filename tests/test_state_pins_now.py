"""Regression found by ``tests/test_multi_replica.py``: a session's new pin reached Redis only with the request's
settlement, which is sent after the answer has left — a client sending its next turn to another replica at once
found no pin there a third of the time under load (and could be served, and re-pinned, by another model). The pin is
now stored before the answer (the first chunk of a stream) leaves; the settlement no longer carries it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for

REDIS_URL = os.environ.get("TIERWISE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
redis = pytest.importorskip("redis", reason="the redis client is not installed: pip install -e '.[test]'")


@pytest.fixture
def prefix() -> Iterator[str]:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        pytest.skip(f"Redis not reachable ({type(exc).__name__}): start it or set TIERWISE_TEST_REDIS_URL")
    p = f"twtest-{uuid.uuid4().hex[:12]}"
    yield p
    c = redis.Redis.from_url(REDIS_URL)
    keys = list(c.scan_iter(match="{" + p + "}:*", count=1000))
    if keys:
        c.delete(*keys)
    c.close()


def test_a_new_pin_is_in_redis_before_the_answer_leaves(tmp_path: Path, prefix: str) -> None:
    with FakeUpstream() as up:
        cfg = config_for(up.base_url, tmp_path, extra=f'state: {{backend: redis, url: "{REDIS_URL}", prefix: '
                         f'"{prefix}"}}\n')
        gw = GatewayServer(cfg).start()
        r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            seen = {}
            with httpx.Client(timeout=20) as c:
                for i in range(20):
                    s = f"sess-{i}"
                    body = {"messages": [{"role": "user", "content": "hi"}], "stream": i % 2 == 1}
                    resp = c.post(gw.base_url + "/chat/completions", json=body,
                                  headers={"X-Session-Id": s, "X-Task": "chat"})
                    assert resp.status_code == 200
                    seen[s] = r.get("{" + prefix + "}:pin:" + s)  # the moment the answer is complete
            assert seen == {f"sess-{i}": "large" for i in range(20)}
            assert gw.svc is not None
            assert gw.svc.governor.state.round_trips["pin"] == 20  # type: ignore[attr-defined]
        finally:
            r.close()
            gw.stop()
