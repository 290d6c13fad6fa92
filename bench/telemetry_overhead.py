"""CPU per request of the telemetry hook: RequestMetrics.observe (Prometheus) and Tracing.observe (OpenTelemetry
span tree, exporter none and in-memory), timed in-process on realistic ledger records.

    python bench/telemetry_overhead.py [--n 20000]

The gateway calls the observers once per request right after the ledger submit; this measures exactly that call
(process CPU time, one thread), which is less sensitive to the machine's other load than an end-to-end run. Writes
``bench/results/telemetry_overhead.md`` with the machine and its load average.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tierwise.config import load_config_text
from tierwise.telemetry.config import MetricsConfig, TracingConfig
from tierwise.telemetry.metrics import RequestMetrics
from tierwise.types import Attempt, Cost, LedgerRecord, Usage

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter

REPO = Path(__file__).resolve().parent.parent
CONFIG = """
providers: {mock: {format: openai, base_url: "http://127.0.0.1:9/v1", api_key: k}}
models:
  small: {provider: mock, price: {input: 0.1, output: 0.4}}
  large: {provider: mock, price: {input: 2.5, output: 10}}
tiers:
  chat: {models: [large, small]}
  casc: {policy: cascade, cascade: {rungs: [{model: small, gate: {kind: logprob, threshold: 0.7}}, {model: large}]}}
default_tier: chat
fallback_model: small
"""


def records(n: int) -> list[LedgerRecord]:
    """A mix like the overhead bench's traffic plus some cascades and streams: 1 of 10 escalates, 1 of 4 streams."""
    out = []
    for i in range(n):
        u = Usage(input_tokens=190, output_tokens=195, cache_read_tokens=64 if i % 3 == 0 else 0)
        rec = LedgerRecord(id=f"chatcmpl-tw-{i:012x}", ts=time.time(), tier="chat", tier_source="auto-default",
                           requested_model="auto", model="large", usage=u, cost=Cost(input_usd=4.7e-4, output_usd=1.9e-3),
                           latency_ms=1.2, stream=i % 4 == 0, ttft_ms=0.8 if i % 4 == 0 else None)
        rec.attempts.append(Attempt("large", "ok", 200, None, 1.0, 0, u, rec.cost.total_usd))
        if i % 10 == 0:
            rec.tier, rec.escalations = "casc", 1
            rec.attempts.insert(0, Attempt("small", "escalated", 200, None, 0.5, 0, u, 1e-4, confidence=0.4))
        out.append(rec)
    return out


def _null_exporter() -> SpanExporter:
    """A SpanExporter that drops what it is given (the batch processor's own cost, no serialisation)."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Null(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    return Null()


def cpu_us(fn: Callable[[LedgerRecord], None], recs: list[LedgerRecord]) -> float:
    for r in recs[:500]:  # warm the label caches, as a running gateway has them
        fn(r)
    t = time.process_time()
    for r in recs:
        fn(r)
    return (time.process_time() - t) / len(recs) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "telemetry_overhead.md")
    args = ap.parse_args()
    from prometheus_client import CollectorRegistry

    cfg = load_config_text(CONFIG, env={})
    recs = records(args.n)
    load_before = os.getloadavg()
    rows: list[tuple[str, float]] = []
    rows.append(("metrics (RequestMetrics.observe)",
                 cpu_us(RequestMetrics(MetricsConfig(), cfg.tiers, cfg.models, CollectorRegistry()).observe, recs)))
    attributed = RequestMetrics(MetricsConfig(attribution=["principal", "customer"]), cfg.tiers, cfg.models,
                                CollectorRegistry())
    rows.append(("metrics + attribution [principal, customer]", cpu_us(attributed.observe, recs)))
    try:
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from tierwise.telemetry.tracing import Tracing
    except ImportError:
        print("opentelemetry not installed (pip install 'tierwise[otel]'): tracing rows skipped")
    else:
        rows.append(("tracing, exporter none (spans made and ended)",
                     cpu_us(Tracing(TracingConfig(enabled=True, exporter="none"), cfg).observe, recs)))
        tr = Tracing(TracingConfig(enabled=True, exporter="none"), cfg)
        tr.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        rows.append(("tracing, in-memory exporter (SimpleSpanProcessor)", cpu_us(tr.observe, recs)))
        tr = Tracing(TracingConfig(enabled=True, exporter="none"), cfg, exporter=_null_exporter())
        rows.append(("tracing, BatchSpanProcessor to an exporter that drops the batch (queueing + export thread)",
                     cpu_us(tr.observe, recs)))
        tr.shutdown()
    load_after = os.getloadavg()
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    lines = [
        "# Telemetry hook: CPU per request",
        "",
        f"Made by `python bench/telemetry_overhead.py --n {args.n}` on "
        f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M')} UTC (git {git}), {os.cpu_count()} cores "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (other sessions share the machine). Process CPU "
        "time of the observer call per ledger record, one thread; records: 1 in 10 a cascade escalation, 1 in 4 a "
        "stream.",
        "",
        "| observer | CPU µs / request |",
        "|---|---:|",
        *(f"| {name} | {us:.1f} |" for name, us in rows),
        "",
    ]
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
