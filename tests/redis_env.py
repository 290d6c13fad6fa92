"""The shared Redis the state tests use: its URL, whether it answers, and a per-test key prefix cleaned up after.

``TIERWISE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). The ``prefix`` fixture does not skip by itself:
tests parametrised over the memory and Redis backends use it for both. Registered in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

REDIS_URL = os.environ.get("TIERWISE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_down() -> str | None:
    """Why the shared Redis cannot be used (client missing, not answering), or None."""
    try:
        import redis

        from tierwise.state.redis_backend import redacted

        c = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        c.ping()
        c.close()
        return None
    except ImportError:
        return "the redis client is not installed: pip install -e '.[test]' (the 'redis' extra)"
    except Exception as exc:
        return (f"Redis not reachable at {redacted(REDIS_URL)} ({type(exc).__name__}): start it (redis-server "
                "--daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no) or set TIERWISE_TEST_REDIS_URL")


@pytest.fixture
def prefix() -> Iterator[str]:
    """This test's key prefix; its keys are deleted afterwards (when Redis answers)."""
    p = f"twtest-{uuid.uuid4().hex[:12]}"
    yield p
    if redis_down() is not None:
        return
    import redis

    c = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(c.scan_iter(match="{" + p + "}:*", count=1000))
        if keys:
            c.delete(*keys)
    finally:
        c.close()
