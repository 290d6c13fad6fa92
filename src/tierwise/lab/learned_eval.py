"""Learned routers evaluated through the engine: the 'learned' tier policy in replay, one run per knob value.

Prompts are embedded once, through the on-disk embedding cache, and handed to the service as its predictor (the
``predictors`` hook of :class:`tierwise.service.Tierwise`): the routing decision itself is the engine's, exactly as
live, only the embedding is not recomputed per knob value.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tierwise.lab.datasets.format import OutcomeSet
from tierwise.lab.evaluate import EVAL_TIER, PromptResult, inline, run_tier, single_tier
from tierwise.lab.metrics import Point, upper_hull
from tierwise.routing.learned.artifact import LearnedRouter, load_router, save_router
from tierwise.routing.learned.choose import Rule, knob_grid, sweep
from tierwise.routing.learned.embed_cache import embed_prompts

ENGINE_CHECKS = 6  # hull vertices per sweep re-run through the engine (plus both ends)


def cached_predictor(router: LearnedRouter, oset: OutcomeSet) -> Callable[[str], np.ndarray]:
    """text -> the router's predictions, for every prompt of ``oset`` (the text the replay driver sends)."""
    texts = [p.prompt or p.id for p in oset.prompts]
    pred = router.predict_embeddings(embed_prompts(router.embedder_name, texts, progress=True,
                                                   label=f"{oset.name} ({router.embedder_name})"))
    by_text = {t.strip(): row for t, row in zip(texts, pred, strict=True)}
    return inline(lambda text: by_text[text.strip()])


def learned_tier(models: Sequence[str], artifact: str | Path, rule: Rule, knob: float) -> dict:
    return {"policy": "learned", "models": list(models),
            "learned": {"artifact": str(artifact), "rule": rule, "knob": float(knob)}}


def sweep_learned(
    test: OutcomeSet, artifact: str | Path, rule: Rule = "lambda", knobs: Sequence[float] | None = None, n: int = 41,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[float, list[PromptResult]]]:
    """The learned policy over ``test`` for each knob (default: ``n`` values spanning every choice).

    Every knob's choices come from the router's own choice function on the cached predictions (vectorised: the
    engine would take ~0.5 ms per prompt and knob, minutes on thousands of prompts × 41 knobs). The first and last
    knob and up to :data:`ENGINE_CHECKS` vertices of the cost–quality hull (evenly spread) are run through the
    engine, which must serve exactly the matrix's choice at exactly its cost (else AssertionError); their engine
    results are returned."""
    return _sweep(test, artifact, rule, knobs, n, progress, ())[0]


def sweep_with(
    test: OutcomeSet, artifact: str | Path, rule: Rule, extra: Sequence[float], n: int = 41,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[tuple[float, list[PromptResult]]], list[list[PromptResult]]]:
    """:func:`sweep_learned`, plus the engine's runs at the ``extra`` knobs (the calibrated one), from the same
    predictions (the router is loaded and the prompts embedded and predicted once)."""
    return _sweep(test, artifact, rule, None, n, progress, extra)


def _sweep(
    test: OutcomeSet, artifact: str | Path, rule: Rule, knobs: Sequence[float] | None, n: int,
    progress: Callable[[int, int], None] | None, extra: Sequence[float],
) -> tuple[list[tuple[float, list[PromptResult]]], list[list[PromptResult]]]:
    router = load_router(artifact)
    predict = cached_predictor(router, test)
    pred = np.stack([predict(p.prompt or p.id) for p in test.prompts])
    if knobs is None:
        knobs = [float(k) for k in knob_grid(pred, router.mean_cost, rule, n=n)]
    knobs = [*knobs, *extra]  # the extra knobs ride along; they are split off at the end
    models = router.models
    Q, C = test.quality_matrix(models), test.cost_matrix(models)
    chosen = sweep(pred, router.mean_cost, rule, knobs)
    rows = np.arange(len(test.prompts))
    ids = test.ids()
    out = [(float(k), [PromptResult(pid, [models[c]], models[c], float(C[i, c]), float(Q[i, c]))
                       for i, (pid, c) in enumerate(zip(ids, ch, strict=True))]) for k, ch in zip(knobs, chosen,
                                                                                             strict=True)]
    m = len(knobs) - len(extra)
    pts = [(float(C[rows, ch].mean()), float(Q[rows, ch].mean())) for ch in chosen[:m]]
    hull = {(p.cost, p.quality) for p in upper_hull([Point(c, q) for c, q in pts])}
    vertices = [i for i, p in enumerate(pts) if p in hull]
    if len(vertices) > ENGINE_CHECKS:
        vertices = [vertices[round(j * (len(vertices) - 1) / (ENGINE_CHECKS - 1))] for j in range(ENGINE_CHECKS)]
    check = sorted({0, m - 1, *vertices, *range(m, len(knobs))})
    for done, i in enumerate(check):
        k = knobs[i]
        eng = run_tier(test, learned_tier(models, artifact, rule, k), predictors={EVAL_TIER: predict})
        mat = out[i][1]
        if [r.served for r in eng] != [r.served for r in mat] or any(
                abs(a.cost - b.cost) > 1e-12 * max(1.0, abs(b.cost)) for a, b in zip(eng, mat, strict=True)):
            raise AssertionError(f"{test.name}: learned router {artifact}: engine and choice function disagree at "
                                 f"knob {k}")
        out[i] = (float(k), eng)
        if progress is not None:
            progress(done + 1, len(check))
    return out[:m], [res for _, res in out[m:]]


def train_and_sweep(
    oset: OutcomeSet, models: Sequence[str], kind: str, embedder: str, rule: Rule = "lambda", n: int = 41
) -> list[tuple[float, list[PromptResult]]]:
    """Train ``kind`` on ``oset``'s train split, then sweep it on the test split through the engine."""
    return train_sweep_calibrated(oset, models, kind, embedder, rule, n)[0]


def train_sweep_calibrated(
    oset: OutcomeSet, models: Sequence[str], kind: str, embedder: str, rule: Rule = "lambda", n: int = 41,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[tuple[float, list[PromptResult]]], list[PromptResult]]:
    """:func:`train_and_sweep`, plus the run at the point calibrated on train (out-of-fold, ``train-router``'s
    default target): the honest point of the sweep."""
    from tierwise.routing.learned.train import train_router

    res = train_router(oset, kind=kind, embedder=embedder, models=list(models))
    with tempfile.TemporaryDirectory(prefix="tierwise-router-") as tmp:
        artifact = save_router(res.router, Path(tmp) / f"{kind}.npz")
        runs, cal = sweep_calibrated(oset.split("test"), artifact, rule, n, progress)
        assert cal is not None  # train_router always calibrates
        return runs, cal


def sweep_calibrated(
    test: OutcomeSet, artifact: str | Path, rule: Rule = "lambda", n: int = 41,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[tuple[float, list[PromptResult]]], list[PromptResult] | None]:
    """:func:`sweep_learned`, plus the engine's run of the point ``train-router`` calibrated on train (stored in the
    artifact): the router at its knob, or the reference model alone when no knob was certified cheaper (knob
    None); None for an artifact without a calibration."""
    cal = load_router(artifact).header.get("calibration") or {}
    if rule not in cal:
        return sweep_learned(test, artifact, rule, None, n, progress), None
    if cal[rule] is None:
        return sweep_learned(test, artifact, rule, None, n, progress), run_tier(test, single_tier(cal["reference"]))
    runs, (point,) = sweep_with(test, artifact, rule, [float(cal[rule])], n, progress)
    return runs, point
