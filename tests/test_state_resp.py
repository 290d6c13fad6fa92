"""The pipelined Redis connection of the request path (``tierwise.state.resp``) against real redis-servers.

Replies, pipelining under concurrency, error replies as redis-py's exception types, AUTH and SELECT from the URL,
a timeout that closes the connection, and reconnecting after a restart.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.redis_env import REDIS_URL, redis_down
from tests.test_state_redis import OwnRedis, needs_server_binary, own_redis  # noqa: F401 - the fixture
from tierwise.state.resp import RespConnection, pack

redis = pytest.importorskip("redis")
from redis import exceptions as rx  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

_DOWN = redis_down()
pytestmark = pytest.mark.skipif(_DOWN is not None, reason=_DOWN or "")


def conn_for(url: str, timeout_s: float = 1.0) -> RespConnection:
    pool = Redis.from_url(url, decode_responses=True).connection_pool
    assert RespConnection.usable(pool.connection_class, pool.connection_kwargs)
    return RespConnection(dict(pool.connection_kwargs), timeout_s)


def test_pack_is_resp() -> None:
    assert pack(("EVALSHA", "ab", 1, b"k\r\n")) == b"*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$3\r\nk\r\n\r\n"


def test_replies_pipelining_and_error_types() -> None:
    key = f"twtest-resp-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        c = conn_for(REDIS_URL.rsplit("/", 1)[0] + "/5")  # SELECT 5
        try:
            sha = await c.call("SCRIPT", "LOAD", "return {KEYS[1], tonumber(ARGV[1]) + 1, {ARGV[1]}, false}")
            assert await c.call("EVALSHA", sha, 1, key, 41) == [key, 42, ["41"], None]
            # 200 concurrent increments share the one connection; replies come back to their callers in order
            got = await asyncio.gather(*[c.call("INCRBY", key, 1) for _ in range(200)])
            assert sorted(got) == list(range(1, 201))
            assert await c.call("GET", key) == "200"
            sync = redis.Redis.from_url(REDIS_URL.rsplit("/", 1)[0] + "/5")
            assert sync.get(key) == b"200"  # the SELECT reached the server
            sync.delete(key)
            with pytest.raises(rx.NoScriptError):
                await c.call("EVALSHA", "0" * 40, 0)
            with pytest.raises(rx.ResponseError, match="unknown command"):
                await c.call("NOSUCHCOMMAND")
            assert await c.call("PING") == "PONG"  # an error reply leaves the connection usable
        finally:
            await c.aclose()
    asyncio.run(main())


@needs_server_binary
def test_auth_timeout_and_restart(own_redis: OwnRedis) -> None:  # noqa: F811
    async def main() -> None:
        c = conn_for(own_redis.url, timeout_s=0.3)
        assert await c.call("PING") == "PONG"  # authenticated with the URL's password
        bad = conn_for(own_redis.url.replace(own_redis.password or "", "wrong"))
        with pytest.raises(rx.AuthenticationError):
            await bad.call("PING")
        own_redis.pause()
        try:
            with pytest.raises(rx.TimeoutError):
                await c.call("PING")
        finally:
            own_redis.resume()
        assert await c.call("PING") == "PONG"  # the timed-out connection was closed; this is a new one
        own_redis.stop()
        with pytest.raises(rx.ConnectionError):
            await c.call("PING")
        own_redis.start()
        assert await c.call("PING") == "PONG"
        await c.aclose()
    asyncio.run(main())
