"""Errors as the client sees them: OpenAI's error shape, a precise message, never a stack trace."""

from __future__ import annotations

from tierwise.providers.errors import client_detail
from tierwise.types import JSON, ErrorKind, UpstreamError


class APIError(Exception):
    """An error with its HTTP status and OpenAI ``error`` object fields."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
        param: str | None = None, attempts: list[JSON] | None = None, headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.attempts = attempts
        self.headers = headers  # response headers the answer must carry (e.g. Retry-After on a 429)

    def body(self) -> JSON:
        err: JSON = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        if self.attempts is not None:
            err["attempts"] = self.attempts
        return {"error": err}


def invalid(message: str, param: str | None = None, code: str = "invalid_request") -> APIError:
    return APIError(400, message, param=param, code=code)


_KIND_STATUS = {
    ErrorKind.RATE_LIMIT: (429, "rate_limit_error", "upstream_rate_limited"),
    ErrorKind.TIMEOUT: (504, "upstream_error", "upstream_timeout"),
    ErrorKind.SERVER: (502, "upstream_error", "upstream_server_error"),
    ErrorKind.CONNECTION: (502, "upstream_error", "upstream_unreachable"),
    ErrorKind.BAD_RESPONSE: (502, "upstream_error", "upstream_bad_response"),
    ErrorKind.AUTH: (502, "upstream_error", "upstream_auth_failed"),
    ErrorKind.NOT_FOUND: (502, "upstream_error", "upstream_model_not_found"),
    ErrorKind.EMPTY_LENGTH: (502, "upstream_error", "empty_completion_length"),
}

_WHY = {
    ErrorKind.AUTH: "the upstream refused tierwise's credentials or account (a gateway configuration problem, not "
                    "your request)",
    ErrorKind.NOT_FOUND: "the upstream does not know the configured model or endpoint (a gateway configuration "
                         "problem, not your request)",
}


def _failed_model(last: UpstreamError, attempts: list[JSON]) -> str | None:
    """The model whose failure ``last`` is: the latest attempt booked with its kind."""
    return next((a["model"] for a in reversed(attempts) if a.get("outcome") == last.kind.value), None)


def from_upstream(last: UpstreamError, attempts: list[JSON], deadline_hit: bool = False) -> APIError:
    """Map the last upstream failure to what the client gets; the attempts list says what was tried.

    Every message is tierwise's own sentence around ``last.message``, which the adapters write without upstream
    text (provider, HTTP status, identifier ``type``/``code``: see :mod:`tierwise.providers.errors`). The one
    exception is a request the upstream rejected as the caller's fault (:attr:`ErrorKind.CLIENT`): the caller needs
    to know what to fix, so the upstream's ``param`` and its message are added when
    :func:`~tierwise.providers.errors.client_detail`'s strict filter lets them through."""
    tried = "; ".join(f"{a['model']}: {a['outcome']}" + (f" ({a['status']})" if a.get("status") else "")
                      for a in attempts) or "none"
    model = _failed_model(last, attempts)
    where = f"model '{model}', {last.message}" if model else last.message
    if last.kind is ErrorKind.CLIENT:
        status = last.status if last.status and 400 <= last.status < 500 else 400
        detail, param = client_detail(last.body)
        msg = f"upstream rejected the request ({where})" + (f": {detail}" if detail else "")
        return APIError(status, msg, code="upstream_invalid_request", param=param, attempts=attempts)
    if deadline_hit:
        return APIError(504, f"{last.message}; attempts: {tried}", type="upstream_error", code="deadline_exceeded",
                        attempts=attempts)
    status, type_, code = _KIND_STATUS[last.kind]
    if last.kind is ErrorKind.EMPTY_LENGTH:
        msg = last.message
    elif last.kind in _WHY:
        msg = f"{_WHY[last.kind]}: {where}; attempts: {tried}"
    else:
        msg = f"all upstream attempts failed; last: {where}; attempts: {tried}"
    return APIError(status, msg, type=type_, code=code, attempts=attempts)
