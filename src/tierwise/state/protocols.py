"""Interfaces for the state the routing engine reads and the executor updates."""

from __future__ import annotations

from typing import Protocol


class SessionPins(Protocol):
    """session id -> the model that first served it, with a TTL (keeps the provider's prefix cache warm)."""

    def get(self, session_id: str, now: float) -> str | None: ...

    def set(self, session_id: str, model: str, now: float) -> None: ...

    def delete(self, session_id: str) -> None: ...


class HealthState(Protocol):
    """Per-model failure streaks, cooldowns and observed time-to-first-token."""

    def cooling_down(self, model: str, now: float) -> bool: ...

    def record_success(self, model: str, ttft_ms: float | None, now: float) -> None: ...

    def record_failure(self, model: str, now: float) -> bool:
        """Count a failure; return True when this failure started a cooldown."""
        ...

    def ttft_ms(self, model: str) -> float | None: ...
