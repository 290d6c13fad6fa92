"""The contextual cascade as two commands: ``tierwise calibrate --kind contextual`` and ``eval --router contextual``.

``calibrate --kind contextual`` fits, on the train split only: a learned router (``--router-kind``, default
``ensemble`` with ``minilm-onnx``, as ``bench/routing_brain.py``) whose out-of-fold priors feed the gates, one
contextual gate per (sub-chain, rung) (:func:`tierwise.lab.contextual.fit_contextual`), then sub-chain, thresholds
and start-router knob for the target by the calibrator's search with the z margin and the cross-validated
selection guard. It copies the chosen chain's gate and router artifacts into ``--out`` (absolute paths in the tier,
so the config works from any directory), writes ``--out/calibration.json`` (train and test numbers, the tier) and,
with ``--config``/``--tier``, the tier into the config. The test split is used once, to report the fitted point
through the engine.

``eval --router contextual[:KIND]`` fits the same model and reports the readings of
:mod:`tierwise.lab.contextual_eval` (ours-τ with the calibrated point, ours-H, ours-G), as the bench does.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tierwise.lab.calibrate import Calibrated, CalibrationResult, HeldOut, bootstrap_ci
from tierwise.lab.cascade_sim import simulate
from tierwise.lab.cli_common import Margins
from tierwise.lab.contextual import (
    ContextualModel,
    _uses_router,
    fit_contextual,
    held_out_data,
    prior_predictor,
)
from tierwise.lab.crossfit import DEFAULT_PROCEDURE, PROCEDURES, Fitted, fit_target
from tierwise.lab.datasets.format import OutcomeSet
from tierwise.lab.evaluate import EVAL_TIER, PromptResult, run_tier

ROUTER_KINDS = ("ensemble", "knn", "logreg", "none")
__all__ = ["DEFAULT_PROCEDURE", "PROCEDURES"]  # re-exported for the CLI parser's check
DEFAULT_ROUTER, DEFAULT_EMBEDDER = "ensemble", "minilm-onnx"  # as bench/routing_brain.py ("ours")


@dataclass
class ContextualFit:
    """Everything fitted on train, and the test split's router priors (from the router fitted on all train)."""

    model: ContextualModel
    priors_test: np.ndarray | None
    prior_oof: np.ndarray | None  # (n_train, len(pool)) out-of-fold priors; None without a router
    router_kind: str
    embedder: str


def fit_on_train(oset: OutcomeSet, work: Path, router_kind: str = DEFAULT_ROUTER, embedder: str = DEFAULT_EMBEDDER,
                 cv_folds: int | None = None, progress: bool = False) -> ContextualFit:
    """Router (unless ``router_kind`` is ``none``) and contextual gates on ``oset``'s train split."""
    from tierwise.routing.learned.embed_cache import embed_prompts
    from tierwise.routing.learned.train import train_router

    train, test = oset.split("train"), oset.split("test")
    router = oof = P_te = prior_oof = None
    if router_kind != "none":
        res = train_router(oset, router_kind, embedder, train.priced_models(), progress=progress)
        router, oof = res.router, res.oof
    from tierwise.progress import progress_bar

    model = fit_contextual(train, work, router=router, router_oof=oof,
                           progress=progress_bar(f"{oset.name}: contextual gates per sub-chain") if progress else None)
    if cv_folds is not None:
        model.calibrator.cv_folds = cv_folds
    if progress:
        model.calibrator.progress = progress_bar(f"{oset.name}: searches rebuilt per CV fold")  # type: ignore[attr-defined]
    if model.router is not None and router is not None and oof is not None:
        E_te = embed_prompts(embedder, [p.prompt or p.id for p in test.prompts], progress=progress,
                             label=f"{oset.name} test")
        P_te = model.router.predict_embeddings(E_te)
        prior_oof = oof[:, [router.models.index(m) for m in model.pool]]
    return ContextualFit(model, P_te, prior_oof, router_kind, embedder)


def install(model: ContextualModel, cal: Calibrated, knob: float, out: Path) -> dict[str, Any]:
    """The tier of a calibrated point with its artifacts copied into ``out`` (absolute paths)."""
    out.mkdir(parents=True, exist_ok=True)
    tier = model.tier(cal, knob)
    cascade = tier.get("cascade")
    if cascade is None:
        return tier

    def move(src: str) -> str:
        dst = (out / Path(src).name).resolve()
        if Path(src).resolve() != dst:
            shutil.copyfile(src, dst)
        return str(dst)

    for rung in cascade["rungs"]:
        gate = rung.get("gate")
        if gate and gate.get("artifact"):
            gate["artifact"] = move(gate["artifact"])
    if cascade.get("router"):
        cascade["router"] = move(cascade["router"])
    if cascade.get("start"):
        cascade["start"]["artifact"] = move(cascade["start"]["artifact"])
    return tier


def run_point(fit: ContextualFit, test: OutcomeSet, cal: Calibrated, tier: dict[str, Any]) -> list[PromptResult]:
    """``tier`` on ``test`` through the engine (router priors fed from the precomputed test predictions)."""
    kwargs: dict[str, Any] = {}
    if "cascade" in tier and _uses_router(tier):
        assert fit.priors_test is not None
        kwargs["predictors"] = {EVAL_TIER: prior_predictor(test, fit.priors_test, fit.model.pool, cal.chain)}
    return run_tier(test, tier, **kwargs)


def check_simulator(fit: ContextualFit, test: OutcomeSet, cal: Calibrated, knob: float,
                    results: list[PromptResult]) -> None:
    """Guard: the simulator's view of the point on test equals what the engine served."""
    if len(cal.chain) < 2:
        return
    sim = simulate(held_out_data(fit.model, test, cal.chain, fit.priors_test, knob), cal.thresholds)
    if [cal.chain[j] for j in sim.served] != [r.served for r in results]:
        raise AssertionError(f"{test.name}: simulator and engine disagree for {cal.chain} {cal.thresholds}")


def choose_pool(fit: ContextualFit, spec: str, target: float, z: float) -> tuple[Any, str]:
    """``--pool``: ``all`` (every sub-chain), ``auto`` (the sub-pool with the best cross-validated train AUC, as
    ``eval``'s ours-CV reading) or ``m1,m2,...``. Returns the (restricted) calibrator and a description."""
    calib = fit.model.calibrator
    if spec == "all":
        return calib, "every sub-chain of the priced models"
    if spec == "auto":
        from tierwise.lab.contextual_eval import cv_reading, family_taus
        from tierwise.progress import progress_bar

        restricted, choice = cv_reading(fit.model, family_taus(calib, calib.train, target), z,
                                        progress=progress_bar(f"{calib.train.name}: sub-pools by train CV"))
        return restricted, f"pool {' > '.join(choice.pool)} (best cross-validated train AUC {choice.auc:.3f})"
    pool = [m.strip() for m in spec.split(",") if m.strip()]
    bad = [m for m in pool if m not in fit.model.pool]
    if bad or not pool:
        raise ValueError(f"--pool {spec}: unknown or unpriced model(s) {bad}; the priced models are "
                         f"{', '.join(fit.model.pool)} (or give 'all' / 'auto')")
    restricted = calib.restricted(pool)
    if not restricted.searches:
        raise ValueError(f"--pool {spec}: no sub-chain of these models can be gated (no confidence recorded)")
    return restricted, f"pool {' > '.join(m for m in fit.model.pool if m in pool)} (given)"


def calibrate_contextual(args: argparse.Namespace, oset: OutcomeSet, budget: float | None, margins: Margins
                         ) -> tuple[CalibrationResult, Fitted, dict[str, Any], ContextualFit, str]:
    """Fit on train, pick the point for the target (or budget) by ``margins.procedure`` within ``args.pool``,
    install its artifacts into ``args.out``, run it on test. Returns (result, fitted point, tier, fit, pool
    description)."""
    test = oset.split("test")
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="tierwise-contextual-") as tmp:
        fit = fit_on_train(oset, Path(tmp), args.router_kind, args.router_embedder, args.cv_folds, progress=True)
        calib, pool_text = choose_pool(fit, args.pool, args.target_quality, margins.family_z)
        con = (calib.constraint_cost(budget, margins.family_z) if budget is not None
               else calib.constraint_quality(args.target_quality, margins.point()))
        fitted = fit_target(calib, con, margins.procedure)
        cal, knob = fitted.cal, fitted.start_knob
        tier = install(fit.model, cal, knob, out)
    results = run_point(fit, test, cal, tier)
    check_simulator(fit, test, cal, knob, results)
    c = np.array([r.cost for r in results])
    q = np.array([r.quality for r in results])
    held = HeldOut(float(c.mean()), float(q.mean()), bootstrap_ci(c), bootstrap_ci(q), results)
    mode = "cost" if budget is not None else "quality"
    knob_value = budget if budget is not None else args.target_quality
    target_test = knob_value * test.mean_quality(calib.ref_model) if mode == "quality" else knob_value
    res = CalibrationResult(cal, held, knob_value, mode, calib.ref_model, con.value, target_test)  # type: ignore[arg-type]
    return res, fitted, tier, fit, pool_text


def describe_extra(fit: ContextualFit, fitted: Fitted, pool: str, out: Path) -> str:
    router = ("no router (gates on confidences and agreement only)" if fit.router_kind == "none"
              else f"{fit.router_kind} router on {fit.embedder}, out-of-fold priors")
    knob = fitted.start_knob
    start = f"start router knob {knob:.6g}" if knob > 0 else "no start router"
    return (f"  contextual: {router}; {start}; artifacts in {out.resolve()}\n"
            f"  searched: {pool}; procedure {fitted.procedure}: {fitted.detail}")


def write_report(path: Path, res: CalibrationResult, fitted: Fitted, tier: dict[str, Any], fit: ContextualFit,
                 name: str, pool: str, z: float | None = None) -> None:
    c, h = res.cal, res.held
    doc = {"data": name, "kind": "contextual", "mode": res.mode, "knob": res.knob, "z": z, "ref_model": res.ref_model,
           "router_kind": fit.router_kind, "embedder": fit.embedder if fit.router_kind != "none" else None,
           "chain": c.chain, "thresholds": c.thresholds, "start_knob": fitted.start_knob,
           "searched": pool, "procedure": fitted.procedure, "procedure_detail": fitted.detail,
           "train": {"quality": c.train_quality, "cost": c.train_cost, "feasible": c.feasible,
                     "selection_guard": c.guard},
           "test": {"quality": h.quality, "quality_ci95": h.quality_ci, "cost": h.cost, "cost_ci95": h.cost_ci,
                    "n": len(h.results), "target": res.target_test, "met": res.met_on_test},
           "tier": tier}
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")


def contextual_rows(oset: OutcomeSet, router_kind: str, embedder: str, target: float, margins: Margins,
                    cv_folds: int, base: Any, two: bool, dump: list[dict[str, Any]] | None, bar: Any) -> list[Any]:
    """``eval --router contextual[:KIND]``: the rows ours-CV (the user-reachable reading, with the calibrated point),
    ours-τ, ours-H and ours-G, each computed by :mod:`tierwise.lab.contextual_eval` exactly as
    ``bench/routing_brain.py`` computes them. The τ families' z: ``margins.family_z``; the calibrated point's
    procedure and z: ``margins.procedure`` and :meth:`~tierwise.lab.cli_common.Margins.point`."""
    from tierwise.lab.contextual_eval import (
        contextual_curve,
        cv_reading,
        family_taus,
        grid_protocol,
        hindsight_chain,
    )
    from tierwise.lab.curve_bootstrap import PerPrompt
    from tierwise.lab.eval_subset import apgr_of
    from tierwise.lab.metrics import Point, evaluate_curve
    from tierwise.lab.report import Row

    test, train = oset.split("test"), oset.split("train")
    label = f"contextual:{router_kind}"
    z, procedure = margins.family_z, margins.procedure

    def row(name: str, fam: list[dict[str, Any]], pts: list[Point]) -> Row:
        r = Row(name, evaluate_curve(pts, base), pts, per_prompt=PerPrompt.from_runs([x["results"] for x in fam]),
                runs=[x["results"] for x in fam], apgr_ends=True)
        if two:
            r.apgr, r.cpt50 = apgr_of(r, base)
        return r

    with tempfile.TemporaryDirectory(prefix="tierwise-contextual-") as tmp:
        fit = fit_on_train(oset, Path(tmp), router_kind, embedder, cv_folds, progress=True)
        model, P = fit.model, fit.priors_test
        taus = family_taus(model.calibrator, train, target)
        pts, fam = contextual_curve(test, P, model, taus, z=z, progress=bar(f"{oset.name} {label} ours-τ"))
        rows = [row(f"{label} ours-τ (τ read on test)", fam, pts)]
        families = {"ours-τ": fam}
        if cv_folds >= 2:
            calib, choice = cv_reading(model, taus, z, progress=bar(f"{oset.name} {label} sub-pools by train CV"))
            if len(calib.searches) == len(model.calibrator.searches):
                cpts, cfam = pts, fam
            else:
                cpts, cfam = contextual_curve(test, P, model, taus, calib, z=z,
                                              progress=bar(f"{oset.name} {label} ours-CV"))
            rows.insert(0, row(f"{label} ours-CV (pool {'>'.join(choice.pool)} by train CV; τ read on test)",
                               cfam, cpts))
            families["ours-CV"] = cfam
        cal = contextual_curve(test, P, model, [target], z=margins.point(), procedure=procedure)[1][0]
        rows[0].calibrated, rows[0].calibrated_runs = Point(cal["cost"], cal["quality"]), cal["results"]
        rows[0].note = f"calibrated by {procedure}: {cal['detail']}"
        if dump is not None:
            for reading, f in families.items():
                for x in f:
                    dump.extend({"dataset": oset.name, "reading": reading, "prompt_id": r.prompt_id,
                                 "knob": x["tau"], "models_called": r.models_called, "served": r.served,
                                 "cost": r.cost, "quality": r.quality} for r in x["results"])
        hind = hindsight_chain(test, P, model, taus, base, progress=bar(f"{oset.name} {label} ours-H pools"))
        if hind is not None:
            hpts, hfam = contextual_curve(test, P, model, taus, hind[2], z=z,
                                          progress=bar(f"{oset.name} {label} ours-H"))
            rows.append(Row(f"{label} ours-H (pool {'>'.join(hind[1])} read on test)", evaluate_curve(hpts, base),
                            hpts, per_prompt=PerPrompt.from_runs([r["results"] for r in hfam]),
                            runs=[r["results"] for r in hfam]))
            rep, gchain, gpts, gruns = grid_protocol(test, P, model, fit.prior_oof, base,
                                                     progress=bar(f"{oset.name} {label} ours-G vertices"))
            rows.append(Row(f"{label} ours-G (grid on {'>'.join(gchain)}, read on test)", rep, gpts,
                            per_prompt=PerPrompt.from_runs(gruns), runs=gruns))
    return rows
