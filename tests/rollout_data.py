"""Synthetic ledgers for the rollout reports (tests and bench/report_scale.py), and a plain-Python reference of what
``tierwise report`` / ``reprice`` must return on them."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import yaml

from tierwise.config.schema import TierwiseConfig
from tierwise.types import LedgerRecord

TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
PRICES = {"small": (0.1, 0.4, 0.025), "large": (2.5, 10.0, 1.25), "thinker": (1.1, 4.4, 1.1), "fb": (0.05, 0.2, 0.05)}
T0 = 1_796_083_200.0 - 30 * 86400  # 30 days before 2026-12-01T00:00Z


def _cost(model: str, u: dict[str, int]) -> float:
    i, o, cr = PRICES[model]
    return (u["input_tokens"] * i + u["output_tokens"] * o + u["cache_read_tokens"] * cr
            + u["cache_write_tokens"] * i) / 1e6


def rows(n: int, seed: int = 1, start: int = 0, days: float = 30.0) -> Iterator[dict[str, Any]]:
    """``n`` rows over ``days`` days from T0: tiers chat/label/cheap/think and direct, every status, 3 % escalated
    (a small rung that failed its gate, then large), 1 % booked at estimates, 50 principals."""
    rng = random.Random(seed * 1_000_003 + start)
    template = LedgerRecord(id="", ts=0.0).as_row()
    tiers = [("chat", "large"), ("chat", "small"), ("label", "small"), ("cheap", "small"), ("think", "thinker"),
             (None, "large")]
    for i in range(start, start + n):
        row = dict(template)
        tier, model = tiers[rng.randrange(len(tiers))]
        u = {"input_tokens": rng.randint(10, 3000), "output_tokens": rng.randint(1, 800),
             "cache_read_tokens": rng.choice((0, 0, 0, 512)), "cache_write_tokens": 0,
             "reasoning_tokens": rng.randint(0, 200) if model == "thinker" else 0}
        status = rng.choices(("ok", "error", "rejected", "client_cancelled"), (90, 4, 4, 2))[0]
        row.update(id=f"syn-{i:09d}", ts=T0 + (i / max(1, start + n)) * days * 86400 * 0.999,
                   principal=f"team-{rng.randrange(50):02d}", tier=tier, tier_source="header", model=model,
                   status=status, latency_ms=float(rng.randint(50, 2000)), escalations=0, attempts=[],
                   cost_breakdown={"estimated": 0.0})
        if status == "rejected":
            row.update(model=None, **dict.fromkeys(TOKENS, 0), cost_usd=0.0)
        elif status == "client_cancelled" and rng.random() < 0.5:
            est = 0.001
            row.update(**dict.fromkeys(TOKENS, 0), cost_usd=est, cost_breakdown={"estimated": est})
        elif tier == "chat" and model == "large" and rng.random() < 0.2:  # escalated: small rung, then large
            small = {"input_tokens": u["input_tokens"], "output_tokens": rng.randint(1, 400),
                     "cache_read_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0}
            a1 = {"model": "small", "outcome": "gate_failed", "usage": small, "cost_usd": _cost("small", small)}
            a2 = {"model": "large", "outcome": "ok", "usage": u, "cost_usd": _cost("large", u)}
            row.update(escalations=1, attempts=[a1, a2], cost_usd=a1["cost_usd"] + a2["cost_usd"],
                       **{t: small[t] + u[t] for t in TOKENS})
        else:
            row.update(cost_usd=_cost(model, u), attempts=[{"model": model, "outcome": "ok", "usage": u,
                                                            "cost_usd": _cost(model, u)}], **u)
        yield row


def reference(rs: list[dict[str, Any]], flagship: str = "large") -> dict[str, Any]:
    """Per tier: requests, cost, served-tokens cost on the flagship — computed plainly."""
    i, o, cr = PRICES[flagship]
    out: dict[str, dict[str, float]] = defaultdict(lambda: {"requests": 0, "cost_usd": 0.0, "flagship_usd": 0.0})
    for r in rs:
        acc = out[r["tier"] or "(none)"]
        acc["requests"] += 1
        acc["cost_usd"] += r["cost_usd"]
        if r["model"] is None:
            continue
        if r["cost_breakdown"].get("estimated"):
            acc["flagship_usd"] += r["cost_usd"]
            continue
        served = r["attempts"][-1]["usage"] if r["escalations"] else {t: r[t] for t in TOKENS}
        acc["flagship_usd"] += (served["input_tokens"] * i + served["output_tokens"] * o
                                + served["cache_read_tokens"] * cr + served["cache_write_tokens"] * i) / 1e6
    return dict(out)


def config_file(cfg: TierwiseConfig, path: Any) -> Any:
    """Write ``cfg`` as YAML (for the CLI's --config)."""
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_unset=True), sort_keys=False))
    return path
