"""``POST /v1/feedback``: a score, label or thumbs for a request the gateway served, stored beside the ledger.

Body (JSON object; unknown keys are a 400 so a misspelt field is not silently dropped)::

    {"request_id": "chatcmpl-tw-…",      # the x-tierwise-request-id / response id of the request
     "source": "user",                   # who judges (default "user"); one feedback per (request_id, source)
     "score": 0.8,                       # number in [0, 1]
     "label": "correct",                 # free text, <= 200 chars
     "thumbs": "up",                     # "up"/"down" or 1/-1
     "comment": "…"}                     # <= 2000 chars, redacted like captures

At least one of score, label, thumbs. Posting again from the same source replaces the earlier feedback (idempotent
retries): the answer is 200 both times, with ``created`` true only the first time. An id the ledger does not hold
is a 404 in OpenAI's error shape; when the caller is an authenticated principal, a request of another principal is
a 404 too (its existence is not revealed). The ledger writes in batches, so a request that ended a moment ago may
not be stored yet: the lookup waits for this gateway's writer to flush, and then once more for one flush interval
(another replica's writer), before it answers 404.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from tierwise.errors import APIError
from tierwise.rollout.capture import Redactor, open_rollout_store
from tierwise.rollout.records import Feedback, RolloutStore
from tierwise.sanitize import clean_text

if TYPE_CHECKING:
    from tierwise.config.schema import TierwiseConfig
    from tierwise.gateway.app import Gateway
    from tierwise.ledger.store import LedgerStore

MAX_ID_CHARS = 200
MAX_SOURCE_CHARS = 100
MAX_LABEL_CHARS = 200
MAX_COMMENT_CHARS = 2000
_FIELDS = frozenset({"request_id", "source", "score", "label", "thumbs", "comment"})
_THUMBS = {"up": 1, "down": -1, 1: 1, -1: -1}


def _bad(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param, code="invalid_feedback")


def _text(body: dict[str, Any], name: str, limit: int, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise _bad(f"'{name}' is required", name)
        return None
    if not isinstance(value, str) or not value.strip():
        raise _bad(f"'{name}' must be a non-empty string", name)
    if len(value) > limit:
        raise _bad(f"'{name}' is longer than {limit} characters", name)
    return clean_text(value, limit)


def parse_feedback(body: dict[str, Any], now: float) -> Feedback:
    """The feedback a request body describes, or a 400 naming the field that is wrong."""
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise _bad(f"unknown field '{unknown[0]}' (fields: {', '.join(sorted(_FIELDS))})", unknown[0])
    rid = _text(body, "request_id", MAX_ID_CHARS, required=True)
    source = _text(body, "source", MAX_SOURCE_CHARS) or "user"
    score = body.get("score")
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score) \
                or not 0 <= score <= 1:
            raise _bad("'score' must be a number between 0 and 1", "score")
        score = float(score)
    thumbs_in = body.get("thumbs")
    thumbs = None
    if thumbs_in is not None:
        key = thumbs_in.lower() if isinstance(thumbs_in, str) else thumbs_in
        if isinstance(key, bool) or key not in _THUMBS:
            raise _bad("'thumbs' must be \"up\", \"down\", 1 or -1", "thumbs")
        thumbs = _THUMBS[key]
    label = _text(body, "label", MAX_LABEL_CHARS)
    comment = _text(body, "comment", MAX_COMMENT_CHARS)
    if score is None and thumbs is None and label is None:
        raise _bad("give at least one of 'score', 'label' or 'thumbs'")
    assert rid is not None
    return Feedback(request_id=rid, source=source, ts=now, score=score, label=label, thumbs=thumbs, comment=comment)


def ledger_principal(cfg: TierwiseConfig, store: LedgerStore, request_id: str) -> tuple[bool, str | None]:
    """(found, principal) of the ledger row ``request_id``, read on a connection of its own (a blocking call)."""
    if cfg.ledger.backend == "sqlite":
        path = Path(cfg.ledger.path).expanduser()
        if not path.exists():
            return False, None
        lite = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = lite.execute("SELECT principal FROM requests WHERE id = ?", (request_id,)).fetchone()
        finally:
            lite.close()
        return (row is not None, row[0] if row else None)
    if cfg.ledger.backend == "postgres":
        import psycopg
        from psycopg import sql

        assert cfg.ledger.dsn
        with psycopg.connect(cfg.ledger.dsn, autocommit=True, connect_timeout=10,
                             application_name="tierwise-feedback") as conn:
            row = conn.execute(sql.SQL("SELECT principal FROM {}.tierwise_ledger WHERE id = %s").format(
                sql.Identifier(cfg.ledger.pg_schema)), (request_id,)).fetchone()
        return (row is not None, row[0] if row else None)
    for r in store.iter_rows():  # memory ledger (tests, throwaway gateways)
        if r["id"] == request_id:
            return True, r["principal"]
    return False, None


class FeedbackHandler:
    """The handler of ``POST /v1/feedback``; the rollout store is opened on first use, in a thread."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.cfg = gw.svc.cfg
        c = self.cfg.rollout.capture
        self._redact = Redactor(c.redact, MAX_COMMENT_CHARS)
        self._store: RolloutStore | None = None
        self._lock = threading.Lock()

    def _rollout_store(self) -> RolloutStore:
        with self._lock:
            if self._store is None:
                self._store = open_rollout_store(self.cfg)
            return self._store

    def _lookup(self, request_id: str) -> tuple[bool, str | None]:
        svc = self.gw.svc
        found = ledger_principal(self.cfg, svc.ledger.store, request_id)
        if found[0]:
            return found
        if svc.ledger.queue_depth:
            svc.ledger.flush(2.0)
        else:
            time.sleep(min(2.0, self.cfg.ledger.flush_interval_ms / 1000 * 1.5))
        return ledger_principal(self.cfg, svc.ledger.store, request_id)

    def _store_feedback(self, fb: Feedback, principal: str | None) -> bool:
        found, owner = self._lookup(fb.request_id)
        if not found or (principal is not None and owner != principal):
            raise APIError(404, f"no request with id '{fb.request_id}' in the ledger", code="request_not_found",
                           param="request_id")
        if fb.comment is not None:
            fb.comment = self._redact.text(fb.comment)
        return self._rollout_store().put_feedback(fb)

    async def handle(self, request: web.Request) -> web.Response:
        from tierwise.governance import ANONYMOUS

        try:
            principal = await self.gw._principal(request)
            body = await self.gw._body(request)
            fb = parse_feedback(body, time.time())
            who = None if principal is ANONYMOUS or principal.name == ANONYMOUS.name else principal.name
            created = await asyncio.to_thread(self._store_feedback, fb, who)
        except APIError as err:
            return web.Response(status=err.status, body=orjson.dumps(err.body()), content_type="application/json",
                                headers=err.headers)
        except Exception as exc:  # the store is down: a 503, never a trace
            import logging

            logging.getLogger("tierwise.feedback").error("feedback not stored: %s", exc)
            down = APIError(503, "feedback cannot be stored right now; retry", type="server_error",
                            code="feedback_unavailable")
            return web.Response(status=503, body=orjson.dumps(down.body()), content_type="application/json")
        return web.Response(body=orjson.dumps({"object": "feedback", "request_id": fb.request_id,
                                               "source": fb.source, "created": created}),
                            content_type="application/json")

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def add_feedback_route(app: web.Application, gw: Gateway) -> None:
    """Mount ``POST /v1/feedback`` on the gateway app and close its store on cleanup."""
    handler = FeedbackHandler(gw)
    app.router.add_post("/v1/feedback", handler.handle)

    async def _close(app: web.Application) -> None:
        await asyncio.to_thread(handler.close)

    app.on_cleanup.append(_close)
