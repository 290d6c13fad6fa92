"""The shared state a request touches, in two calls: one ``admit`` before the engine decides, one ``settle`` after.

Budgets and rate limits must hold across replicas, so they live in a shared store (Redis) when there is more than
one process — and a shared store is I/O. The engine stays pure and synchronous by getting everything it needs in
one prefetch per request: :meth:`StateBackend.admit` checks and consumes rate limits, reserves the request's
estimated cost against every budget that applies, and reads the budgets' consumption, in one atomic step (one
Redis round trip: a Lua script). :meth:`StateBackend.settle` replaces the reservation by the real cost; it never
blocks the request path (the memory backend applies it at once, a remote backend pipelines it).

Periods are UTC calendar days and months on the *backend's* clock (Redis ``TIME``), so replicas with skewed clocks
still share one day.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Cap:
    """A spend cap: ``scope`` is ``global``, ``key:<id>``, ``principal:<name>``, ``customer:<c>``,
    ``department:<d>`` or ``model:<m>``; either period may be unlimited (None)."""

    scope: str
    daily_usd: float | None = None
    monthly_usd: float | None = None


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Requests and tokens per minute for one scope (``key:<id>`` or ``principal:<name>``)."""

    scope: str
    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """A cap's consumption in its current periods: settled spend and reservations in flight, and the settled
    spend of each earlier day of this month (for the monthly projection)."""

    daily_spent: float = 0.0
    daily_reserved: float = 0.0
    monthly_spent: float = 0.0
    monthly_reserved: float = 0.0
    past_days: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class Admission:
    """What ``admit`` found and did. ``refused`` names the first limit that stopped the request (nothing was
    reserved or consumed then); otherwise ``reserved_usd`` is held until ``settle``."""

    now: float  # the backend's clock, unix seconds (periods and Retry-After are computed from it)
    usage: dict[str, Usage]  # by cap scope, as consumption stood *before* this request's reservation
    reserved_usd: float = 0.0
    refused: str | None = None  # e.g. "rate limit key:k1 rpm 60" or "budget customer:acme daily $10.00"
    retry_after_s: float | None = None
    pin: str | None = None  # shared backends: the session's model pin held by the backend
    cooling: dict[str, float] = field(default_factory=dict)  # shared backends: model -> cooldown end (backend clock)
    note: str | None = None  # admitted in a degraded way (e.g. the shared store was unreachable): for the ledger


@dataclass(slots=True)
class Settlement:
    request_id: str
    cost_usd: float  # what the request really cost (every rung and attempt billed)
    tokens: int  # prompt + completion tokens actually used (for tpm)
    models: dict[str, float] = field(default_factory=dict)  # cost per model (for model caps)
    session_id: str | None = None
    pin: str | None = None  # the session was (re-)pinned to this model during the request
    cooldowns: dict[str, float] = field(default_factory=dict)  # models put in cooldown -> for how many seconds


class StateBackend(Protocol):
    #: True when session pins and model cooldowns live in the backend (several replicas share them): then every
    #: request is admitted (to read them) and settled (to share what it changed). The memory backend keeps them
    #: in the process's own pin table and health state instead.
    shares_routing_state: bool

    async def admit(self, request_id: str, caps: Sequence[Cap], limits: Sequence[RateLimit], reserve_usd: float,
                    tokens: int, block_at: dict[str, float], ttl_s: float, session_id: str | None = None,
                    models: Sequence[str] = ()) -> Admission:
        """Atomically: check the rate limits (consume one request and ``tokens``), check every cap (refuse when
        settled + reserved spend of a period has reached ``block_at[scope]`` × its cap), and reserve
        ``reserve_usd`` against every cap for ``ttl_s`` (a reservation whose request never settles — its process
        died — expires then). Nothing is consumed or reserved when the request is refused."""
        ...

    def settle(self, s: Settlement) -> None:
        """Replace the request's reservation by its real cost; idempotent per request id. Never blocks."""
        ...

    async def read_usage(self, scopes: Sequence[str], *, past_days: bool = False) -> dict[str, Usage]:
        """Each scope's current consumption, reserving and counting nothing (metrics read it at scrape time, the
        dashboard's budget panel when it refreshes); with ``past_days`` the ``past_days`` of each usage are filled
        (the monthly projection needs them; a backend may fill them regardless)."""
        ...

    async def aclose(self) -> None: ...
