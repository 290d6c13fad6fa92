"""Telemetry: Prometheus metrics (``/metrics``) and OpenTelemetry traces, both derived from the ledger record.

- :mod:`tierwise.telemetry.config` — the ``telemetry:`` config section (imported by the config schema: keep this
  package's ``__init__`` free of heavy imports)
- :mod:`tierwise.telemetry.metrics` — request counters and histograms, fed once per ledger record
- :mod:`tierwise.telemetry.gauges` — cooldown, budget and ledger gauges, read at scrape time
- :mod:`tierwise.telemetry.multiproc` — ``serve --workers N``: one ``/metrics`` over every worker
- :mod:`tierwise.telemetry.tracing` — OpenTelemetry spans (the ``otel`` extra)
- :mod:`tierwise.telemetry.endpoint` — wiring into the service and the gateway, the ``/metrics`` handler
"""
