"""In-process implementations of the state protocols: plain dicts, no locks needed on one event loop.

The sync :class:`tierwise.Router` drives the same objects from its own loop thread, so they are never touched from
two threads at once.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


class MemorySessionPins:
    """LRU-bounded pin table; expired pins are dropped lazily on read."""

    def __init__(self, ttl_s: float, max_sessions: int = 100_000) -> None:
        self._ttl = ttl_s
        self._max = max_sessions
        self._pins: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, session_id: str, now: float) -> str | None:
        hit = self._pins.get(session_id)
        if hit is None:
            return None
        model, expires = hit
        if now >= expires:
            del self._pins[session_id]
            return None
        return model

    def set(self, session_id: str, model: str, now: float) -> None:
        self._pins[session_id] = (model, now + self._ttl)
        self._pins.move_to_end(session_id)
        while len(self._pins) > self._max:
            self._pins.popitem(last=False)

    def delete(self, session_id: str) -> None:
        self._pins.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._pins)


@dataclass(slots=True)
class _ModelHealth:
    failures: int = 0
    cooldown_until: float = 0.0
    ttft_ewma_ms: float | None = None


class MemoryHealth:
    """Consecutive-failure cooldowns and an exponentially weighted moving TTFT per model."""

    def __init__(self, cooldown_failures: int, cooldown_s: float, ttft_alpha: float = 0.2) -> None:
        self._threshold = cooldown_failures
        self._cooldown_s = cooldown_s
        self._alpha = ttft_alpha
        self._models: dict[str, _ModelHealth] = {}

    def _get(self, model: str) -> _ModelHealth:
        h = self._models.get(model)
        if h is None:
            h = self._models[model] = _ModelHealth()
        return h

    def cooling_down(self, model: str, now: float) -> bool:
        h = self._models.get(model)
        return h is not None and now < h.cooldown_until

    def record_success(self, model: str, ttft_ms: float | None, now: float) -> None:
        h = self._get(model)
        h.failures = 0
        h.cooldown_until = 0.0
        if ttft_ms is not None:
            h.ttft_ewma_ms = ttft_ms if h.ttft_ewma_ms is None else (
                self._alpha * ttft_ms + (1 - self._alpha) * h.ttft_ewma_ms
            )

    def record_failure(self, model: str, now: float) -> bool:
        h = self._get(model)
        h.failures += 1
        if h.failures >= self._threshold and now >= h.cooldown_until:
            h.cooldown_until = now + self._cooldown_s
            h.failures = 0
            return True
        return False

    def cool(self, model: str, until: float) -> None:
        """A cooldown another replica started (shared state): hold it here until ``until``."""
        h = self._get(model)
        h.cooldown_until = max(h.cooldown_until, until)

    def ttft_ms(self, model: str) -> float | None:
        h = self._models.get(model)
        return None if h is None else h.ttft_ewma_ms

    def snapshot(self, now: float) -> dict[str, dict[str, float | bool | None]]:
        """For /readyz and the dashboard."""
        return {
            m: {"cooling_down": now < h.cooldown_until, "failures": h.failures, "ttft_ewma_ms": h.ttft_ewma_ms}
            for m, h in self._models.items()
        }
