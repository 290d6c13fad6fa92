"""Wiring of ``shadow:`` and ``canary:`` into the service: one call at start-up, one at shutdown.

Nothing here runs, or is even imported, unless the config has a ``shadow:`` or ``canary:`` block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tierwise.rollout.canary import CanaryRouter
    from tierwise.rollout.shadow import ShadowRunner
    from tierwise.service import Tierwise


def attach_arms(svc: Tierwise) -> tuple[ShadowRunner | None, CanaryRouter | None]:
    """The shadow runner and canary router the config asks for (they share one arms store)."""
    cfg = svc.cfg
    if cfg.shadow is None and cfg.canary is None:
        return None, None
    from tierwise.rollout.arms_store import open_arms_store

    store = open_arms_store(cfg.ledger)
    svc.arms_store = store
    shadow = canary = None
    if cfg.shadow is not None:
        from tierwise.rollout.shadow import ShadowRunner

        shadow = ShadowRunner(svc, cfg.shadow, store)
    if cfg.canary is not None:
        from tierwise.rollout.canary import CanaryRouter

        canary = CanaryRouter(svc, cfg.canary, store)
    return shadow, canary


async def detach_arms(svc: Tierwise) -> None:
    """Stop the shadow (its calls are booked, its records written) and the canary refresher; close the store."""
    import asyncio

    if svc.shadow is not None:
        await svc.shadow.aclose()
    if svc.canary is not None:
        await svc.canary.aclose()
    store = getattr(svc, "arms_store", None)
    if store is not None:
        await asyncio.to_thread(store.close)
