"""How a request fails, shared by the executor and the cascade (kept apart so neither imports the other for it)."""

from __future__ import annotations

from tierwise.types import Attempt, Completion, UpstreamError


class RequestFailed(Exception):
    """Every candidate failed; carries the last error (its kind decides the HTTP status)."""

    def __init__(self, last: UpstreamError, attempts: list[Attempt], deadline_hit: bool = False) -> None:
        super().__init__(last.message)
        self.last = last
        self.attempts = attempts
        self.deadline_hit = deadline_hit


def empty_length(c: Completion) -> bool:
    """An answer cut off at the token limit before any content or tool call: nothing to serve."""
    if c.finish_reason != "length" or c.text:
        return False
    choices = c.body.get("choices") or [{}]
    return not (choices[0].get("message") or {}).get("tool_calls")
