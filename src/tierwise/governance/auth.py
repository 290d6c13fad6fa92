"""The hot-path authenticator: a presented API key → a frozen :class:`~tierwise.governance.Principal`.

The gateway never does store I/O on the event loop. Each gateway keeps an in-memory map ``SHA-256(key) → (key,
principal)`` of every live key, loaded at start and refreshed by a background thread every
``governance.refresh_s`` (2 s by default). The refresh first reads the store's generation counter (one tiny query)
and reloads the map only when something changed. So a revoke, a rotation or a principal change made on another
replica (or by the CLI) takes effect here within ``refresh_s``; one made through this process's own admin API takes
effect at once (:meth:`Authenticator.forget_key`, :meth:`Authenticator.poke`).

Per request: hash the presented key (~1 µs) and look it up in the map; check expiry (a rotated key's grace
period), revocation and the principal's ``disabled`` switch. A key that is not in the map (created since the last
refresh, or bad) costs at most one store lookup, run through ``asyncio.to_thread``; then:

- anything not shaped like a tierwise key (``tw-`` + 43 base64url characters) is refused without a lookup;
- concurrent requests with the same missing key share one lookup;
- a key found unknown, revoked or expired is remembered for ``governance.negative_cache_s`` (5 s), so retrying it
  costs no lookup (the cache is bounded);
- lookups are rate-limited (``governance.max_lookups_per_s``, token bucket): beyond that, a missing key is refused
  from the map alone until the next refresh. A flood of distinct random keys therefore costs the store at most that
  many queries per second, never one per request.

If the store cannot be reached for a lookup, the request gets 503 (``auth_unavailable``): the key may be real, so
"invalid key" would be a lie. A refresh that fails keeps the last map and is retried (logged once per outage).

**A key revoked while one of its requests is in flight** (a long stream, say): the key is checked once, when the
request arrives, so that request runs to its end and is booked as usual; the next request with the key is refused
401 (within ``refresh_s`` when the revoke happened on another replica). Cutting a stream mid-way would still leave
the spent tokens to pay for and the client with a broken answer.

No key, hash or prompt is logged: failures name the key id at most.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tierwise.governance.keys import hash_key, looks_like_key
from tierwise.governance.principal import Principal
from tierwise.governance.store import GovernanceStore, KeyRecord, PrincipalRecord

log = logging.getLogger("tierwise.governance")


class AuthFailure(Exception):
    """The key does not authenticate; ``reason``: unknown, revoked, expired or disabled."""

    MESSAGES = {
        "unknown": "invalid API key",
        "revoked": "this API key has been revoked",
        "expired": "this API key has expired (rotated keys stay valid only for their grace period)",
        "disabled": "this API key's principal is disabled",
    }

    def __init__(self, reason: str) -> None:
        super().__init__(self.MESSAGES.get(reason, "invalid API key"))
        self.reason = reason


class AuthUnavailable(Exception):
    """The key is not in memory and the store cannot be asked right now."""


def _narrow(principal: tuple[str, ...] | None, key: tuple[str, ...] | None) -> frozenset[str] | None:
    if principal is None:
        return None if key is None else frozenset(key)
    return frozenset(principal) if key is None else frozenset(principal) & frozenset(key)


def _cap(key: float | None, principal: float | None) -> float | None:
    if key is None:
        return principal
    return key if principal is None else min(key, principal)


def _cap_int(key: int | None, principal: int | None) -> int | None:
    if key is None:
        return principal
    return key if principal is None else min(key, principal)


def resolve(key: KeyRecord, p: PrincipalRecord) -> Principal:
    """The principal a request with ``key`` runs as: allow lists intersected with the key's; the principal's
    budgets and rate limits (shared by all its keys) plus the key's own, each never above the principal's."""
    return Principal(
        name=p.name, key_id=key.id, customer=p.customer, department=p.department, project=p.project,
        value_tier=p.value_tier,
        allowed_tiers=_narrow(p.allowed_tiers, key.allowed_tiers),
        allowed_models=_narrow(p.allowed_models, key.allowed_models),
        revenue_per_request_usd=p.revenue_per_request_usd,
        daily_budget_usd=p.daily_budget_usd, monthly_budget_usd=p.monthly_budget_usd, rpm=p.rpm, tpm=p.tpm,
        key_daily_budget_usd=_cap(key.daily_budget_usd, p.daily_budget_usd) if key.daily_budget_usd else None,
        key_monthly_budget_usd=_cap(key.monthly_budget_usd, p.monthly_budget_usd) if key.monthly_budget_usd else None,
        key_rpm=_cap_int(key.rpm, p.rpm) if key.rpm else None,
        key_tpm=_cap_int(key.tpm, p.tpm) if key.tpm else None,
    )


@dataclass(frozen=True, slots=True)
class _Entry:
    key: KeyRecord
    disabled: bool
    principal: Principal

    @classmethod
    def of(cls, key: KeyRecord, p: PrincipalRecord) -> _Entry:
        return cls(key, p.disabled, resolve(key, p))

    def refusal(self, now: float) -> str | None:
        if self.key.revoked_at is not None:
            return "revoked"
        if self.key.expires_at is not None and self.key.expires_at <= now:
            return "expired"
        if self.disabled:
            return "disabled"
        return None


class Authenticator:
    """See the module docstring. :meth:`start` and :meth:`close` block (run them in a thread);
    :meth:`authenticate` runs on the event loop and never blocks it."""

    def __init__(self, open_store: Callable[[], GovernanceStore], *, refresh_s: float = 2.0,
                 negative_cache_s: float = 5.0, max_lookups_per_s: float = 50.0, max_negative: int = 100_000) -> None:
        self._open_store = open_store
        self.store: GovernanceStore | None = None
        self.refresh_s = refresh_s
        self.negative_cache_s = negative_cache_s
        self.max_lookups_per_s = max_lookups_per_s
        self.max_negative = max_negative
        self._by_hash: dict[str, _Entry] = {}
        self._generation: int | None = None
        self._negative: dict[str, tuple[float, str]] = {}  # hash -> (monotonic deadline, reason); loop only
        self._inflight: dict[str, asyncio.Future[_Entry | None]] = {}
        self._tokens = max(1.0, max_lookups_per_s)
        self._tokens_at = time.monotonic()
        self._dropped: set[str] = set()  # key ids revoked through this process: never valid again
        self._dropped_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.lookups = 0  # store lookups made for keys missing from the map
        self.reloads = 0  # full reloads of the map

    @classmethod
    def from_config(cls, cfg: object) -> Authenticator:
        from tierwise.config.schema import TierwiseConfig
        from tierwise.governance.store import open_governance_store

        assert isinstance(cfg, TierwiseConfig)
        g = cfg.governance
        return cls(lambda: open_governance_store(cfg), refresh_s=g.refresh_s, negative_cache_s=g.negative_cache_s,
                   max_lookups_per_s=g.max_lookups_per_s)

    # -- life cycle (blocking: call from a thread) ------------------------------------------------------------

    def start(self) -> None:
        """Open the store, load every live key, start the refresh thread. Raises
        :class:`~tierwise.governance.store.GovernanceStoreError` when the store cannot be read."""
        self.store = self._open_store()
        try:
            self._reload()
        except BaseException:
            self.store.close()
            self.store = None
            raise
        self._thread = threading.Thread(target=self._refresh_loop, name="tierwise-keys-refresh", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self.store is not None:
            self.store.close()
            self.store = None

    # -- the refresh thread -----------------------------------------------------------------------------------

    def _reload(self) -> None:
        assert self.store is not None
        gen, pairs = self.store.snapshot()
        with self._dropped_lock:
            dropped = frozenset(self._dropped)
        by_hash = {k.hash: _Entry.of(k, p) for k, p in pairs if k.id not in dropped}
        self._by_hash = by_hash  # one reference swap: the event loop sees the old map or the new one, whole
        self._generation = gen
        self.reloads += 1

    def refresh(self) -> None:
        """Reload the map if the store changed since the last load (blocking)."""
        assert self.store is not None
        if self.store.generation() != self._generation:
            self._reload()

    def _refresh_loop(self) -> None:
        failing = False
        while True:
            self._wake.wait(self.refresh_s)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self.refresh()
            except Exception as exc:
                if not failing:
                    log.warning("cannot refresh API keys from the governance store (%s); keeping the %d key(s) "
                                "loaded, retrying every %gs", exc, len(self._by_hash), self.refresh_s)
                failing = True
                continue
            if failing:
                log.warning("governance store reachable again: API keys refreshed (%d live)", len(self._by_hash))
                failing = False

    def poke(self) -> None:
        """Refresh now (after a change made through this process), not at the next tick."""
        self._wake.set()

    def forget_key(self, key_id: str) -> None:
        """Drop a key revoked through this process at once (event loop), then refresh."""
        with self._dropped_lock:
            if len(self._dropped) >= 100_000:
                self._dropped.clear()  # by now the store's snapshots have long stopped listing them
            self._dropped.add(key_id)
        self._by_hash = {h: e for h, e in self._by_hash.items() if e.key.id != key_id}
        self.poke()

    @property
    def live_keys(self) -> int:
        return len(self._by_hash)

    # -- the hot path (event loop) ----------------------------------------------------------------------------

    async def authenticate(self, token: str) -> Principal:
        """The principal ``token`` runs as; raises :class:`AuthFailure` (401) or :class:`AuthUnavailable` (503)."""
        digest = hash_key(token)
        entry = self._by_hash.get(digest)
        if entry is not None:
            reason = entry.refusal(time.time())
            if reason is not None:
                raise AuthFailure(reason)
            return entry.principal
        now = time.monotonic()
        cached = self._negative.get(digest)
        if cached is not None:
            if cached[0] > now:
                raise AuthFailure(cached[1])
            del self._negative[digest]
        if not looks_like_key(token):
            raise AuthFailure("unknown")  # cannot be a key: no lookup, nothing cached
        fut = self._inflight.get(digest)
        if fut is None:
            if not self._take_token(now):
                raise AuthFailure("unknown")  # lookup budget spent: the map alone answers until the next refresh
            fut = asyncio.ensure_future(asyncio.to_thread(self._lookup, digest))
            self._inflight[digest] = fut
            fut.add_done_callback(self._done(digest))
        try:
            found = await asyncio.shield(fut)  # one client hanging up must not fail the others waiting on it
        except AuthFailure:
            raise
        except Exception as exc:
            raise AuthUnavailable(str(exc)) from None
        if found is None:
            self._remember(digest, "unknown")
            raise AuthFailure("unknown")
        reason = found.refusal(time.time())
        if reason is not None:
            self._remember(digest, reason)
            raise AuthFailure(reason)
        if digest not in self._by_hash:
            with self._dropped_lock:
                dropped = found.key.id in self._dropped
            if dropped:
                raise AuthFailure("revoked")
            self._by_hash[digest] = found
        return found.principal

    def _done(self, digest: str) -> Callable[[object], None]:
        def done(_: object) -> None:
            self._inflight.pop(digest, None)

        return done

    def _lookup(self, digest: str) -> _Entry | None:
        store = self.store
        if store is None:
            raise AuthUnavailable("the governance store is closed")
        self.lookups += 1
        got = store.lookup(digest)
        return None if got is None else _Entry.of(*got)

    def _take_token(self, now: float) -> bool:
        rate = self.max_lookups_per_s
        self._tokens = min(max(1.0, rate), self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _remember(self, digest: str, reason: str) -> None:
        if self.negative_cache_s <= 0:
            return
        now = time.monotonic()
        if len(self._negative) >= self.max_negative:
            self._negative = {h: v for h, v in self._negative.items() if v[0] > now}
            if len(self._negative) >= self.max_negative:
                self._negative = {}
        self._negative[digest] = (now + self.negative_cache_s, reason)
