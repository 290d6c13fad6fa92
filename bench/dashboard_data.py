"""Synthetic ledger rows for the dashboard's benchmark and screenshot: realistic shapes, deterministic per seed.

Rows spread over ``days`` days ending at ``end``, denser in working hours; 5 tiers, 7 models (a flagship, mid and
cheap ones, a local one), 40 principals in 8 customers and 6 departments, cascades that escalate, fallbacks, errors,
rejections, tags, TTFT on streams, log-normal latencies.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

from tierwise.types import Attempt, Cost, LedgerRecord, Usage

MODELS = {  # name: (input $/1M, output $/1M, median latency ms)
    "gpt-4o": (2.5, 10.0, 900), "claude-sonnet": (3.0, 15.0, 1100), "gpt-4o-mini": (0.15, 0.6, 450),
    "haiku": (0.8, 4.0, 500), "qwen-local": (0.02, 0.02, 300), "o3-mini": (1.1, 4.4, 2500), "llama-70b": (0.6, 0.6, 700),
}
TIERS = {  # tier: (models in plan order, share of traffic, source)
    "label": (["qwen-local", "gpt-4o-mini"], 0.35, "semantic"),
    "chat": (["gpt-4o-mini", "gpt-4o"], 0.30, "semantic"),
    "code": (["claude-sonnet", "haiku"], 0.15, "header"),
    "think": (["o3-mini", "gpt-4o"], 0.08, "learned"),
    "bulk": (["llama-70b", "qwen-local"], 0.12, "model"),
}
CUSTOMERS = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka"]
DEPARTMENTS = ["search", "ads", "support", "research", "sales", "ops"]
PRINCIPALS = [f"{c}-{k}" for c in CUSTOMERS for k in ("app", "batch", "eval", "dev", "bot")]


def rows(n: int, *, end: float, days: float = 1.0, seed: int = 11, start_id: int = 0) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    tier_names = list(TIERS)
    weights = [TIERS[t][1] for t in tier_names]
    for i in range(n):
        while True:  # more traffic in (UTC) working hours
            ts = end - rng.random() * days * 86400
            hour = (ts % 86400) / 3600
            if rng.random() < 0.35 + 0.65 * math.exp(-((hour - 14) / 5) ** 2):
                break
        tier = rng.choices(tier_names, weights)[0]
        plan, _, source = TIERS[tier]
        principal = rng.choice(PRINCIPALS)
        customer = principal.split("-")[0]
        escalated = tier in ("chat", "think") and rng.random() < 0.12
        fallback = rng.random() < 0.02
        model = plan[1] if escalated or fallback else plan[0]
        status = rng.choices(["ok", "error", "rejected", "client_cancelled"], [0.955, 0.02, 0.02, 0.005])[0]
        pin, pout, med = MODELS[model]
        usage = Usage(rng.randint(50, 4000), rng.randint(5, 800), rng.choice([0, 0, rng.randint(0, 2000)]))
        if status == "rejected":
            usage, model = Usage(), None
        cost = Cost(usage.input_tokens * pin / 1e6, usage.output_tokens * pout / 1e6,
                    usage.cache_read_tokens * pin / 2e6)
        if escalated:
            cost = Cost(cost.input_usd * 1.2, cost.output_usd * 1.1, cost.cache_read_usd)
        stream = rng.random() < 0.4
        latency = rng.lognormvariate(math.log(med), 0.5)
        rec = LedgerRecord(
            id=f"bench-{start_id + i:09d}", ts=ts, principal=principal, tier=tier, tier_source=source,
            requested_model=tier, model=model,
            attempts=[Attempt(model or plan[0], "ok" if status == "ok" else "error", usage=usage,
                              cost_usd=cost.total_usd)],
            usage=usage, cost=cost, ttft_ms=latency * rng.uniform(0.1, 0.4) if stream else None, latency_ms=latency,
            fallbacks=int(fallback), escalations=int(escalated), stream=stream, status=status,
            http_status={"ok": 200, "error": 502, "rejected": 429, "client_cancelled": 499}[status],
            error=None if status == "ok" else f"{status} (synthetic)", key_id=f"key_{principal}",
            customer=customer, department=DEPARTMENTS[PRINCIPALS.index(principal) % len(DEPARTMENTS)], project=None,
            tags={"feature": rng.choice(["summarise", "search", "chat", "extract"])})
        yield rec.as_row()


def config_text(ledger: str, port: int = 0, extra: str = "") -> str:
    """A tierwise.yaml whose models and tiers match the rows (priced as above; the upstream is never called)."""
    models = "\n".join(f"  {m}: {{provider: fake, price: {{input: {p[0]}, output: {p[1]}}}}}" for m, p in MODELS.items())
    tiers = "\n".join(f"  {t}: {{models: [{', '.join(v[0])}]}}" for t, v in TIERS.items())
    return f"""
server: {{port: {port}}}
ledger: {{path: "{ledger}", journal: false}}
{extra}providers:
  fake: {{format: openai, base_url: "http://127.0.0.1:9/v1", api_key: sk-unused}}
models:
{models}
tiers:
{tiers}
default_tier: chat
fallback_model: gpt-4o-mini
"""
