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
    assert [(r["tier"], r["status"]) for r in rows] == [("label", "ok"), ("chat", "ok"), (None, "rejected")]
    assert rows[2]["requested_model"] == "nope" and rows[2]["http_status"] == 404
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


def test_every_rejected_request_is_booked_once(upstream: FakeUpstream, tmp_path: Path) -> None:
    """What the Router refuses before routing gets its ledger record, as through the gateway: one per request."""
    with Router(config_for(upstream.base_url, tmp_path)) as router:
        refused = [
            (lambda: router.complete(messages=MSG, model="nope"), 404),
            (lambda: router.complete(messages=MSG, task="no-such-tier", session_id="s-1"), 404),
            (lambda: router.complete(messages=[]), 400),
            (lambda: router.complete("not a dict"), 400),  # type: ignore[arg-type]
            (lambda: list(router.stream(messages=MSG, model="nope")), 404),
        ]
        for call, status in refused:
            with pytest.raises(APIError) as ei:
                call()
            assert ei.value.status == status
        router.complete(messages=MSG)
        router.service.ledger.flush()
        rows = list(router.service.ledger.store.iter_rows(None, None))
    assert len(rows) == len(refused) + 1 and len({r["id"] for r in rows}) == len(rows)
    assert [(r["status"], r["http_status"]) for r in rows[:-1]] == [("rejected", s) for _, s in refused]
    assert rows[1]["tier"] == "no-such-tier" and rows[1]["session_id"] == "s-1"
    assert rows[4]["stream"] is True and rows[4]["requested_model"] == "nope"
    assert rows[-1]["status"] == "ok"


async def test_async_rejections_booked_and_internal_errors_too(upstream: FakeUpstream, tmp_path: Path) -> None:
    async with Router(config_for(upstream.base_url, tmp_path)) as router:
        with pytest.raises(APIError):
            await router.acomplete(messages=MSG, model="nope")
        with pytest.raises(APIError):
            async for _ in router.astream(messages=MSG, task="nope"):
                pass
        svc = router.service

        async def broken(*a: object, **k: object) -> object:
            raise RuntimeError("a bug while routing")

        svc.begin = broken  # type: ignore[method-assign,assignment]
        with pytest.raises(APIError) as ei:
            await router.acomplete(messages=MSG)
        assert ei.value.status == 500 and isinstance(ei.value.__cause__, RuntimeError)
        svc.ledger.flush()
        rows = list(svc.ledger.store.iter_rows(None, None))
    assert [(r["status"], r["http_status"]) for r in rows] == [("rejected", 404), ("rejected", 404), ("error", 500)]
