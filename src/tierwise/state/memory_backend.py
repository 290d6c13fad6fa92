"""Budgets and rate limits of one process: the zero-setup default (see :mod:`tierwise.state.backend`).

Exact for one process (a lock makes admit and settle atomic with respect to each other, the sync Router's thread
included); with several processes each would hold its own counters, which is what the Redis backend is for.
"""

from __future__ import annotations

import calendar
import heapq
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tierwise.state.backend import Admission, Cap, RateLimit, Settlement, Usage

_KEEP_DAYS = 40


def day_of(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


def month_of(now: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(now))


@dataclass(slots=True)
class _Reservation:
    amount: float
    scopes: tuple[str, ...]  # caps reserved against
    model_scopes: tuple[str, ...]  # model caps: charged at settle, never reserved
    rate_scopes: tuple[str, ...]
    tokens: int
    day: str
    month: str
    minute: int
    expires: float


class MemoryStateBackend:
    shares_routing_state = False  # pins and cooldowns stay in the process's own tables

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._spent: dict[tuple[str, str], float] = defaultdict(float)  # (scope, day or month) -> settled USD
        self._reserved: dict[tuple[str, str], float] = defaultdict(float)
        self._open: dict[str, _Reservation] = {}
        self._expiry: list[tuple[float, str]] = []  # heap of (expires, request id)
        self._requests: dict[tuple[str, int], int] = defaultdict(int)  # (scope, minute) -> requests
        self._tokens: dict[tuple[str, int], int] = defaultdict(int)
        self._days_seen: set[str] = set()
        self._past: tuple[str, tuple[str, ...]] = ("", ())  # (day, earlier days of its month seen): per day, not call
        self._period = (0.0, 0.0, "", "")  # (day start, day end, day, month): strftime once a day, not per call
        self._pruned_minute = 0

    async def admit(self, request_id: str, caps: Sequence[Cap], limits: Sequence[RateLimit], reserve_usd: float,
                    tokens: int, block_at: dict[str, float], ttl_s: float, session_id: str | None = None,
                    models: Sequence[str] = ()) -> Admission:
        with self._lock:
            now = self._clock()
            self._expire(now)
            day, month = self._periods(now)
            minute = int(now // 60)
            past = self._past_days(day, month)
            usage = {c.scope: self._usage(c.scope, day, month, past) for c in caps}
            refused, retry = self._check_rates(limits, tokens, now, minute)
            if refused is None:
                refused, retry = _check_caps(caps, usage, block_at, now)
            if refused is not None:
                return Admission(now, usage, 0.0, refused, retry)
            reserved = tuple(c.scope for c in caps if not c.scope.startswith("model:"))
            for scope in reserved:
                self._reserved[(scope, day)] += reserve_usd
                self._reserved[(scope, month)] += reserve_usd
            for lim in limits:
                self._requests[(lim.scope, minute)] += 1
                self._tokens[(lim.scope, minute)] += tokens
            self._open[request_id] = _Reservation(
                reserve_usd, reserved, tuple(c.scope for c in caps if c.scope.startswith("model:")),
                tuple(lim.scope for lim in limits), tokens, day, month, minute, now + ttl_s)
            heapq.heappush(self._expiry, (now + ttl_s, request_id))
            return Admission(now, usage, reserve_usd)

    def settle(self, s: Settlement) -> None:
        with self._lock:
            res = self._open.pop(s.request_id, None)
            if res is None:
                return  # settled already (a retry of settle) or expired: never charge twice
            self._release(res)
            for scope in res.scopes:
                self._spent[(scope, res.day)] += s.cost_usd
                self._spent[(scope, res.month)] += s.cost_usd
            for scope in res.model_scopes:
                cost = s.models.get(scope[len("model:"):], 0.0)
                self._spent[(scope, res.day)] += cost
                self._spent[(scope, res.month)] += cost
            for scope in res.rate_scopes:  # tpm: the estimate taken at admission, corrected to what was used
                self._tokens[(scope, res.minute)] += s.tokens - res.tokens
            if res.day not in self._days_seen:
                self._days_seen.add(res.day)
                self._past = ("", ())  # recomputed on the next admit

    async def read_usage(self, scopes: Sequence[str], *, past_days: bool = False) -> dict[str, Usage]:
        """Each scope's consumption in the current day and month, reserving nothing (metrics at scrape time, the
        dashboard); this month's past days are always there (they cost nothing to read here)."""
        with self._lock:
            now = self._clock()
            day, month = self._periods(now)
            past = self._past_days(day, month)
            return {s: self._usage(s, day, month, past) for s in scopes}

    async def aclose(self) -> None:
        pass

    # -- internals (lock held) -----------------------------------------------------------------------------------

    def _periods(self, now: float) -> tuple[str, str]:
        start, end, day, month = self._period
        if not start <= now < end:
            start = now - now % 86400
            day, month = day_of(now), month_of(now)
            self._period = (start, start + 86400, day, month)
        return day, month

    def _past_days(self, day: str, month: str) -> tuple[str, ...]:
        """The earlier days of ``day``'s month that have settled spend, oldest first (for the monthly projection)."""
        if self._past[0] != day:
            self._past = (day, tuple(sorted(d for d in self._days_seen if d.startswith(month) and d < day)))
        return self._past[1]

    def _usage(self, scope: str, day: str, month: str, past_days: tuple[str, ...]) -> Usage:
        spent, reserved = self._spent, self._reserved
        past = tuple(spent.get((scope, d), 0.0) for d in past_days) if past_days else ()
        return Usage(spent.get((scope, day), 0.0), reserved.get((scope, day), 0.0),
                     spent.get((scope, month), 0.0), reserved.get((scope, month), 0.0), past)

    def _check_rates(self, limits: Sequence[RateLimit], tokens: int, now: float,
                     minute: int) -> tuple[str | None, float | None]:
        into = now / 60 - minute  # fraction of the current minute gone: the previous one weighs the rest
        for lim in limits:
            for cap, counts, need, unit in ((lim.rpm, self._requests, 1, "requests"),
                                            (lim.tpm, self._tokens, tokens, "tokens")):
                if cap is None:
                    continue
                used = counts.get((lim.scope, minute - 1), 0) * (1 - into) + counts.get((lim.scope, minute), 0)
                if used + need > cap:
                    return f"rate limit {lim.scope}: {cap} {unit} per minute", max(1.0, 60 * (1 - into))
        return None, None

    def _release(self, res: _Reservation) -> None:
        for scope in res.scopes:
            self._reserved[(scope, res.day)] -= res.amount
            self._reserved[(scope, res.month)] -= res.amount

    def _expire(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, rid = heapq.heappop(self._expiry)
            res = self._open.get(rid)
            if res is not None and res.expires <= now:
                del self._open[rid]
                self._release(res)
        minute = int(now // 60)
        if minute == self._pruned_minute:
            return
        self._pruned_minute = minute  # once a minute: drop rate windows and days no check reads any more
        for counts in (self._requests, self._tokens):
            for key in [k for k in counts if k[1] < minute - 1]:
                del counts[key]
        old_day, old_month = day_of(now - _KEEP_DAYS * 86400), month_of(now - _KEEP_DAYS * 86400)
        self._days_seen = {d for d in self._days_seen if d >= old_day}
        self._past = ("", ())
        for usd in (self._spent, self._reserved):
            for period in [k for k in usd if k[1] < (old_day if len(k[1]) == 10 else old_month)]:
                del usd[period]


def _check_caps(caps: Sequence[Cap], usage: dict[str, Usage], block_at: dict[str, float],
                now: float) -> tuple[str | None, float | None]:
    """The first cap whose consumption has reached its blocking level, with seconds to its next reset."""
    for cap in caps:
        if cap.scope.startswith("model:"):
            continue  # a model at its cap leaves the allowed set (the caller grades that); it blocks nothing
        u, level = usage[cap.scope], block_at.get(cap.scope, 1.0)
        if cap.daily_usd is not None and u.daily_spent + u.daily_reserved >= cap.daily_usd * level:
            return f"budget {cap.scope} daily ${cap.daily_usd:g}", seconds_to_next_day(now)
        if cap.monthly_usd is not None and u.monthly_spent + u.monthly_reserved >= cap.monthly_usd * level:
            return f"budget {cap.scope} monthly ${cap.monthly_usd:g}", seconds_to_next_month(now)
    return None, None


def seconds_to_next_day(now: float) -> float:
    return 86400 - now % 86400


def seconds_to_next_month(now: float) -> float:
    t = time.gmtime(now)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0)) - now
