"""Canary: a sticky share of traffic is routed by the candidate policy; every routed request records its arm.

Assignment is a hash, not a coin: ``blake2b(name, key)`` mapped to [0, 1) and compared with the share, where the key
is the request's session (or its principal when it has none; ``sticky: principal``: always the principal). So a
caller stays in one arm for the canary's life, every replica assigns it the same way with nothing shared, and raising
the share only moves callers from control to canary, never back.

How promotion changes the running config: the share is state in the arms store (``tierwise canary promote`` sets it
to 1, ``rollback`` to 0, ``set-share`` to anything in [0, 1], each with an audit row). Every gateway re-reads it every
``canary.refresh_s`` seconds on a worker thread — never on the event loop — so a promotion or a rollback takes effect
on all replicas within that interval, with no restart and no config edit. ``promote --write-config`` additionally
rewrites the YAML with the candidate's tiers in place (atomically) so the next deploy makes it permanent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import TYPE_CHECKING

from tierwise.governance import Principal
from tierwise.rollout.arms_store import ArmsStore
from tierwise.rollout.candidate import CanaryConfig, arm_tag, candidate_config
from tierwise.routing.engine import RouteRequest, RoutingEngine

if TYPE_CHECKING:
    from tierwise.service import Predict, Tierwise

log = logging.getLogger("tierwise.canary")


def bucket(name: str, key: str) -> float:
    """Where ``key`` falls in [0, 1) for canary ``name`` (stable across processes and versions)."""
    h = hashlib.blake2b(f"{name}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


class CanaryRouter:
    """The candidate's engine (same code as the incumbent's) and the arm assignment for one ``canary:``."""

    def __init__(self, svc: Tierwise, ccfg: CanaryConfig, store: ArmsStore) -> None:
        from tierwise.service import _embedding_predictor, _models_of, load_routers

        self.ccfg, self.store = ccfg, store
        self.name = ccfg.name
        self.cfg = candidate_config(svc.cfg, ccfg.tiers)
        own = {t: r for t, r in load_routers(self.cfg).items() if t in ccfg.tiers}
        routers = {**{t: r for t, r in svc.engine.routers.items() if t not in ccfg.tiers}, **own}
        self.engine = RoutingEngine(self.cfg, svc.pins, svc.health, svc.engine.classifier, routers)
        keep = {t: p for t, p in svc._predictors.items() if t not in ccfg.tiers}
        self.predictors: dict[str, Predict] = {**keep, **{t: _embedding_predictor(r) for t, r in own.items()}}
        self.tier_models = {t: _models_of(self.cfg, t) for t in self.cfg.tiers}
        self.share = ccfg.share
        self.status = "running"
        state = store.canary_state(self.name)  # once, at start-up (not on a request's path)
        if state is not None:
            self.share, self.status = state.share, state.status
        self._refresher: asyncio.Task[None] | None = None
        self.refresh_errors = 0

    def in_canary(self, route: RouteRequest, principal: Principal) -> bool:
        """The arm of a request (True: canary). Cheap and synchronous; starts the share refresher on first use."""
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())
        share = self.share
        if share <= 0.0:
            return False
        if share >= 1.0:
            return True
        key = route.session_id if self.ccfg.sticky == "session" and route.session_id else f"p:{principal.name}"
        return bucket(self.name, key) < share

    def arm(self, canary: bool) -> str:
        return arm_tag(self.name, canary)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ccfg.refresh_s)
            try:
                state = await asyncio.to_thread(self.store.canary_state, self.name)
            except Exception as exc:  # keep the last share: a store outage must not flip traffic
                self.refresh_errors += 1
                log.warning("canary %s: share not refreshed: %s", self.name, exc)
                continue
            if state is not None and (state.share, state.status) != (self.share, self.status):
                log.info("canary %s: share %.4g -> %.4g (%s)", self.name, self.share, state.share, state.status)
                self.share, self.status = state.share, state.status

    async def aclose(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
