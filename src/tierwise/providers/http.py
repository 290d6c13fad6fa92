"""Pooled aiohttp plumbing shared by the HTTP adapters: one session per provider, errors mapped at one place.

The session is created lazily inside the running loop (an ``aiohttp.ClientSession`` is bound to the loop it was made
in, and providers are built from config before the server's loop exists). Keep-alive matters more than anything else
for overhead: a fresh TCP (or TLS) handshake per request costs more than the whole gateway.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from tierwise.config.schema import ProviderConfig
from tierwise.providers.errors import bad_response, status_error, transport_error
from tierwise.types import UpstreamError

_KEEPALIVE_S = 30.0


def resolve_api_key(name: str, cfg: ProviderConfig) -> str | None:
    """The key from ``api_key`` or the environment variable named by ``api_key_env``; None for keyless upstreams.

    A configured-but-unset variable is a start-up error: silently sending no key would turn a deployment mistake
    into a stream of 401s at request time.
    """
    if cfg.api_key:
        return cfg.api_key
    if cfg.api_key_env:
        value = os.environ.get(cfg.api_key_env)
        if not value:
            raise ValueError(f"provider '{name}': environment variable {cfg.api_key_env} is not set")
        return value
    return None


class HttpProvider:
    """Base for adapters that talk HTTP+JSON to ``cfg.base_url``. Subclasses set the headers and the path."""

    def __init__(self, name: str, cfg: ProviderConfig, headers: dict[str, str]) -> None:
        self.name = name
        self.cfg = cfg
        self._base_url = (cfg.base_url or "").rstrip("/")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json", **headers, **cfg.headers}
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float, bool], aiohttp.ClientTimeout] = {}

    def __repr__(self) -> str:  # never show headers: they hold the key
        return f"{type(self).__name__}(name={self.name!r}, base_url={self._base_url!r})"

    def _get_session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.cfg.max_connections,
                limit_per_host=self.cfg.max_connections,
                keepalive_timeout=_KEEPALIVE_S,
                ttl_dns_cache=300,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                headers=self._headers,
                skip_auto_headers=("User-Agent",),
                auto_decompress=True,
            )
            self._session = session
        return session

    def _timeout(self, timeout_s: float, streaming: bool) -> aiohttp.ClientTimeout:
        """Non-streaming: ``timeout_s`` bounds the whole call. Streaming: it bounds each read (the wait per chunk)."""
        key = (timeout_s, streaming)
        timeout = self._timeouts.get(key)
        if timeout is None:
            if len(self._timeouts) > 64:  # deadline-derived values vary; keep the cache bounded
                self._timeouts.clear()
            connect = min(self.cfg.connect_timeout_s, timeout_s)
            if streaming:
                timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_read=timeout_s)
            else:  # no sock_read: it could never fire before ``total``, and re-arming it on every read cost ~1 %
                timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect)
            self._timeouts[key] = timeout
        return timeout

    @asynccontextmanager
    async def _post(self, path: str, data: bytes, *, timeout_s: float, streaming: bool) -> AsyncIterator[
        aiohttp.ClientResponse
    ]:
        """POST and yield a 2xx response; non-2xx and transport failures raise :class:`UpstreamError`.

        Exceptions raised while the caller reads the body inside the ``async with`` (mid-stream disconnects, read
        timeouts) are mapped too, so adapters only ever see ``UpstreamError``.
        """
        session = self._get_session()
        try:
            async with session.post(
                self._base_url + path,
                data=data,
                timeout=self._timeout(timeout_s, streaming),
                headers={"Accept": "text/event-stream"} if streaming else None,
            ) as resp:
                if resp.status >= 300:
                    body = await resp.read()
                    raise status_error(self.name, resp.status, resp.headers, body)
                yield resp
        except UpstreamError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise transport_error(self.name, exc) from exc

    async def _read_json(self, resp: aiohttp.ClientResponse) -> Any:
        """The whole response body parsed as JSON; a body that is not JSON is a ``bad_response`` naming the provider.
        Call it inside :meth:`_post`'s ``async with``, so read failures are mapped too."""
        raw = await resp.read()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise bad_response(self.name, "response body is not JSON", status=resp.status) from None

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
