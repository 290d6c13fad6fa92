"""Shared routing state behind small interfaces.

In one process the memory implementations are right (and fastest). Replicas share state through implementations of
the same protocols backed by Redis (pins, cooldowns, budget reservations) — the engine never knows which it has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tierwise.state.memory import MemoryHealth, MemorySessionPins
from tierwise.state.protocols import HealthState, SessionPins

if TYPE_CHECKING:
    from tierwise.config.schema import TierwiseConfig
    from tierwise.state.backend import StateBackend


def build_state_backend(cfg: TierwiseConfig) -> StateBackend:
    """The configured state backend: this process's memory, or Redis shared by every replica (``state:``)."""
    if cfg.state.backend == "redis":
        from tierwise.state.redis_backend import RedisStateBackend

        assert cfg.state.url is not None  # the schema requires it
        return RedisStateBackend(cfg.state.url, prefix=cfg.state.prefix, on_unavailable=cfg.state.on_unavailable,
                                 pin_ttl_s=cfg.sessions.ttl_s, timeout_s=cfg.state.timeout_s)
    from tierwise.state.memory_backend import MemoryStateBackend

    return MemoryStateBackend()


__all__ = ["HealthState", "MemoryHealth", "MemorySessionPins", "SessionPins", "build_state_backend"]
