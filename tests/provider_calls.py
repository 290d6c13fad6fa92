"""Calls the provider adapter tests make the same way for every wire format."""

from __future__ import annotations

import pytest

from tierwise.providers.base import Provider
from tierwise.types import StreamChunk, UpstreamError


async def collect(provider: Provider, body: dict, timeout_s: float = 5.0) -> list[StreamChunk]:
    """Every chunk of one streamed request."""
    return [chunk async for chunk in provider.stream(body, timeout_s=timeout_s)]


async def expect_error(provider: Provider, *, body: dict, stream: bool = False, timeout_s: float = 5.0
                       ) -> UpstreamError:
    """The :class:`UpstreamError` one request (streamed or not) must raise."""
    with pytest.raises(UpstreamError) as info:
        if stream:
            await collect(provider, dict(body), timeout_s=timeout_s)
        else:
            await provider.complete(dict(body), timeout_s=timeout_s)
    return info.value
