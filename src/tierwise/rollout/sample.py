"""``tierwise sample``: a stratified sample of captured prompts per tier, written as a labelling file (JSONL).

Per tier, the sample is the ``n`` captures with the smallest ``blake2b(seed, request id)`` — a uniform sample
without replacement that streams (memory: ``n`` per tier), and is reproducible: the same seed over the same captures
gives the same file, and a larger ``n`` is a superset of a smaller one. Only answered captures are sampled (an
incumbent answer is what candidates are judged against).

One line per sampled request::

    {"id": "<request id>", "tier": "code", "prompt": "<last user text>", "messages": [...], "params": {...},
     "incumbent": {"model": "gpt-4o", "answer": "...", "cost_usd": 0.0123, "input_tokens": 812,
                   "output_tokens": 240, "latency_ms": 1830.5},
     "reference": null, "quality": null, "labels": {}}

Labellers may fill ``reference`` (the expected answer: exact/normalised judges compare with it instead of the
incumbent's answer), ``quality`` (how good the incumbent's answer is, in [0, 1]) and ``labels`` ({model: quality}
for candidates' answers, read by ``tierwise trial --judge labels``). The file is written atomically.
"""

from __future__ import annotations

import hashlib
import heapq
from pathlib import Path
from typing import Any

import orjson

from tierwise.config.schema import TierwiseConfig
from tierwise.fsutil import atomic_write


def _key(seed: str, request_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{request_id}".encode(), digest_size=8).digest(), "big")


def last_user_text(messages: list[Any]) -> str:
    """The text a labeller (and the outcome set's ``prompt``) shows: the last user message's text."""
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def sample_captures(cfg: TierwiseConfig, per_tier: int, *, since: float | None = None, until: float | None = None,
                    tiers: list[str] | None = None, seed: str = "0") -> dict[str, list[Any]]:
    """tier -> the sampled captures (see the module docstring), in request-time order."""
    from tierwise.rollout.capture import iter_captured

    heaps: dict[str, list[tuple[int, float, Any]]] = {}
    for c in iter_captured(cfg, since, until, tiers):
        if c.status != "ok" or c.answer is None or c.tier is None:
            continue
        h = heaps.setdefault(c.tier, [])
        item = (-_key(seed, c.request_id), c.ts, c)
        if len(h) < per_tier:
            heapq.heappush(h, item)
        elif item[0] > h[0][0]:
            heapq.heapreplace(h, item)
    return {t: [c for _, _, c in sorted(h, key=lambda x: x[1])] for t, h in sorted(heaps.items())}


def write_sample(cfg: TierwiseConfig, out: str | Path, per_tier: int, *, since: float | None = None,
                 until: float | None = None, tiers: list[str] | None = None, seed: str = "0") -> dict[str, int]:
    """Write the labelling file; returns the number of prompts per tier. Incumbent cost and latency come from the
    ledger rows of the sampled requests."""
    from tierwise.ledger import open_store

    picked = sample_captures(cfg, per_tier, since=since, until=until, tiers=tiers, seed=seed)
    wanted = {c.request_id for cs in picked.values() for c in cs}
    rows: dict[str, dict[str, Any]] = {}
    if wanted:
        store = open_store(cfg.ledger)
        try:
            lo = min(c.ts for cs in picked.values() for c in cs)
            for r in store.iter_rows(lo - 1.0, None):
                if r["id"] in wanted:
                    rows[r["id"]] = r
        finally:
            store.close()
    lines = []
    for tier, caps in picked.items():
        for c in caps:
            led = rows.get(c.request_id, {})
            lines.append(orjson.dumps({
                "id": c.request_id, "tier": tier, "prompt": last_user_text(c.messages), "messages": c.messages,
                "params": c.params,
                "incumbent": {"model": led.get("model") or c.model, "answer": c.answer,
                              "cost_usd": led.get("cost_usd"), "input_tokens": led.get("input_tokens"),
                              "output_tokens": led.get("output_tokens"), "latency_ms": led.get("latency_ms")},
                "reference": None, "quality": None, "labels": {},
            }) + b"\n")
    atomic_write(out, b"".join(lines))
    return {t: len(cs) for t, cs in picked.items()}
