"""Pooled HTTP plumbing shared by the HTTP adapters: one keep-alive pool per provider, errors mapped at one place.

The pool (:class:`tierwise.providers.wire.Origin`) opens connections lazily inside the running loop, since providers
are built from config before the server's loop exists. Keep-alive matters more than anything else for overhead: a
fresh TCP (or TLS) handshake per request costs more than the whole gateway.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson

from tierwise.config.schema import ProviderConfig
from tierwise.providers.errors import bad_response, status_error, transport_error
from tierwise.providers.wire import Origin, WireError, WireResponse
from tierwise.types import UpstreamError

_ACCEPT = {False: b"Accept: application/json\r\n", True: b"Accept: text/event-stream\r\n"}


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
        fixed = {"Content-Type": "application/json", **headers, **cfg.headers}
        # an operator's own Accept header wins; else JSON, or SSE for streams
        self._accept = {False: b"", True: b""} if any(k.lower() == "accept" for k in fixed) else _ACCEPT
        self._origin = Origin(self._base_url, fixed, max_connections=cfg.max_connections,
                              connect_timeout_s=cfg.connect_timeout_s)

    def __repr__(self) -> str:  # never show headers: they hold the key
        return f"{type(self).__name__}(name={self.name!r}, base_url={self._base_url!r})"

    @asynccontextmanager
    async def _post(self, path: str, data: bytes, *, timeout_s: float, streaming: bool) -> AsyncIterator[
        WireResponse
    ]:
        """POST and yield a 2xx response; non-2xx and transport failures raise :class:`UpstreamError`.

        Non-streaming, ``timeout_s`` bounds the whole call; streaming, each wait for data. Exceptions raised while the
        caller reads the body inside the ``async with`` (mid-stream disconnects, read timeouts) are mapped too, so
        adapters only ever see ``UpstreamError``. The connection goes back to the pool only if the body was read to
        the end.
        """
        conn = None
        try:
            conn, resp = await self._origin.post(path, data, timeout_s=timeout_s, streaming=streaming,
                                                 extra_headers=self._accept[streaming])
            if resp.status >= 300:
                body = await resp.read()
                raise status_error(self.name, resp.status, resp.headers, body)
            yield resp
        except UpstreamError:
            raise
        except (WireError, TimeoutError, OSError) as exc:
            raise transport_error(self.name, exc) from exc
        finally:
            if conn is not None:
                self._origin.release(conn)

    async def _read_json(self, resp: WireResponse) -> Any:
        """The whole response body parsed as JSON; a body that is not JSON is a ``bad_response`` naming the provider.
        Call it inside :meth:`_post`'s ``async with``, so read failures are mapped too."""
        raw = await resp.read()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise bad_response(self.name, "response body is not JSON", status=resp.status) from None

    async def aclose(self) -> None:
        await self._origin.aclose()
