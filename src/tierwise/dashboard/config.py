"""The ``dashboard:`` section of ``tierwise.yaml`` (see :mod:`tierwise.dashboard`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DashboardConfig(BaseModel):
    """Where and how often the live cost dashboard refreshes; who may open it follows from ``admin:`` and the keys
    (see :mod:`tierwise.dashboard.web`)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="serve /dashboard (admin listener, or loopback on an open gateway)")
    live_refresh_ms: int = Field(default=1000, ge=250, le=60_000,
                                 description="how often the page polls the latest requests (new ones show within it)")
    summary_refresh_ms: int = Field(default=5000, ge=1000, le=600_000,
                                    description="how often the page re-reads the aggregates (one SQL pass each)")
    cache_ms: int = Field(default=1000, ge=0, le=60_000,
                          description="identical summary queries within this time share one answer (many open tabs "
                                      "cost one query)")
    max_window_days: int = Field(default=400, ge=1, le=3660, description="longest time window a query may ask for")
    flagship: str | None = Field(default=None, description="the model savings are measured against; default: the "
                                 "configured model with the highest input + output price")
    query_threads: int = Field(default=2, ge=1, le=8, description="threads running dashboard SQL (off the event loop)")
