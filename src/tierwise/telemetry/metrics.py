"""Prometheus metrics derived from the ledger record, the one place every request's facts already meet.

The service calls :meth:`RequestMetrics.observe` once per request, right after it submits the request's
:class:`~tierwise.types.LedgerRecord` to the ledger; nothing on the request path is instrumented on its own. So the
metrics agree with the ledger by construction (a request counted here is a row there, its tokens and cost are the
row's), and the hot path pays a handful of counter increments: label children are looked up once per label set
and cached in plain dicts, so a request costs a few dict hits and ``inc()`` calls (≈10 µs, see the README).

Label cardinality is bounded by the configuration, never by traffic: ``tier`` is a configured tier (else
``other``; ``none`` before one was chosen), ``model`` a configured model (else ``other``, ``none`` when no model
served), ``status`` / ``code`` / ``outcome`` small fixed vocabularies. No request id, prompt, key or session ever
becomes a label. Per-principal/customer/department/project series exist only when ``telemetry.metrics.attribution``
asks for them, capped at ``max_attribution_values`` values each (later ones are ``other``).

Metric names (``_total`` on counters, seconds and USD as units):

- ``tierwise_requests_total{tier,model,status,code}`` — every ledger record; status ok | error |
  client_cancelled | rejected, code the HTTP status
- ``tierwise_tokens_total{tier,model,kind}`` — kind input (plain-rate prompt tokens) | cache_read | cache_write |
  output (reasoning included) | reasoning (the part of output spent reasoning)
- ``tierwise_cost_usd_total{tier,model}`` — the ledger's cost_usd (every attempt and rung; estimates included)
- ``tierwise_request_duration_seconds{tier,model}`` / ``tierwise_time_to_first_token_seconds{tier,model}`` —
  histograms of the record's latency_ms / ttft_ms (requests refused before routing are not timed)
- ``tierwise_escalations_total{tier}``, ``tierwise_fallbacks_total{tier}``, ``tierwise_retries_total{tier,model}``
- ``tierwise_upstream_attempts_total{model,outcome}`` — every upstream call (and cooldown skip) of every request
- ``tierwise_attributed_requests_total{dimension,name}`` / ``tierwise_attributed_cost_usd_total{dimension,name}``
  — only with ``attribution``
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from tierwise.telemetry.config import MetricsConfig
from tierwise.types import LedgerRecord

log = logging.getLogger("tierwise.telemetry")

OTHER = "other"
NONE = "none"

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)

STATUSES = frozenset({"ok", "error", "client_cancelled", "rejected"})
#: attempt outcomes the executor and cascades write (types.Attempt, ErrorKind); anything else is 'other'
OUTCOMES = frozenset({
    "ok", "escalated", "verifier", "skipped_cooldown", "client_cancelled", "gate_failed", "rate_limit", "server",
    "timeout", "connection", "bad_response", "auth", "not_found", "client", "empty_length", "hedge_cancelled",
    "hedge_unused",
})
TOKEN_KINDS = ("input", "output", "cache_read", "cache_write", "reasoning")


class BoundedLabel:
    """Maps a raw value to a label value: known values as themselves, the first ``cap`` unknown ones too, every
    later one to ``other`` (``None`` is ``none``). Bounds series per process whatever traffic sends."""

    __slots__ = ("_seen", "_cap")

    def __init__(self, known: Iterable[str] = (), cap: int = 0) -> None:
        self._seen: dict[str, str] = {k: k for k in known}
        self._seen[""] = NONE
        self._cap = cap

    def __call__(self, value: str | None) -> str:
        if value is None:
            return NONE
        got = self._seen.get(value)
        if got is not None:
            return got
        if self._cap > 0:
            self._cap -= 1
            self._seen[value] = value
            return value
        return OTHER


class _Series:
    """The label children of one (tier, model) pair, resolved once."""

    __slots__ = ("tokens", "cost", "duration", "ttft")

    def __init__(self, m: RequestMetrics, tier: str, model: str) -> None:
        self.tokens = tuple(m.tokens.labels(tier, model, kind) for kind in TOKEN_KINDS)
        self.cost = m.cost.labels(tier, model)
        self.duration = m.duration.labels(tier, model)
        self.ttft = m.ttft.labels(tier, model)


class RequestMetrics:
    """The request counters and histograms of one gateway process, in ``registry``."""

    def __init__(self, cfg: MetricsConfig, tiers: Iterable[str], models: Iterable[str],
                 registry: CollectorRegistry) -> None:
        self.registry = registry
        self.tier = BoundedLabel(tiers)
        self.model = BoundedLabel(models)
        r = registry
        self.requests = Counter("tierwise_requests", "Requests, one per ledger record", ["tier", "model", "status",
                                                                                           "code"], registry=r)
        self.tokens = Counter("tierwise_tokens", "Tokens billed, by kind (reasoning is part of output)",
                              ["tier", "model", "kind"], registry=r)
        self.cost = Counter("tierwise_cost_usd", "Cost in USD as booked in the ledger", ["tier", "model"], registry=r)
        self.duration = Histogram("tierwise_request_duration_seconds", "Whole-request latency (routed requests)",
                                  ["tier", "model"], buckets=DURATION_BUCKETS, registry=r)
        self.ttft = Histogram("tierwise_time_to_first_token_seconds", "Time to first token (streams)",
                              ["tier", "model"], buckets=TTFT_BUCKETS, registry=r)
        self.escalations = Counter("tierwise_escalations", "Cascade escalations to a next rung", ["tier"], registry=r)
        self.fallbacks = Counter("tierwise_fallbacks", "Models passed over for another after failing or cooling "
                                 "down", ["tier"], registry=r)
        self.retries = Counter("tierwise_retries", "Upstream calls that were retries of a failed call",
                               ["tier", "model"], registry=r)
        self.attempts = Counter("tierwise_upstream_attempts", "Upstream calls (and cooldown skips) by outcome",
                                ["model", "outcome"], registry=r)
        self._dims = tuple(cfg.attribution)
        self._attr_names = {d: BoundedLabel((), cfg.max_attribution_values) for d in self._dims}
        if self._dims:
            self.attr_requests = Counter("tierwise_attributed_requests", "Requests by principal, customer, "
                                         "department or project (capped)", ["dimension", "name"], registry=r)
            self.attr_cost = Counter("tierwise_attributed_cost_usd", "Cost in USD by principal, customer, "
                                     "department or project (capped)", ["dimension", "name"], registry=r)
        # label children cached by label values: labels() takes a lock and builds a tuple each call
        self._req: dict[tuple[str, str, str, int], Any] = {}
        self._series: dict[tuple[str, str], _Series] = {}
        self._esc: dict[str, Any] = {}
        self._fb: dict[str, Any] = {}
        self._att: dict[tuple[str, str], Any] = {}
        self._retry: dict[tuple[str, str], Any] = {}
        self._attr: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._failed = False

    def observe(self, rec: LedgerRecord) -> None:
        """Count one finished request. Never raises into the request path (a bug here is logged once)."""
        try:
            self._observe(rec)
        except Exception:
            if not self._failed:
                self._failed = True
                log.exception("metrics: could not count request %s (logged once)", rec.id)

    def _observe(self, rec: LedgerRecord) -> None:
        tier, model = self.tier(rec.tier), self.model(rec.model)
        status = rec.status if rec.status in STATUSES else OTHER
        key = (tier, model, status, rec.http_status)
        c = self._req.get(key)
        if c is None:
            c = self._req[key] = self.requests.labels(tier, model, status, str(rec.http_status))
        c.inc()
        if self._dims:
            self._attribute(rec, rec.cost.total_usd)
        if status == "rejected":  # refused before routing: no model, no tokens, no cost, not timed
            return
        s = self._series.get((tier, model))
        if s is None:
            s = self._series[(tier, model)] = _Series(self, tier, model)
        u = rec.usage
        for child, n in zip(s.tokens, (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens,
                                       u.reasoning_tokens), strict=True):
            if n:
                child.inc(n)
        cost = rec.cost.total_usd
        if cost:
            s.cost.inc(cost)
        s.duration.observe(rec.latency_ms / 1000.0)
        if rec.ttft_ms is not None:
            s.ttft.observe(rec.ttft_ms / 1000.0)
        if rec.escalations:
            self._child(self._esc, tier, self.escalations).inc(rec.escalations)
        if rec.fallbacks:
            self._child(self._fb, tier, self.fallbacks).inc(rec.fallbacks)
        for a in rec.attempts:
            am = self.model(a.model)
            ak = (am, a.outcome if a.outcome in OUTCOMES else OTHER)
            ac = self._att.get(ak)
            if ac is None:
                ac = self._att[ak] = self.attempts.labels(*ak)
            ac.inc()
            if a.retry:
                self._child(self._retry, (tier, am), self.retries).inc()

    @staticmethod
    def _child(cache: dict[Any, Any], key: Any, metric: Counter) -> Any:
        c = cache.get(key)
        if c is None:
            c = cache[key] = metric.labels(*key) if isinstance(key, tuple) else metric.labels(key)
        return c

    def _attribute(self, rec: LedgerRecord, cost: float) -> None:
        for dim in self._dims:
            raw = rec.principal if dim == "principal" else getattr(rec, dim)
            k = (dim, self._attr_names[dim](raw))
            pair = self._attr.get(k)
            if pair is None:
                pair = self._attr[k] = (self.attr_requests.labels(*k), self.attr_cost.labels(*k))
            pair[0].inc()
            if cost:
                pair[1].inc(cost)
