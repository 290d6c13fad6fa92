"""``tierwise.Router``: the same engine, executor and ledger as the gateway, without the HTTP server.

Async code uses ``acomplete`` / ``astream`` on its own loop. Sync code uses ``complete`` / ``stream``, which run on
a private event loop in a background thread (the providers' connection pools live on that loop), so a sync caller
gets pooled keep-alive connections too.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

from tierwise.config.load import load_config
from tierwise.config.schema import TierwiseConfig
from tierwise.errors import APIError
from tierwise.governance import ANONYMOUS
from tierwise.requests import take_tags
from tierwise.routing.engine import RouteRequest
from tierwise.routing.executor import Call
from tierwise.service import Tierwise
from tierwise.types import JSON

log = logging.getLogger("tierwise")


class Router:
    """In-process tierwise.

    >>> router = Router("tierwise.yaml")                                    # doctest: +SKIP
    >>> router.complete(messages=[{"role": "user", "content": "hi"}])       # doctest: +SKIP
    """

    def __init__(self, config: TierwiseConfig | str | Path, **service_kwargs: Any) -> None:
        self.cfg = config if isinstance(config, TierwiseConfig) else load_config(config)
        self._service_kwargs = service_kwargs
        self._svc: Tierwise | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- async API -------------------------------------------------------------------------------------------------
    @property
    def service(self) -> Tierwise:
        if self._svc is None:
            self._svc = Tierwise(self.cfg, **self._service_kwargs)
        return self._svc

    @staticmethod
    def _request(body: JSON | None, params: dict[str, Any], stream: bool) -> tuple[JSON | None, RouteRequest]:
        task = params.pop("task", None)
        session_id = params.pop("session_id", None)
        route = RouteRequest(requested_model=None, task_header=task, session_id=session_id)
        if body is not None and not isinstance(body, dict):
            return None, route
        req = dict(body or {})
        req.update(params)
        req.setdefault("model", "auto")
        req["stream"] = stream
        return req, route

    async def _begin(self, body: JSON | None, params: dict[str, Any], stream: bool) -> Call:
        """Validate and route; a request refused here is booked too (status ``rejected``), as the gateway does, so
        every request has exactly one ledger record."""
        svc = self.service
        tags = params.pop("tags", None)
        req, route = self._request(body, params, stream)
        try:
            if req is None:
                raise APIError(400, f"the request body must be a dict (an OpenAI request object), not "
                                    f"{type(body).__name__}", code="invalid_request")
            route.tags = take_tags(req, tags, where="tags")
            return await svc.begin(req, route)
        except APIError as err:
            svc.reject(err, ANONYMOUS, req, route)
            raise
        except asyncio.CancelledError:
            svc.reject(APIError(499, "cancelled before the request was routed", code="client_cancelled"),
                       ANONYMOUS, req, route, status="client_cancelled")
            raise
        except Exception as exc:
            internal = APIError(500, f"internal error ({type(exc).__name__})", type="server_error",
                                code="internal_error")
            log.error("internal error before routing: %s", type(exc).__name__, exc_info=exc)
            svc.reject(internal, ANONYMOUS, req, route, status="error")
            raise internal from exc

    async def acomplete(self, body: JSON | None = None, **params: Any) -> JSON:
        """A chat completion. ``body`` is an OpenAI request dict; keyword params are merged into it.
        ``task=`` picks a tier explicitly, ``session_id=`` pins a session, ``tags=`` (a dict of strings, or
        ``"key=value,key=value"``) labels the ledger record, merged over the body's ``metadata`` as the gateway merges
        the ``X-Tierwise-Tags`` header. Raises :class:`tierwise.APIError`."""
        call = await self._begin(body, params, stream=False)
        return (await self.service.complete(call)).body

    async def astream(self, body: JSON | None = None, **params: Any) -> AsyncGenerator[JSON, None]:
        """Stream chunk dicts. A mid-stream upstream failure raises :class:`tierwise.APIError` after the chunks."""
        call = await self._begin(body, params, stream=True)
        stream = await self.service.open_stream(call)
        gen = stream.chunks()
        try:
            async for chunk in gen:
                yield chunk
        finally:
            await gen.aclose()
        if stream.error is not None:
            raise stream.error

    async def aclose(self) -> None:
        if self._svc is not None:
            await self._svc.aclose()
            self._svc = None

    # -- sync API --------------------------------------------------------------------------------------------------
    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                t = threading.Thread(target=loop.run_forever, name="tierwise-router", daemon=True)
                t.start()
                self._loop, self._thread = loop, t
            return self._loop

    def complete(self, body: JSON | None = None, **params: Any) -> JSON:
        return asyncio.run_coroutine_threadsafe(self.acomplete(body, **params), self._ensure_loop()).result()

    def stream(self, body: JSON | None = None, **params: Any) -> Iterator[JSON]:
        loop = self._ensure_loop()
        agen = self.astream(body, **params)
        try:
            while True:
                try:
                    yield asyncio.run_coroutine_threadsafe(agen.__anext__(), loop).result()
                except StopAsyncIteration:
                    return
        finally:
            asyncio.run_coroutine_threadsafe(agen.aclose(), loop).result()

    def close(self) -> None:
        """Flush the ledger and close connections (safe to call twice)."""
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self.aclose(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._loop.close()
            self._loop = self._thread = None
        elif self._svc is not None:
            asyncio.run(self.aclose())

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Router:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
