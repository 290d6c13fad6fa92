"""The ``telemetry:`` section of ``tierwise.yaml``: Prometheus metrics and OpenTelemetry traces.

Kept apart from :mod:`tierwise.config.schema` (which holds one field pointing here) so the telemetry package owns
its knobs. Pydantic only: importing this never imports prometheus-client or OpenTelemetry.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Attribution = Literal["principal", "customer", "department", "project"]


class MetricsConfig(_Strict):
    """Prometheus ``/metrics`` (see :mod:`tierwise.telemetry.metrics`)."""

    enabled: bool = Field(default=True, description="serve /metrics and count every request")
    path: str = Field(default="/metrics", pattern=r"^/[A-Za-z0-9_./-]{0,100}$")
    listener: Literal["auto", "main", "admin"] = Field(
        default="auto",
        description="where /metrics is served: auto = the admin listener when the admin API has its own listener, "
                    "else the main one",
    )
    token_env: str | None = Field(
        default=None,
        description="env var holding a bearer token /metrics then requires (Prometheus 'authorization'); unset: on "
                    "the main listener of a gateway that takes API keys, /metrics answers loopback clients only",
    )
    attribution: list[Attribution] = Field(
        default_factory=list,
        description="also count requests and cost per principal/customer/department/project (each capped at "
                    "max_attribution_values; the rest are 'other')",
    )
    max_attribution_values: int = Field(default=50, ge=1, le=10_000)
    max_budget_scopes: int = Field(default=100, ge=0, le=10_000,
                                   description="budget scopes exposed as gauges at most (named caps first)")
    multiproc_dir: str | None = Field(
        default=None,
        description="serve --workers N: directory for the workers' shared metric files (emptied at start; default: "
                    "a temporary directory removed at exit)",
    )
    refresh_s: float = Field(default=1.0, gt=0, le=60,
                             description="serve --workers: how often each worker publishes its cooldown gauges")


class TracingConfig(_Strict):
    """OpenTelemetry spans, one per request (see :mod:`tierwise.telemetry.tracing`); needs the ``otel`` extra."""

    enabled: bool = False
    exporter: Literal["otlp", "console", "none"] = Field(
        default="otlp",
        description="otlp: OTLP/HTTP (endpoint from 'endpoint' or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT); console: "
                    "JSON to stdout; none: spans are made, not sent",
    )
    endpoint: str | None = Field(default=None, description="otlp: e.g. http://127.0.0.1:4318/v1/traces")
    service_name: str = Field(default="tierwise", min_length=1, max_length=200)
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0, description="share of requests traced")


class TelemetryConfig(_Strict):
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)

    @field_validator("metrics")
    @classmethod
    def _unique_attribution(cls, m: MetricsConfig) -> MetricsConfig:
        if len(set(m.attribution)) != len(m.attribution):
            raise ValueError("telemetry.metrics.attribution lists a dimension twice")
        return m
