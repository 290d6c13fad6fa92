"""Turn whatever went wrong on the wire into one :class:`UpstreamError` with the right :class:`ErrorKind`.

The executor decides retry / fall back / give up from the kind alone, so this mapping *is* the resilience policy's
input: a 429 must carry its ``Retry-After``, a dropped socket must not look like a bad request, and an upstream's
error text must never leak a credential into logs or client responses.
"""

from __future__ import annotations

import re
import time
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson

from tierwise.types import JSON, ErrorKind, UpstreamError

_MAX_MESSAGE = 500
# Anything that looks like a credential: OpenAI/Anthropic style keys, bearer tokens, generic long hex/base64 secrets
# after "key"/"token". Upstreams sometimes echo (part of) the key they rejected.
_SECRET_RE = re.compile(
    r"(sk-[A-Za-z0-9_\-*]{6,}|Bearer\s+[A-Za-z0-9._\-~+/=*]+|"
    r"(?i:(?:api[_-]?key|token|secret)[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9._\-*]{8,})"
)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

# Anthropic's error ``type`` values (docs.anthropic.com/en/api/errors) and the ones OpenAI-compatible servers put in
# ``error.type`` / ``error.code``. Used for errors that arrive inside a 200 stream, where there is no status code.
_TYPE_KINDS: dict[str, ErrorKind] = {
    "rate_limit_error": ErrorKind.RATE_LIMIT,
    "rate_limit_exceeded": ErrorKind.RATE_LIMIT,
    "overloaded_error": ErrorKind.SERVER,
    "api_error": ErrorKind.SERVER,
    "server_error": ErrorKind.SERVER,
    "timeout_error": ErrorKind.TIMEOUT,
    "invalid_request_error": ErrorKind.CLIENT,
    "authentication_error": ErrorKind.CLIENT,
    "permission_error": ErrorKind.CLIENT,
    "not_found_error": ErrorKind.CLIENT,
    "request_too_large": ErrorKind.CLIENT,
}


def sanitize_message(text: str) -> str:
    """Upstream error text made safe to log and forward: no credentials, no control characters, bounded length."""
    text = _CONTROL_RE.sub(" ", text)
    text = _SECRET_RE.sub("[redacted]", text)
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (OpenAI, Anthropic) or ``Retry-After`` (seconds or HTTP date).

    ``headers`` is any case-insensitive mapping (aiohttp's ``CIMultiDictProxy``). Negative or unparseable values
    give ``None`` rather than a guess: the executor then uses its own backoff.
    """
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            value = float(ms) / 1000.0
            if value >= 0:
                return value
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
        return value if value >= 0 else None
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def error_object(body: bytes) -> tuple[JSON | None, str]:
    """The upstream's error object and its message, from an OpenAI- or Anthropic-shaped error body.

    OpenAI: ``{"error": {"message", "type", "param", "code"}}``; Anthropic: ``{"type": "error", "error": {"type",
    "message"}}``; some servers send ``{"detail": ...}`` (FastAPI) or ``{"message": ...}``. A body that is not JSON
    gives ``(None, <start of the text>)``.
    """
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        text = body[:200].decode("utf-8", "replace").strip()
        return None, sanitize_message(text)
    if not isinstance(parsed, dict):
        return None, ""
    err = parsed.get("error")
    if isinstance(err, dict):
        message = err.get("message")
        return err, sanitize_message(message if isinstance(message, str) else str(err.get("type", "")))
    if isinstance(err, str):
        return {"message": err}, sanitize_message(err)
    for key in ("message", "detail"):
        value = parsed.get(key)
        if isinstance(value, str):
            return parsed, sanitize_message(value)
    return parsed, ""


def kind_for_status(status: int) -> ErrorKind:
    """HTTP status -> kind. 408 and 409 follow the OpenAI SDKs' retry policy (upstream timeout / lock conflict)."""
    if status == 429:
        return ErrorKind.RATE_LIMIT
    if status >= 500:
        return ErrorKind.SERVER  # includes Anthropic's 529 "overloaded"
    if status == 408:
        return ErrorKind.TIMEOUT
    if status == 409:
        return ErrorKind.SERVER
    return ErrorKind.CLIENT


def status_error(provider: str, status: int, headers: Any, body: bytes) -> UpstreamError:
    """The error for a non-2xx response."""
    kind = kind_for_status(status)
    err, message = error_object(body)
    retry_after = parse_retry_after(headers) if kind in (ErrorKind.RATE_LIMIT, ErrorKind.SERVER) else None
    text = f"{provider}: HTTP {status}" + (f": {message}" if message else "")
    return UpstreamError(kind, text, status=status, retry_after_s=retry_after, body=err)


def stream_error(provider: str, err: Any) -> UpstreamError:
    """An error event that arrived inside a 200 stream (Anthropic ``event: error``, OpenAI-compatible ``{"error"}``)."""
    if not isinstance(err, dict):
        return UpstreamError(ErrorKind.SERVER, f"{provider}: error in stream", body=None)
    etype = err.get("type") if isinstance(err.get("type"), str) else None
    code = err.get("code") if isinstance(err.get("code"), str) else None
    kind = _TYPE_KINDS.get(etype or "") or _TYPE_KINDS.get(code or "") or ErrorKind.SERVER
    message = err.get("message")
    text = sanitize_message(message) if isinstance(message, str) else (etype or "error")
    return UpstreamError(kind, f"{provider}: error in stream: {text}", body=err)


def stream_cut(provider: str) -> UpstreamError:
    """The stream hit EOF before its terminator (no ``[DONE]``/finish_reason, no ``message_stop``)."""
    return UpstreamError(ErrorKind.CONNECTION, f"{provider}: stream ended before the answer was complete")


def bad_response(provider: str, what: str, *, status: int | None = 200) -> UpstreamError:
    return UpstreamError(ErrorKind.BAD_RESPONSE, f"{provider}: {what}", status=status)


def transport_error(provider: str, exc: BaseException) -> UpstreamError:
    """aiohttp/asyncio exception -> kind. Timeouts are checked first: aiohttp's timeout errors are also ClientErrors."""
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError is TimeoutError on 3.11
        what = "connect timeout" if isinstance(exc, aiohttp.ConnectionTimeoutError) else "read timeout"
        return UpstreamError(ErrorKind.TIMEOUT, f"{provider}: {what}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamError(ErrorKind.CONNECTION, f"{provider}: response cut off ({type(exc).__name__})")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamError(ErrorKind.CONNECTION, f"{provider}: server disconnected")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(ErrorKind.CONNECTION, f"{provider}: cannot connect ({exc.os_error.__class__.__name__})")
    if isinstance(exc, aiohttp.ClientResponseError):  # malformed status line / headers
        return UpstreamError(ErrorKind.BAD_RESPONSE, f"{provider}: malformed HTTP response ({exc.message})")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return UpstreamError(ErrorKind.CONNECTION, f"{provider}: connection error ({type(exc).__name__})")
    return UpstreamError(ErrorKind.CONNECTION, f"{provider}: {type(exc).__name__}")
