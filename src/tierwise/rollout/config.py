"""Configuration of the rollout features (``rollout:`` in tierwise.yaml): where captures and feedback live, and
what the gateway captures.

Capture is off by default: prompts and answers are the most sensitive data a gateway sees, and tierwise's reports
work on tokens and costs without them. When it is on, every captured text passes the redaction patterns before it
is stored, and rows older than ``retention_days`` are purged by the gateway (hourly) and ``tierwise capture purge``.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Patterns redacted when ``capture.redact`` is not given: bearer tokens and API keys of the common providers,
#: e-mail addresses. A configured list replaces them (add them back explicitly to keep them).
DEFAULT_REDACT: tuple[str, ...] = (
    r"\bsk-[A-Za-z0-9_-]{16,}",
    r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
    r"\b(?i:bearer)\s+[A-Za-z0-9._~+/=-]{16,}",
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CaptureConfig(_Strict):
    """Prompt/answer capture for replay, sampling and trials."""

    enabled: bool = Field(default=False, description="capture prompts and answers (off: nothing is stored)")
    tiers: list[str] | None = Field(
        default=None, description="capture only requests routed to these tiers (unset: every tier)")
    sample_rate: float = Field(default=1.0, ge=0, le=1, description="share of eligible requests captured")
    tier_rates: dict[str, float] = Field(
        default_factory=dict, description="per-tier sample rate overriding sample_rate, e.g. {code: 0.2}")
    redact: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REDACT),
        description="regular expressions replaced by '[REDACTED]' in every captured string (default: API keys, "
                    "bearer tokens, e-mail addresses)")
    retention_days: float | None = Field(
        default=30.0, gt=0, description="captures older than this are purged (null: kept until purged by hand)")
    max_chars: int = Field(default=200_000, ge=1000, description="a longer prompt or answer is cut to this")
    queue_max: int = Field(default=10_000, ge=1, description="captures waiting to be written; beyond it, dropped "
                                                                  "(and counted): capture never slows serving")
    errors: bool = Field(default=False, description="also capture requests that failed (no answer)")

    @field_validator("redact")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"redaction pattern {p!r} is not a regular expression: {exc}") from None
            if re.match(r"\(\?[aiLmsux]+\)", p):
                raise ValueError(f"redaction pattern {p!r}: write a flag for its own pattern, e.g. '(?i:...)'")
        return patterns

    @field_validator("tier_rates")
    @classmethod
    def _rates(cls, rates: dict[str, float]) -> dict[str, float]:
        for tier, rate in rates.items():
            if not 0 <= rate <= 1:
                raise ValueError(f"tier_rates[{tier!r}] = {rate} is outside [0, 1]")
        return rates

    def rate_for(self, tier: str | None) -> float:
        """The sample rate of requests routed to ``tier`` (0 when the tier is not captured)."""
        if self.tiers is not None and tier not in self.tiers:
            return 0.0
        return self.tier_rates.get(tier or "", self.sample_rate)


class RolloutConfig(_Strict):
    """Where rollout data (captures, feedback) lives, and capture settings."""

    backend: Literal["auto", "sqlite", "postgres"] = Field(
        default="auto", description="auto: postgres when the ledger is, else an SQLite file beside the ledger")
    path: str | None = Field(
        default=None, description="sqlite: the file (default: the ledger's path with '.rollout.db')")
    capture: CaptureConfig = Field(default_factory=CaptureConfig)
