"""Run a routing policy over recorded outcomes through the real engine (replay driver).

``replay_service`` builds a :class:`tierwise.service.Tierwise` whose only provider is a :class:`ReplayProvider`
and whose one tier, ``eval``, is the policy under test; ``run_tier`` sends every prompt of a split through
``Tierwise.begin`` / ``Tierwise.complete`` exactly as the gateway does, and reads back from each ledger record which
models were called, which one served, and what it cost. Quality is the recorded quality of the served model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tierwise.config.schema import TierwiseConfig
from tierwise.cost.tokens import reserve_count_cache
from tierwise.lab.datasets.format import OutcomeSet
from tierwise.lab.replay import REPLAY_KEY, ReplayProvider
from tierwise.routing.engine import RouteRequest
from tierwise.service import Tierwise

EVAL_TIER = "eval"


@dataclass(slots=True)
class PromptResult:
    prompt_id: str
    models_called: list[str]
    served: str | None
    cost: float
    quality: float
    escalations: int = 0


def replay_config(oset: OutcomeSet, tier: dict[str, Any], fallback: str | None = None) -> TierwiseConfig:
    """A config whose models are the set's models (priced by their recorded spend) and whose tier is ``tier``."""
    models = {m: {"provider": "replay", "price": {"input": 0, "output": 0}} for m in oset.models}
    if fallback is None:
        cascade = tier.get("cascade")
        fallback = cascade["rungs"][-1]["model"] if cascade else tier["models"][-1]
    return TierwiseConfig.model_validate(
        {
            "server": {"request_deadline_s": 1e9},
            "ledger": {"backend": "memory", "batch_size": 4096, "flush_interval_ms": 1000},
            # Recorded outcomes never fail; no retries, and no cooldown that would make order depend on history.
            "retry": {"max_retries": 0, "cooldown_failures": 1_000_000_000},
            # The replay provider is not a configurable format: the config names a placeholder endpoint that is never
            # contacted, and replay_service hands the service the ReplayProvider object under that name.
            "providers": {"replay": {"format": "openai", "base_url": "http://127.0.0.1:9/replay-is-injected"}},
            "models": models,
            "tiers": {EVAL_TIER: tier},
            "default_tier": EVAL_TIER,
            "fallback_model": fallback,
        }
    )


def replay_service(oset: OutcomeSet, tier: dict[str, Any], **kwargs: Any) -> Tierwise:
    return Tierwise(replay_config(oset, tier), providers={"replay": ReplayProvider("replay", oset)}, **kwargs)


async def arun_tier(
    oset: OutcomeSet, tier: dict[str, Any], *, progress: Callable[[int], None] | None = None, **kwargs: Any
) -> list[PromptResult]:
    """Every prompt of ``oset`` through the engine with ``tier`` as the policy."""
    svc = replay_service(oset, tier, **kwargs)
    results: list[PromptResult] = []
    try:
        with reserve_count_cache(2 * len(oset.prompts) + 64):  # every pass re-estimates the same prompts' tokens
            for i, p in enumerate(oset.prompts):
                body = {"model": EVAL_TIER, "messages": [{"role": "user", "content": p.prompt or p.id}],
                        REPLAY_KEY: p.id}
                call = await svc.begin(body, RouteRequest())
                rec = (await svc.complete(call)).record
                served = rec.model
                quality = p.models[served].quality if served is not None else 0.0
                called = [a.model for a in rec.attempts]
                results.append(PromptResult(p.id, called, served, rec.cost.total_usd, quality, rec.escalations))
                if progress is not None and (i + 1) % 200 == 0:
                    progress(i + 1)
    finally:
        await svc.aclose()
    return results


def inline(predict: Callable[[str], Any]) -> Callable[[str], Any]:
    """Mark a replay predictor (a lookup of predictions computed beforehand) as cheap: the service calls it on the
    event loop instead of handing it to its thread pool, whose hand-off was ~20 % of a replay pass. Same result."""
    predict.inline = True  # type: ignore[attr-defined]
    return predict


def run_tier(oset: OutcomeSet, tier: dict[str, Any], **kwargs: Any) -> list[PromptResult]:
    return asyncio.run(arun_tier(oset, tier, **kwargs))


def means(results: Sequence[PromptResult]) -> tuple[float, float]:
    """(mean cost, mean quality) of a run."""
    n = max(1, len(results))
    return sum(r.cost for r in results) / n, sum(r.quality for r in results) / n


def cascade_tier(chain: Sequence[str], gate: str, thresholds: Sequence[float], **gate_params: Any) -> dict[str, Any]:
    """A cascade tier spec: ``chain`` cheap → strong, one gate per rung but the last."""
    if len(thresholds) != len(chain) - 1:
        raise ValueError(f"a {len(chain)}-rung cascade needs {len(chain) - 1} thresholds, got {len(thresholds)}")
    rungs: list[dict[str, Any]] = [
        {"model": m, "gate": {"kind": gate, "threshold": float(t), **gate_params}}
        for m, t in zip(chain[:-1], thresholds, strict=True)
    ]
    rungs.append({"model": chain[-1]})
    return {"policy": "cascade", "cascade": {"rungs": rungs}}


def single_tier(model: str) -> dict[str, Any]:
    return {"models": [model], "policy": "priority"}
