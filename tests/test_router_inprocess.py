"""tierwise.Router: the same engine without the HTTP server, sync and async."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import config_for
from tierwise import APIError, Router

MSG = [{"role": "user", "content": "hello"}]


def test_sync_complete_and_stream(upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.set(reply="a b c", prompt_tokens=12, completion_tokens=3)
    with Router(config_for(upstream.base_url, tmp_path)) as router:
        out = router.complete(messages=MSG, task="label")
        assert out["choices"][0]["message"]["content"] == "a b c" and out["model"] == "small"
        chunks = list(router.stream(messages=MSG, model="chat", stream_options={"include_usage": True}))
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "a b c"
        assert chunks[-1]["usage"]["completion_tokens"] == 3
        with pytest.raises(APIError) as ei:
            router.complete(messages=MSG, model="nope")
        assert ei.value.status == 404
        store = router.service.ledger.store
        router.service.ledger.flush()
        rows = list(store.iter_rows(None, None))
    assert [r["tier"] for r in rows] == ["label", "chat"]
    assert rows[0]["cost_usd"] == pytest.approx((12 * 0.1 + 3 * 0.4) / 1e6, rel=1e-12)


async def test_async_complete_with_fallback(upstream: FakeUpstream, tmp_path: Path) -> None:
    for _ in range(3):
        upstream.http_error(500)
    async with Router(config_for(upstream.base_url, tmp_path)) as router:
        out = await router.acomplete({"messages": MSG, "model": "chat"}, session_id="s")
        assert out["model"] == "small"
        again = await router.acomplete({"messages": MSG, "model": "chat"}, session_id="s")
        assert again["model"] == "small"  # pinned
        chunks = [c async for c in router.astream(messages=MSG)]
        assert chunks and chunks[0]["object"] == "chat.completion.chunk"


async def test_async_upstream_failure_raises_api_error(upstream: FakeUpstream, tmp_path: Path) -> None:
    for _ in range(9):
        upstream.http_error(500)
    async with Router(config_for(upstream.base_url, tmp_path)) as router:
        with pytest.raises(APIError) as ei:
            await router.acomplete(messages=MSG, model="chat")
        assert ei.value.status == 502 and len(ei.value.attempts or []) == 9
