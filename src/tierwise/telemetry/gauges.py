"""Gauges read from the gateway's state, not from requests: model cooldowns, budget consumption, the ledger queue.

They are read when Prometheus scrapes (:meth:`StateGauges.refresh`, awaited by the ``/metrics`` handler before it
renders), never on the request path. Budget consumption may live in Redis, so it is read with the state backend's
async ``read_usage`` (two round trips per scrape), not synchronously on the event loop; the rendered values are the
snapshot that refresh took. When the read fails (Redis away), the budget gauges are left out of that scrape and
``tierwise_budget_read_errors_total`` counts it.

- ``tierwise_model_cooldown{model}`` — 1 while the model is cooling down after repeated failures (this process's
  routing view; with ``--workers`` the highest over live workers, each publishing every ``refresh_s``)
- ``tierwise_budget_spent_usd{scope,period}``, ``tierwise_budget_reserved_usd{scope,period}`` (held by requests in
  flight), ``tierwise_budget_limit_usd{scope,period}``, ``tierwise_budget_used_ratio{scope,period}`` = (spent +
  reserved) ÷ limit — period ``day`` | ``month`` (UTC, on the state backend's clock), for the caps of
  ``budgets.caps``: named scopes, ``model:*`` for every configured model, ``customer:*`` / ``department:*`` /
  ``project:*`` for the members seen in requests; ``max_budget_scopes`` at most
- ``tierwise_ledger_queue_depth``, ``tierwise_ledger_healthy``, ``tierwise_ledger_spilled_rows`` …
  (``WriterStats`` of this process)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tierwise.config.schema import BudgetCap, TierwiseConfig
from tierwise.types import LedgerRecord

if TYPE_CHECKING:
    from tierwise.service import Tierwise
    from tierwise.state.backend import Usage

log = logging.getLogger("tierwise.telemetry")

_WILDCARDS = ("customer", "department", "project")


class BudgetScopes:
    """The budget scopes exposed as gauges, bounded: named caps and ``model:*`` from the config at start, members
    of ``customer:*`` / ``department:*`` / ``project:*`` as requests of theirs are seen, up to ``limit``."""

    def __init__(self, cfg: TierwiseConfig, limit: int) -> None:
        self.limit = limit
        self.caps: dict[str, BudgetCap] = {}
        caps = cfg.budgets.caps
        for scope, cap in caps.items():
            if not scope.endswith(":*"):
                self._add(scope, cap)
        if "model:*" in caps:
            for m in cfg.models:
                self._add(f"model:{m}", caps.get(f"model:{m}") or caps["model:*"])
        self._wild = {k: caps[f"{k}:*"] for k in _WILDCARDS if f"{k}:*" in caps}

    @property
    def learns(self) -> bool:
        """Whether requests can add scopes (a ``customer:*``-style cap is configured)."""
        return bool(self._wild)

    def _add(self, scope: str, cap: BudgetCap) -> None:
        if len(self.caps) < self.limit and (cap.daily_usd is not None or cap.monthly_usd is not None):
            self.caps.setdefault(scope, cap)

    def observe(self, rec: LedgerRecord) -> None:
        """Learn the wildcard members a request belongs to (a dict hit per dimension once known)."""
        if not self._wild or len(self.caps) >= self.limit:
            return
        for kind, cap in self._wild.items():
            name = getattr(rec, kind)
            if name and f"{kind}:{name}" not in self.caps:
                self._add(f"{kind}:{name}", cap)


class _BudgetCollector(Collector):
    """Renders the last snapshot :meth:`StateGauges.refresh` took (collect() must not do I/O)."""

    def __init__(self) -> None:
        self.snapshot: list[tuple[str, BudgetCap, Usage]] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fams = {n: GaugeMetricFamily(f"tierwise_budget_{n}", doc, labels=["scope", "period"]) for n, doc in (
            ("spent_usd", "Settled spend of the budget scope in the current UTC period"),
            ("reserved_usd", "Spend reserved by requests in flight"),
            ("limit_usd", "The cap of the period"),
            ("used_ratio", "(spent + reserved) / limit"))}
        for scope, cap, u in self.snapshot:
            for period, limit, spent, reserved in (("day", cap.daily_usd, u.daily_spent, u.daily_reserved),
                                                   ("month", cap.monthly_usd, u.monthly_spent, u.monthly_reserved)):
                if limit is None:
                    continue
                labels = [scope, period]
                fams["spent_usd"].add_metric(labels, spent)
                fams["reserved_usd"].add_metric(labels, reserved)
                fams["limit_usd"].add_metric(labels, limit)
                fams["used_ratio"].add_metric(labels, (spent + reserved) / limit)
        yield from fams.values()


class _LedgerCollector(Collector):
    def __init__(self, svc: Tierwise) -> None:
        self.svc = svc

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self.svc.ledger.stats()
        for name, doc, value in (
            ("queue_depth", "Ledger records submitted and not yet written", s.queue_depth),
            ("healthy", "1 while the ledger writes (0: store failing or journal unwritable)", int(s.healthy)),
            ("spilled_rows", "Rows written to the fallback file instead of the store (since start)", s.spilled),
            ("dropped_rows", "Records lost (since start; should stay 0)", s.dropped),
        ):
            yield GaugeMetricFamily(f"tierwise_ledger_{name}", doc, value=value)


class StateGauges:
    """Cooldown, budget and ledger gauges of one service. ``budget_registry`` receives the scrape-time collectors
    (with ``--workers``: the scraping worker's own registry, since shared state reads the same everywhere)."""

    def __init__(self, svc: Tierwise, registry: CollectorRegistry, limit: int) -> None:
        self.svc = svc
        self.models = list(svc.cfg.models)
        self.scopes = BudgetScopes(svc.cfg, limit)
        self.cooldown = Gauge("tierwise_model_cooldown", "1 while the model is in cooldown after repeated failures",
                              ["model"], registry=registry, multiprocess_mode="livemax")
        self._cool = {m: self.cooldown.labels(m) for m in self.models}
        self.read_errors = Counter("tierwise_budget_read_errors", "Scrapes whose budget read failed (state "
                                   "backend unreachable)", registry=registry)
        self._budgets = _BudgetCollector()
        self._ledger = _LedgerCollector(svc)

    def register_scrape_collectors(self, registry: CollectorRegistry) -> None:
        registry.register(self._budgets)
        registry.register(self._ledger)

    def publish_cooldowns(self) -> None:
        now = time.time()
        health = self.svc.health
        for m, g in self._cool.items():
            g.set(1.0 if health.cooling_down(m, now) else 0.0)

    async def refresh(self) -> None:
        """Read everything the next render shows. Budget usage comes from the state backend (Redis: awaited)."""
        self.publish_cooldowns()
        caps = list(self.scopes.caps.items())
        if not caps:
            self._budgets.snapshot = []
            return
        read = getattr(self.svc.governor.state, "read_usage", None)
        if read is None:
            return
        try:
            usage: dict[str, Any] = await read([s for s, _ in caps])
        except Exception as exc:
            self.read_errors.inc()
            self._budgets.snapshot = []
            log.warning("metrics: cannot read budget usage (%s)", type(exc).__name__)
            return
        self._budgets.snapshot = [(s, c, usage[s]) for s, c in caps if s in usage]
