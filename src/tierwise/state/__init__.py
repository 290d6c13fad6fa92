"""Shared routing state behind small interfaces.

In one process the memory implementations are right (and fastest). Replicas share state through implementations of
the same protocols backed by Redis (pins, cooldowns, budget reservations) — the engine never knows which it has.
"""

from tierwise.state.memory import MemoryHealth, MemorySessionPins
from tierwise.state.protocols import HealthState, SessionPins

__all__ = ["HealthState", "MemoryHealth", "MemorySessionPins", "SessionPins"]
