"""What a dashboard request asks for: the time window and the filters, validated before any SQL runs.

Every refusal names its parameter (``param`` of the OpenAI error shape), so the page can say which control is wrong:
unknown parameters, windows that are not ``<number><s|m|h|d>`` or fall outside 1 minute .. ``max_window_days``, a
tier the configuration does not have, an empty or overlong principal. Buckets of the spend-over-time chart get a
"round" width (10 s .. 1 day) chosen so that a window has at most ~:data:`MAX_BUCKETS` of them.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from tierwise.sanitize import clean_text

#: Query parameters each endpoint accepts.
SUMMARY_PARAMS = frozenset({"window", "tier", "principal"})
RECENT_PARAMS = frozenset({"window", "tier", "principal", "limit"})

_WINDOW = re.compile(r"^([0-9]{1,6})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MIN_WINDOW_S = 60
DEFAULT_WINDOW = "1h"
MAX_BUCKETS = 90
_STEPS = (10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400)
MAX_PRINCIPAL_CHARS = 200
MAX_RECENT = 200


class DashboardInputError(ValueError):
    """A dashboard request that cannot be answered as asked: a 400 naming ``param``."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_filter") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class DashboardQuery:
    """Rows with ``since <= ts < until`` (``until`` is "now" when the query was parsed), optionally of one tier and
    one principal; ``step`` is the width of a time bucket in seconds."""

    window: str
    since: float
    until: float
    step: int
    tier: str | None = None
    principal: str | None = None

    @property
    def key(self) -> tuple[str, str | None, str | None]:
        """What identical queries share (their answer is cached for ``dashboard.cache_ms``)."""
        return self.window, self.tier, self.principal

    def filters(self) -> dict[str, str | None]:
        return {"window": self.window, "tier": self.tier, "principal": self.principal}


def parse_window(text: str, max_days: int) -> int:
    """``15m`` -> 900 seconds; a clear :class:`DashboardInputError` for anything else."""
    m = _WINDOW.match(text.strip())
    if not m:
        raise DashboardInputError(f"window: {text[:40]!r} is not a duration like 15m, 6h or 7d", "window")
    seconds = int(m.group(1)) * _UNIT_S[m.group(2)]
    if seconds < MIN_WINDOW_S:
        raise DashboardInputError("window: shorter than one minute", "window")
    if seconds > max_days * 86400:
        raise DashboardInputError(f"window: longer than {max_days} days (dashboard.max_window_days)", "window")
    return seconds


def bucket_step(window_s: int) -> int:
    """The smallest round bucket width giving at most :data:`MAX_BUCKETS` buckets over the window."""
    for step in _STEPS:
        if window_s / step <= MAX_BUCKETS:
            return step
    return int(math.ceil(window_s / MAX_BUCKETS / 86400)) * 86400


def _single(params: Mapping[str, str], allowed: Collection[str], multi: Mapping[str, int]) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise DashboardInputError(
            f"{unknown[0][:40]}: unknown filter (use {', '.join(sorted(allowed))})", unknown[0][:40],
            code="unknown_filter")
    for name, count in multi.items():
        if count > 1:
            raise DashboardInputError(f"{name}: given {count} times", name)


def parse_query(params: Mapping[str, str], *, tiers: Collection[str], max_days: int,
                allowed: Collection[str] = SUMMARY_PARAMS, counts: Mapping[str, int] | None = None,
                now: float | None = None) -> DashboardQuery:
    """Validate the query string of a dashboard API call (``counts``: how often each name occurs)."""
    _single(params, allowed, counts or {})
    window = (params.get("window") or DEFAULT_WINDOW).strip()
    seconds = parse_window(window, max_days)
    tier = params.get("tier") or None
    if tier is not None and tier not in tiers:
        shown = clean_text(tier, 60)
        raise DashboardInputError(f"tier: unknown tier {shown!r} (configured: {', '.join(sorted(tiers))})", "tier")
    principal = params.get("principal")
    if principal is not None:
        if not principal.strip():
            principal = None
        elif len(principal) > MAX_PRINCIPAL_CHARS:
            raise DashboardInputError(f"principal: longer than {MAX_PRINCIPAL_CHARS} characters", "principal")
        elif clean_text(principal, MAX_PRINCIPAL_CHARS) != principal:
            raise DashboardInputError("principal: contains control or undecodable characters", "principal")
    until = time.time() if now is None else now
    return DashboardQuery(window, until - seconds, until, bucket_step(seconds), tier, principal)


def parse_limit(params: Mapping[str, str], default: int = 25) -> int:
    raw = params.get("limit")
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_RECENT:
        raise DashboardInputError(f"limit: must be a whole number from 1 to {MAX_RECENT}", "limit")
    return int(raw)
