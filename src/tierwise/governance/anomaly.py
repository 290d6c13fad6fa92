"""Spend anomalies: a runaway loop or a leaked key shows up as a spend rate far above its own history.

Per (principal, model), spend is summed in fixed buckets (default 5 minutes). When a bucket starts, its alarm level
is fixed from the previous buckets: median + k × 1.4826 × MAD (the MAD scaled to a standard deviation under
normality; median and MAD ignore the spikes they are there to find), and never below ``min_usd``. Every settled
request adds its cost to its bucket; the first time a bucket's spend crosses its level an alert is raised — kept
in memory for the admin API, appended to ``<ledger>.alerts.jsonl``, POSTed to an optional webhook — and, if
configured, the principal's requests are held to a budget step (``cheaper``, ``fallback_only`` or ``block``) for a
while. O(1) per request: the median and MAD are computed once per bucket and key.

Counters are per process: with several replicas each watches its own share of the traffic, which scales the
baseline and the spike alike.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from tierwise.config.schema import AnomalyConfig, LedgerConfig

log = logging.getLogger("tierwise.governance")


def alerts_path(ledger: LedgerConfig) -> Path | None:
    """``<ledger>.alerts.jsonl`` beside a file ledger (the local base name for postgres); None for memory."""
    return None if ledger.backend == "memory" else Path(f"{Path(ledger.path).expanduser()}.alerts.jsonl")


@dataclass(frozen=True, slots=True)
class Alert:
    ts: float
    principal: str
    model: str
    bucket_start: float
    bucket_spend_usd: float
    baseline_median_usd: float
    baseline_mad_usd: float
    threshold_usd: float
    action: str  # what tierwise did: "recorded" or the step the principal is held to

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(slots=True)
class _Series:
    history: deque[float]
    bucket: int = -1
    spend: float = 0.0
    level: float = float("inf")  # this bucket's alarm level (inf: not enough history yet)
    median: float = 0.0
    mad: float = 0.0
    alerted: bool = False


@dataclass
class AnomalyDetector:
    cfg: AnomalyConfig
    alerts_path: Path | None = None
    alerts: deque[Alert] = field(default_factory=lambda: deque(maxlen=1000))
    _series: dict[tuple[str, str], _Series] = field(default_factory=dict)
    _held: dict[str, float] = field(default_factory=dict)  # principal -> until (unix seconds)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def observe(self, principal: str, model: str, cost_usd: float, now: float) -> Alert | None:
        """Add one settled request's cost; returns the alert it raised, if it raised one."""
        if not self.cfg.enabled or cost_usd <= 0:
            return None
        key = (principal, model)
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series(deque(maxlen=self.cfg.history_buckets))
        bucket = int(now // self.cfg.bucket_s)
        if bucket != s.bucket:
            self._roll(s, bucket)
        s.spend += cost_usd
        if s.alerted or s.spend <= s.level:
            return None
        s.alerted = True
        return self._raise(principal, model, s, now)

    @property
    def held_any(self) -> bool:
        """Cheap check for the request path: is any principal held at all?"""
        return bool(self._held)

    def held_step(self, principal: str, now: float) -> str | None:
        """The step a recent alert holds this principal to, if any."""
        until = self._held.get(principal)
        if until is None:
            return None
        if now >= until:
            del self._held[principal]
            return None
        return self.cfg.tighten

    def _roll(self, s: _Series, bucket: int) -> None:
        if s.bucket >= 0:
            s.history.append(s.spend)
            s.history.extend([0.0] * min(max(0, bucket - s.bucket - 1), s.history.maxlen or 0))  # quiet buckets
        s.bucket, s.spend, s.alerted = bucket, 0.0, False
        if len(s.history) < self.cfg.min_buckets:
            s.level = float("inf")
            return
        s.median = statistics.median(s.history)
        s.mad = statistics.median(abs(x - s.median) for x in s.history)
        s.level = max(self.cfg.min_usd, s.median + self.cfg.k * 1.4826 * s.mad)

    def _raise(self, principal: str, model: str, s: _Series, now: float) -> Alert:
        action = "recorded"
        if self.cfg.tighten != "none":
            self._held[principal] = now + self.cfg.tighten_for_s
            action = self.cfg.tighten
        alert = Alert(now, principal, model, s.bucket * self.cfg.bucket_s, s.spend, s.median, s.mad, s.level, action)
        self.alerts.append(alert)
        log.warning("spend anomaly: %s on %s spent $%.4f in this %gs bucket (level $%.4f; median $%.4f); %s",
                    principal, model, s.spend, self.cfg.bucket_s, s.level, s.median, action)
        if self.alerts_path is not None:
            try:
                with open(self.alerts_path, "ab") as f:
                    f.write(orjson.dumps(alert.as_dict()) + b"\n")
            except OSError as exc:
                log.error("could not record the anomaly alert in %s: %s", self.alerts_path, exc)
        if self.cfg.webhook_url:
            self._post(alert)
        return alert

    def _post(self, alert: Alert) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop (offline replay): the alert is recorded, not posted
        task = loop.create_task(self._send(alert))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, alert: Alert) -> None:
        import aiohttp

        url = self.cfg.webhook_url
        assert url is not None
        try:
            timeout = aiohttp.ClientTimeout(total=self.cfg.webhook_timeout_s)
            async with aiohttp.ClientSession(timeout=timeout) as session, \
                    session.post(url, json={"type": "tierwise.spend_anomaly", **alert.as_dict()}) as resp:
                if resp.status >= 300:
                    log.error("anomaly webhook answered HTTP %d", resp.status)
        except Exception as exc:  # a webhook down must never touch the request path
            log.error("anomaly webhook failed: %s", type(exc).__name__)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.cfg.webhook_timeout_s)
