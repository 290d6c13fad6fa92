"""Turn whatever went wrong on the wire into one :class:`UpstreamError` with the right :class:`ErrorKind`.

The executor decides retry / fall back / give up from the kind alone, so this mapping *is* the resilience policy's
input: a 429 must carry its ``Retry-After``, a dropped socket must not look like a bad request, and an upstream's
error text must never leak a credential into logs or client responses.

**No upstream free text, anywhere.** An upstream's error message can carry anything — OpenAI echoes (part of) the
rejected key in its 401 text, proxies echo headers, servers echo config — and no redaction pattern knows every key
format. So an :class:`UpstreamError`'s ``message`` (which goes to the ledger, to logs and, inside tierwise's own
sentences, to the client) is written here in tierwise's words only: the provider name, the HTTP status and at most
the upstream's machine-readable ``type`` / ``code`` when they are short identifiers (``[a-z_]{1,40}``). The parsed
error object stays on ``UpstreamError.body`` and is never forwarded raw; the one thing ever taken from its text is
:func:`client_detail`, for 4xx errors that are the caller's own fault (see there).
"""

from __future__ import annotations

import re
import time
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from tierwise.providers.wire import (
    WireCannotConnect,
    WireCutOff,
    WireDisconnected,
    WireMalformed,
    WireTimeout,
)
from tierwise.types import JSON, ErrorKind, UpstreamError

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
    "authentication_error": ErrorKind.AUTH,
    "permission_error": ErrorKind.AUTH,
    "billing_error": ErrorKind.AUTH,
    "invalid_api_key": ErrorKind.AUTH,
    "not_found_error": ErrorKind.NOT_FOUND,
    "model_not_found": ErrorKind.NOT_FOUND,
    "request_too_large": ErrorKind.CLIENT,
}

# The upstream's machine-readable error fields are passed on only when they look like identifiers.
_IDENT_RE = re.compile(r"[a-z_]{1,40}")
# ``param`` names a field of the request: ``max_tokens``, ``messages[0].content``, ``tools.function.name``.
_PARAM_RE = re.compile(r"[a-z_]{1,40}(?:\[\d{1,4}\])?(?:\.[a-z_]{1,40}(?:\[\d{1,4}\])?){0,4}")

# client_detail's filter: a message is forwarded only if every word is one of these shapes (after stripping quotes
# and brackets around it and punctuation after it) and nothing in it talks about credentials.
_DETAIL_MAX = 240
_DETAIL_WORD_RE = re.compile(
    r"[A-Z]?[a-z]{1,20}(?:'[a-z]{1,2})?"  # an ordinary word: "prompt", "This", "model's"
    r"|[a-z]{1,20}(?:-[a-z]{1,20}){1,3}"  # hyphenated: "non-empty", "built-in"
    r"|[A-Z]{2,6}"  # an acronym: "JSON", "API"
    r"|\d{1,10}(?:[.,]\d{1,10}){0,3}"  # a number: "8192", "1,048,576", "0.5"
    # a request field path, which must have a "_", "." or "[": "max_tokens", "messages[0].role"
    r"|(?=\S*[_.\[])[a-z]{1,20}(?:_[a-z]{1,20}){0,3}(?:\[\d{1,4}\])?(?:\.[a-z]{1,20}(?:_[a-z]{1,20}){0,3}(?:\[\d{1,4}\])?){0,4}"
    r"|[<>=]=?|-"  # comparisons: "210000 tokens > 200000 maximum"
)
_DETAIL_STRIP_LEAD = "'\"(["
_DETAIL_STRIP_TRAIL = "'\")],.:;!?"
_DETAIL_DENY_RE = re.compile(
    r"key|secret|passw|bearer|auth|credential|signature|cookie|session|account|billing|organi[sz]ation|"
    r"project|sk-|https?|www", re.I
)


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (OpenAI, Anthropic) or ``Retry-After`` (seconds or HTTP date).

    ``headers`` maps lower-cased names to values (:class:`~tierwise.providers.wire.WireResponse` headers). Negative or unparseable values
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


def error_object(body: bytes) -> JSON | None:
    """The upstream's error object from an OpenAI- or Anthropic-shaped error body (kept on ``UpstreamError.body``).

    OpenAI: ``{"error": {"message", "type", "param", "code"}}``; Anthropic: ``{"type": "error", "error": {"type",
    "message"}}``; some servers send ``{"detail": ...}`` (FastAPI) or ``{"message": ...}`` (then the whole body).
    A body that is not a JSON object gives ``None``: its text is never read.
    """
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    err = parsed.get("error")
    if isinstance(err, dict):
        return err
    if isinstance(err, str):
        return {"message": err}
    return parsed


def identifier(value: Any) -> str | None:
    """``value`` if it is a short identifier-like string (an error ``type`` or ``code``), else None."""
    return value if isinstance(value, str) and _IDENT_RE.fullmatch(value) else None


def _ids(err: JSON | None) -> str:
    """`` (type=…, code=…)`` from the upstream's error object, identifiers only; '' when there are none."""
    if not isinstance(err, dict):
        return ""
    etype, code = identifier(err.get("type")), identifier(err.get("code"))
    parts = [f"type={etype}"] if etype else []
    if code and code != etype:
        parts.append(f"code={code}")
    return f" ({', '.join(parts)})" if parts else ""


def client_detail(err: JSON | None) -> tuple[str | None, str | None]:
    """What of an upstream's 4xx error object may be told to the caller whose request it rejected: (message, param).

    Only for :attr:`ErrorKind.CLIENT` errors, which are the caller's fault (context too long, a bad parameter) and
    which the caller cannot fix without knowing what was wrong; ``code`` and ``type`` come from :func:`identifier`.

    - ``param`` only when it has the shape of a request field path (``max_tokens``, ``messages[0].content``).
    - ``message`` only when it passes a deliberately strict filter: printable ASCII, at most 240 characters, no
      word about keys, secrets, auth, accounts, sessions, projects or URLs, and every word an ordinary word, an
      acronym, a number, a ``snake_case`` field path or a comparison sign. That passes the messages that matter
      ("prompt is too long: 210000 tokens > 200000 maximum", "max_tokens is too large: 100000", "This model's
      maximum context length is 8192 tokens") and refuses anything carrying a token-like string (mixed case,
      letters with digits, long runs, ``sk-…``) — a refused message is dropped whole, never partly redacted, since
      partial redaction is exactly what failed before. The caller then still gets the status, type, code and param.
    """
    if not isinstance(err, dict):
        return None, None
    param = err.get("param")
    param = param if isinstance(param, str) and _PARAM_RE.fullmatch(param) else None
    message = err.get("message")
    return (message if isinstance(message, str) and _detail_ok(message) else None), param


def _detail_ok(text: str) -> bool:
    if not text or len(text) > _DETAIL_MAX or not text.isascii() or not text.isprintable():
        return False
    if _DETAIL_DENY_RE.search(text):
        return False
    for word in text.split():
        core = word.lstrip(_DETAIL_STRIP_LEAD).rstrip(_DETAIL_STRIP_TRAIL).lstrip(_DETAIL_STRIP_LEAD)
        if core and not _DETAIL_WORD_RE.fullmatch(core):
            return False
    return True


def kind_for_status(status: int) -> ErrorKind:
    """HTTP status -> kind. 408 and 409 follow the OpenAI SDKs' retry policy (upstream timeout / lock conflict).

    401/402/403 are the operator's credentials or account and 404/405/410 the operator's model name or URL (the
    caller names tiers and tierwise models, never upstream ones): those fall back to the next model instead of being
    returned to the caller as if its request were wrong."""
    if status == 429:
        return ErrorKind.RATE_LIMIT
    if status >= 500:
        return ErrorKind.SERVER  # includes Anthropic's 529 "overloaded"
    if status == 408:
        return ErrorKind.TIMEOUT
    if status == 409:
        return ErrorKind.SERVER
    if status in (401, 402, 403):
        return ErrorKind.AUTH
    if status in (404, 405, 410):
        return ErrorKind.NOT_FOUND
    return ErrorKind.CLIENT


def status_error(provider: str, status: int, headers: Any, body: bytes) -> UpstreamError:
    """The error for a non-2xx response, in tierwise's words: ``<provider>: HTTP <status> (type=…, code=…)``."""
    kind = kind_for_status(status)
    err = error_object(body)
    if kind is ErrorKind.CLIENT and isinstance(err, dict):  # e.g. a proxy answering 400 for a bad key
        named = _TYPE_KINDS.get(identifier(err.get("code")) or "") or _TYPE_KINDS.get(identifier(err.get("type")) or "")
        if named in (ErrorKind.AUTH, ErrorKind.NOT_FOUND):
            kind = named
    retry_after = parse_retry_after(headers) if kind in (ErrorKind.RATE_LIMIT, ErrorKind.SERVER) else None
    return UpstreamError(kind, f"{provider}: HTTP {status}{_ids(err)}", status=status, retry_after_s=retry_after,
                         body=err)


def stream_error(provider: str, err: Any) -> UpstreamError:
    """An error object in a 200 response: an event inside a stream (Anthropic ``event: error``, OpenAI-compatible
    ``{"error"}``) or a whole body that is one. Its kind comes from its ``type``/``code``; its text is not read."""
    if not isinstance(err, dict):
        return UpstreamError(ErrorKind.SERVER, f"{provider}: error in the response", body=None)
    etype, code = identifier(err.get("type")), identifier(err.get("code"))
    kind = _TYPE_KINDS.get(etype or "") or _TYPE_KINDS.get(code or "") or ErrorKind.SERVER
    return UpstreamError(kind, f"{provider}: error in the response{_ids(err)}", body=err)


def stream_cut(provider: str) -> UpstreamError:
    """The stream hit EOF before its terminator (no ``[DONE]``/finish_reason, no ``message_stop``)."""
    return UpstreamError(ErrorKind.CONNECTION, f"{provider}: stream ended before the answer was complete")


def bad_response(provider: str, what: str, *, status: int | None = 200) -> UpstreamError:
    return UpstreamError(ErrorKind.BAD_RESPONSE, f"{provider}: {what}", status=status)


def transport_error(provider: str, exc: BaseException) -> UpstreamError:
    """Transport exception (:mod:`tierwise.providers.wire`, asyncio, OS) -> kind. Timeouts first."""
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError is TimeoutError on 3.11
        what = "connect timeout" if isinstance(exc, WireTimeout) and exc.phase == "connect" else "read timeout"
        return UpstreamError(ErrorKind.TIMEOUT, f"{provider}: {what}")
    if isinstance(exc, WireCutOff):
        return UpstreamError(ErrorKind.CONNECTION, f"{provider}: response cut off")
    if isinstance(exc, WireDisconnected):
        return UpstreamError(ErrorKind.CONNECTION, f"{provider}: server disconnected")
    if isinstance(exc, WireCannotConnect):
        return UpstreamError(ErrorKind.CONNECTION, f"{provider}: cannot connect ({exc.os_error.__class__.__name__})")
    if isinstance(exc, WireMalformed):
        return UpstreamError(ErrorKind.BAD_RESPONSE, f"{provider}: malformed HTTP response ({exc})")
    if isinstance(exc, OSError):
        return UpstreamError(ErrorKind.CONNECTION, f"{provider}: connection error ({type(exc).__name__})")
    return UpstreamError(ErrorKind.CONNECTION, f"{provider}: {type(exc).__name__}")
