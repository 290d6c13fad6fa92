"""Regression found by ``tests/test_multi_replica.py``: a session's new pin reached Redis only with the request's
settlement, which is sent after the answer has left — a client sending its next turn to another replica at once
found no pin there a third of the time under load (and could be served, and re-pinned, by another model). The pin is
now stored before the answer (the first chunk of a stream) leaves; the settlement no longer carries it.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for
from tests.redis_env import REDIS_URL, redis_down

redis = pytest.importorskip("redis", reason="the redis client is not installed: pip install -e '.[test]'")


@pytest.fixture(autouse=True)
def _redis_up() -> None:
    if (why := redis_down()) is not None:
        pytest.skip(why)


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
