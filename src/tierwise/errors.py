"""Errors as the client sees them: OpenAI's error shape, a precise message, never a stack trace."""

from __future__ import annotations

from tierwise.types import JSON, ErrorKind, UpstreamError


class APIError(Exception):
    """An error with its HTTP status and OpenAI ``error`` object fields."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
        param: str | None = None, attempts: list[JSON] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.attempts = attempts

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
    ErrorKind.EMPTY_LENGTH: (502, "upstream_error", "empty_completion_length"),
}


def from_upstream(last: UpstreamError, attempts: list[JSON], deadline_hit: bool = False) -> APIError:
    """Map the last upstream failure to what the client gets; the attempts list says what was tried."""
    tried = "; ".join(f"{a['model']}: {a['outcome']}" + (f" ({a['status']})" if a.get("status") else "")
                      for a in attempts) or "none"
    if last.kind is ErrorKind.CLIENT:
        status = last.status if last.status and 400 <= last.status < 500 else 400
        return APIError(status, f"upstream rejected the request: {last.message}", code="upstream_invalid_request",
                        attempts=attempts)
    if deadline_hit:
        return APIError(504, f"{last.message}; attempts: {tried}", type="upstream_error", code="deadline_exceeded",
                        attempts=attempts)
    status, type_, code = _KIND_STATUS[last.kind]
    if last.kind is ErrorKind.EMPTY_LENGTH:
        msg = last.message
    else:
        msg = f"all upstream attempts failed; last: {last.message}; attempts: {tried}"
    return APIError(status, msg, type=type_, code=code, attempts=attempts)
