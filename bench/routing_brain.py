"""The routing brain vs the issue-3 baselines, on every cost-bearing set × chain (held-out splits).

Run: ``.venv/bin/python bench/routing_brain.py [--sets a,b]`` → ``bench/results/routing_brain.{md,json}`` and one PNG
per set under ``bench/results/routing_brain/``. Needs the embedding cache warm (``bench/learned_routers.py`` fills it).

**Ours**, per set, one procedure (no per-set choices; everything fitted on the train split):
- sets with a recorded confidence signal (log-prob or samples): the *contextual cascade* — a learned router
  (``ensemble``, minilm-onnx) gives per-model priors, cross-fitted on train; one logistic gate per (sub-chain, rung)
  over the rung's confidence, the priors and agreement with earlier rungs (:mod:`tierwise.routing.gates.contextual`);
  sub-chain and thresholds by the calibrator's search on out-of-fold gate confidences, for each τ of the same knob
  family as ``bench/routing_quality.py`` (target τ × the best train model's quality, z = 1). Every point is run on
  test through the engine (``run_tier`` with the contextual tier and the router's priors), and the simulator is
  checked against the engine on every point.
- sets without one: the learned router (policy ``learned``; router kind and choice rule by train-CV AUC among
  knn/logreg/ensemble), knob swept on test; hull vertices re-run through the engine (policy ``learned``).

Readings, all reported: **ours-G** — the grid baseline's own protocol (coarse grid of per-rung quantiles of the train
confidences, every sub-chain, the sub-chain and grid point read off the test hull) run on our contextual gate's
out-of-fold confidences, with the start-router knob as one more grid dimension (so its knob space is larger than the
grid baseline's: said wherever it is reported); **ours-H** / **ours-τ** — thresholds and start knob fitted on train
for each τ, the sub-pool (H) or nothing but τ (τ) read on test; and the **calibrated** point (τ = 0.99 fitted on
train with the calibrator's cross-validated selection guard, applied once: no hindsight at all). Baselines exactly as
``bench/routing_quality.py`` computes them (functions imported from there): kNN (minilm-static, λ sweep) and the
logprob/vote cascade grid-searched over every sub-chain, sub-chain and knob chosen on the test hull.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from routing_quality import SETS, _rep, grid_baseline  # noqa: E402

from tierwise.lab.calibrate import CascadeCalibrator  # noqa: E402
from tierwise.lab.contextual import fit_contextual  # noqa: E402
from tierwise.lab.contextual_eval import (  # noqa: E402
    contextual_curve,
    family_taus,
    grid_protocol,
    hindsight_chain,
)
from tierwise.lab.curve_bootstrap import PerPrompt, curve_draws, interval  # noqa: E402
from tierwise.lab.datasets import load_set  # noqa: E402
from tierwise.lab.eval_cli import knn_choices  # noqa: E402
from tierwise.lab.evaluate import means, run_tier  # noqa: E402
from tierwise.lab.metrics import Point, apgr, compute_baselines, cpt, evaluate_curve, upper_hull  # noqa: E402
from tierwise.lab.report import Row, plot_png  # noqa: E402
from tierwise.routing.learned.artifact import save_router  # noqa: E402
from tierwise.routing.learned.choose import choose, sweep  # noqa: E402
from tierwise.routing.learned.embed_cache import embed_prompts  # noqa: E402
from tierwise.routing.learned.train import sweep_points, train_router  # noqa: E402

OUT = Path(__file__).parent / "results"
EMBEDDER = "minilm-onnx"
ROUTER_KINDS = ("knn", "logreg", "ensemble")
BOOTSTRAP = 400  # paired bootstrap draws of each test split (tierwise.lab.curve_bootstrap)


def contextual_set(s, train, test, base, E_tr, E_te, work: Path) -> dict:  # noqa: ANN001
    res = train_router(s, "ensemble", EMBEDDER, s.priced_models(), embeddings=E_tr)
    model = fit_contextual(train, work, router=res.router, router_oof=res.oof)
    assert model.router is not None
    P_te = model.router.predict_embeddings(E_te)
    taus = family_taus(model.calibrator, train)
    pts, rows = contextual_curve(test, P_te, model, taus)
    rep = evaluate_curve(pts, base)
    _, hchain, hcalib = hindsight_chain(test, P_te, model, taus, base)
    hpts, _ = contextual_curve(test, P_te, model, taus, hcalib)
    hrep = evaluate_curve(hpts, base)
    prior_oof = res.oof[:, [res.router.models.index(m) for m in model.pool]]
    grep_ours, gchain, gpts, gruns = grid_protocol(test, P_te, model, prior_oof, base)
    cal = contextual_curve(test, P_te, model, [0.99], guard=True)[1][0]
    target = 0.99 * test.mean_quality(model.calibrator.ref_model)
    out = {"kind": "contextual cascade", "hull": _rep(hrep), "hindsight_chain": list(hchain), "hull_tau": _rep(rep),
           "hull_grid": _rep(grep_ours), "grid_chain": list(gchain),
           "calibrated": {"chain": cal["chain"], "start_knob": cal["start_knob"], "thresholds": cal["thresholds"],
                          "test_quality": cal["quality"], "cost_pct": 100 * cal["cost"] / base.best_point.cost,
                          "target": target, "met": cal["quality"] >= target - 1e-12},
           "chains_used": sorted({" > ".join(r["chain"]) + (f" (start≥{r['start_knob']:.2f})" if r["start_knob"]
                                                             else "") for r in rows})}
    if len(s.priced_models()) == 2:
        pct = [100 * float(np.mean([base.best in r.models_called for r in x["results"]])) for x in rows]
        args = ([0.0, *pct, 100.0], [base.cheapest_point.quality, *[x["quality"] for x in rows], base.best_point.quality],
                base.cheapest_point.quality, base.best_point.quality)
        out["apgr"], out["cpt50"] = apgr(*args), cpt(*args, 0.5)
    return out, hrep, hpts, Point(cal["cost"], cal["quality"]), rep, pts, grep_ours, gpts, PerPrompt.from_runs(gruns)


def learned_set(s, train, test, base, E_tr, E_te, work: Path) -> dict:  # noqa: ANN001
    """Learned router: kind and rule by train-CV AUC; test sweep; hull vertices re-run through the engine."""
    models = s.priced_models()
    fits = {k: train_router(s, k, EMBEDDER, models, embeddings=E_tr) for k in ROUTER_KINDS}
    kind, rule = max(((k, r) for k in ROUTER_KINDS for r in ("threshold", "lambda")),
                     key=lambda kr: fits[kr[0]].report["cv_auc"][kr[1]] or -1.0)
    router = fits[kind].router
    path = save_router(router, work / "router.npz")
    pred = router.predict_embeddings(E_te)
    Q, C = test.quality_matrix(models), test.cost_matrix(models)
    knobs, pts = sweep_points(pred, Q, C, router.mean_cost, rule)
    chosen = sweep(pred, router.mean_cost, rule, knobs)  # served model per knob and test prompt
    per_prompt = PerPrompt.from_choices(chosen, C, Q)
    by_text = {(p.prompt or p.id).strip(): [float(v) for v in pred[i]] for i, p in enumerate(test.prompts)}
    predictors = {"eval": lambda t: by_text[t.strip()]}
    hull = {(p.cost, p.quality) for p in upper_hull(pts)}

    def engine(knob: float) -> tuple[float, float, list]:
        tier = {"policy": "learned", "models": models, "learned": {"artifact": str(path), "rule": rule, "knob": knob}}
        res = run_tier(test, tier, predictors=predictors)
        idx = choose(pred, router.mean_cost, rule, knob)
        if [models[i] for i in idx] != [r.served for r in res]:
            raise AssertionError(f"{s.name}: learned router: matrix choice and engine disagree at knob {knob}")
        return (*means(res), res)

    for k, p in zip(knobs, pts, strict=True):
        if (p.cost, p.quality) in hull:
            hull.discard((p.cost, p.quality))
            c, q, _ = engine(float(k))
            assert abs(c - p.cost) <= 1e-12 * max(1.0, abs(c)) and abs(q - p.quality) <= 1e-12
    rep = evaluate_curve(pts, base)
    knob = fits[kind].report["calibration"][rule]
    c, q, _ = engine(knob)
    target = 0.99 * base.best_point.quality
    out = {"kind": f"learned router ({kind}, {rule})", "hull": _rep(rep),
           "calibrated": {"knob": knob, "test_quality": q, "cost_pct": 100 * c / base.best_point.cost,
                          "target": target, "met": q >= target - 1e-12}}
    if len(models) == 2:
        strong = models.index(base.best)
        pct = [100.0 * float(np.mean(i == strong)) for i in chosen]
        qs = [float(q) for q in per_prompt.quality.mean(axis=1)]
        out["apgr"] = apgr(pct, qs, base.cheapest_point.quality, base.best_point.quality)
        out["cpt50"] = cpt(pct, qs, base.cheapest_point.quality, base.best_point.quality, 0.5)
    return out, rep, pts, Point(c, q), per_prompt


def one_set(name: str, work: Path) -> dict:
    s = load_set(name)
    train, test = s.split("train"), s.split("test")
    models = test.priced_models()
    base = compute_baselines(test.quality_matrix(models), test.cost_matrix(models), models)
    row: dict = {"set": name, "n_train": len(train), "n_test": len(test), "best": base.best,
                 "qB": base.best_point.quality}
    knobs, chosen = knn_choices(train, test, models, "minilm-static")
    q, c = test.quality_matrix(models), test.cost_matrix(models)
    ix = np.arange(len(test.prompts))
    kpts = [Point(float(c[ix, ch].mean()), float(q[ix, ch].mean())) for ch in chosen]
    krep = evaluate_curve(kpts, base)
    methods = {"knn": PerPrompt.from_choices(chosen, c, q)}
    row["knn"] = _rep(krep)
    plot_rows = [Row("kNN (baseline)", krep, kpts)]
    if len(models) == 2:
        strong = models.index(base.best)
        pct = [100 * float((ch == strong).mean()) for ch in chosen]
        row["knn"]["apgr"] = apgr(pct, [p.quality for p in kpts], base.cheapest_point.quality, base.best_point.quality)
        row["knn"]["cpt50"] = cpt(pct, [p.quality for p in kpts], base.cheapest_point.quality, base.best_point.quality,
                                  0.5)
    E_tr = embed_prompts(EMBEDDER, [p.prompt for p in train.prompts])
    E_te = embed_prompts(EMBEDDER, [p.prompt for p in test.prompts])
    try:
        gate = CascadeCalibrator(train).gate
    except ValueError:
        gate = None
    if gate is not None:
        grep, gchain, gruns = grid_baseline(train, test, gate, base)
        row["grid"], row["grid_chain"] = (_rep(grep) if grep else None), gchain
        if grep:
            plot_rows.append(Row(f"{gate} cascade grid (baseline)", grep, grep.hull))
            methods["grid"] = PerPrompt.from_runs(gruns)
        ours, rep, pts, calp, trep, tpts, grep_ours, gpts, methods["ours"] = contextual_set(
            s, train, test, base, E_tr, E_te, work)
        plot_rows.append(Row("ours-G: contextual gate, grid protocol (chain and thresholds read on test)",
                             grep_ours, gpts))
        plot_rows.append(Row("ours-τ: contextual cascade fitted on train (τ read on test)", trep, tpts,
                             calibrated=calp))
        calp = None  # the calibrated point belongs to the train-fitted family, drawn once
    else:
        row["grid"] = None
        ours, rep, pts, calp, methods["ours"] = learned_set(s, train, test, base, E_tr, E_te, work)
    row["ours"] = ours
    label = "ours-H: contextual cascade, sub-pool read on test like the grid" if gate else f"ours: {ours['kind']}"
    plot_rows.append(Row(label, rep, pts, calibrated=calp))
    (OUT / "routing_brain").mkdir(parents=True, exist_ok=True)
    plot_png(OUT / "routing_brain" / f"{name.replace('/', '_')}.png", plot_rows, base, f"{name} (test split)")
    row["_draws"] = curve_draws(q, c, models, methods, BOOTSTRAP)
    return row


def _p(v, f: str = ".3f") -> str:  # noqa: ANN001
    return "—" if v is None else format(v, f)


def _targets(rows: list[dict], key: str) -> list[str]:
    """The issue's four target lines for one reading of our curve (``hull`` or ``hull_tau``)."""
    gains, c99s, full50 = [], [], []
    for r in rows:
        o = r["ours"].get(key) or r["ours"]["hull"]
        better = max([x["auc"] for x in (r.get("grid"), r["knn"]) if x and x["auc"] is not None], default=None)
        if o["auc"] is not None and better is not None:
            gains.append(o["auc"] - better)
        c99s.append(o["ctp99"] if o["ctp99"] is not None else float("inf"))
        if o["ctp"] is not None and o["ctp"] <= 50:
            full50.append(r["set"])
    n = len(gains)
    above, close = sum(x > 0 for x in gains), sum(x >= -0.01 for x in gains)
    med = float(np.median(c99s)) if c99s else float("nan")
    ok = lambda b: "✓" if b else "✗"  # noqa: E731
    return [f"- AUC never more than 0.01 below the better baseline: {close}/{n} sets {ok(close == n)}; strictly above on "
            f"{above}/{n} (target ≥ {int(np.ceil(2 * n / 3))}) {ok(above >= 2 * n / 3)}; mean gain {np.mean(gains):+.3f} "
            f"(target ≥ +0.03) {ok(np.mean(gains) >= 0.03)}",
            f"- cost to 99% of qB, median over sets: {'none' if np.isinf(med) else f'{med:.0f}%'} of cB (target ≤ 65%) "
            f"{ok(med <= 65)}",
            f"- full qB at ≤ 50% of cB on {len(full50)} sets (target ≥ 3) {ok(len(full50) >= 3)}: {', '.join(full50) or 'none'}"]


def noise(rows: list[dict]) -> dict:
    """Paired-bootstrap intervals (:mod:`tierwise.lab.curve_bootstrap`) for each set's ΔAUC vs the better baseline and for the
    four target numbers across sets; draw i of every set is combined with draw i of the others (sets independent)."""
    per_set, deltas, c99, c100 = {}, [], [], []
    for r in rows:
        d = r["_draws"]
        better = np.fmax(d["knn"]["auc"], d["grid"]["auc"]) if "grid" in d else d["knn"]["auc"]
        delta = d["ours"]["auc"] - better
        deltas.append(delta)
        c99.append(d["ours"]["ctp99"])
        c100.append(d["ours"]["ctp"])
        per_set[r["set"]] = {"delta_ci": interval(delta), "p_close": float(np.nanmean(delta >= -0.01)),
                             "p_above": float(np.nanmean(delta > 0)), "c99_ci": interval(d["ours"]["ctp99"])}
    D = np.array(deltas)
    return {"per_set": per_set, "draws": BOOTSTRAP,
            "mean_gain_ci": interval(np.nanmean(D, axis=0)),
            "close_ci": interval((D >= -0.01).sum(axis=0).astype(float)),
            "above_ci": interval((D > 0).sum(axis=0).astype(float)),
            "c99_median_ci": interval(np.median(np.array(c99), axis=0)),
            "full50_ci": interval((np.array(c100) <= 50).sum(axis=0).astype(float))}


def _noise_lines(nz: dict, n: int) -> list[str]:
    ci = lambda k, f: f"[{nz[k][0]:{f}}, {nz[k][1]:{f}}]"  # noqa: E731
    L = ["## How much of this is noise (paired bootstrap of the test split)", "",
         f"`tierwise.lab.curve_bootstrap`: {nz['draws']} draws of each test split with replacement; on each draw the best "
         "model, the oracle and every method's hull, AUC and costs are recomputed from the same prompts (each method "
         "keeps the operating points it reported above: ours-G's and the grid's hull vertices, the kNN and learned "
         "routers' whole sweeps, re-hulled on each draw — which favours the sweeps, since they re-pick their points "
         "on every draw and the vertex sets cannot). 95 % percentile intervals; across sets, draw i of every set is "
         "combined.", "",
         f"- mean AUC gain of ours-G over the better baseline: {ci('mean_gain_ci', '+.3f')} (target ≥ +0.03)",
         f"- sets within 0.01 of the better baseline: {ci('close_ci', '.0f')} of {n}; strictly above: "
         f"{ci('above_ci', '.0f')} (target ≥ {int(np.ceil(2 * n / 3))})",
         f"- median cost to 99 % of qB: {ci('c99_median_ci', '.0f')} % of cB (target ≤ 65 %)",
         f"- sets with full qB at ≤ 50 % of cB: {ci('full50_ci', '.0f')} (target ≥ 3)", "",
         "| set | ΔAUC 95 % interval | P(Δ ≥ −0.01) | P(Δ > 0) | c99 ours 95 % interval |", "|---|---|---|---|---|"]
    for name, v in nz["per_set"].items():
        lo, hi = v["delta_ci"]
        c_lo, c_hi = v["c99_ci"]
        L.append(f"| {name} | [{lo:+.3f}, {hi:+.3f}] | {v['p_close']:.2f} | {v['p_above']:.2f} | "
                 f"[{c_lo:.0f}, {c_hi:.0f}] |")
    return L


def render(rows: list[dict], secs: float, nz: dict) -> str:
    L = ["# Routing brain vs the issue-3 baselines (held-out test splits)", "",
         f"Generated by `bench/routing_brain.py` in {secs:.0f} s; the method is in its docstring. AUC = oracle-normalised "
         "AUC (design §5). All hull numbers read knob settings off the **test** curve (hindsight), for ours and for the "
         "baselines. **ours-G** is the grid baseline's protocol (the same 6 per-rung quantile levels of the train "
         "confidences, every sub-chain; sub-chain and grid point read on the test hull) with our contextual gate's "
         "out-of-fold confidence in place of the raw log-prob/vote share, and the start-router knob (0 and 19 "
         "quantiles of the train prior) as one more grid dimension — a larger knob space than the grid's. **ours-H** is stricter (sub-pool chosen on the test hull, every threshold "
         "and start knob fitted on train, τ read on test); **ours-τ** chooses the sub-chain on train too (only τ read on "
         "test). **cal@0.99** = fitted on train for 0.99 × the best train model's quality with the z = 1 margin and the "
         "cross-validated selection guard (cascade sets; learned-router sets: the router's out-of-fold knob), applied "
         "once: test quality / 0.99·qB, ✓ when met, cost % of cB (the honest number). c99 / c100 = hull cost to "
         "0.99·qB / qB (% of cB). Baselines exactly as `bench/routing_quality.py` (imported). Sets without a "
         "confidence signal use our learned router (hull = knob sweep; ours-G = ours-H = ours-τ).", "",
         "| set | ours | AUC ours-G | AUC ours-H | AUC ours-τ | AUC grid | AUC kNN | Δ(G) vs better | c99 ours-G "
         "| c99 ours-H | c99 ours-τ | c99 grid | c99 kNN | c100 ours-G | cal@0.99 |", "|" + "---|" * 15]
    for r in rows:
        o, g, k = r["ours"], r.get("grid"), r["knn"]
        t, gg = o.get("hull_tau") or o["hull"], o.get("hull_grid") or o["hull"]
        better = max([x["auc"] for x in (g, k) if x and x["auc"] is not None], default=None)
        d = None if (gg["auc"] is None or better is None) else gg["auc"] - better
        cal = o["calibrated"]
        cal_s = f"{cal['test_quality']:.3f}/{cal['target']:.3f} {'✓' if cal['met'] else '✗'} @{cal['cost_pct']:.0f}%"
        L.append(f"| {r['set']} | {o['kind']} | {_p(gg['auc'])} | {_p(o['hull']['auc'])} | {_p(t['auc'])} | "
                 f"{_p(g and g['auc'])} | {_p(k['auc'])} | {_p(d, '+.3f')} | {_p(gg['ctp99'], '.0f')} | "
                 f"{_p(o['hull']['ctp99'], '.0f')} | {_p(t['ctp99'], '.0f')} | {_p(g and g['ctp99'], '.0f')} | "
                 f"{_p(k['ctp99'], '.0f')} | {_p(gg['ctp'], '.0f')} | {cal_s} |")
    cal_met = sum(r["ours"]["calibrated"]["met"] for r in rows)
    L += ["", "## Targets (issue 3), plainly", "", "ours-G (the grid baseline's protocol on our gate's confidence; start knob as a grid dimension):",
          "", *_targets(rows, "hull_grid"), "",
          "ours-H (sub-pool read on test; thresholds and start knob fitted on train, τ read on test):", "",
          *_targets(rows, "hull"), "", "ours-τ (sub-chain fitted on train; only τ read on test):", "",
          *_targets(rows, "hull_tau"), "",
          f"Calibrated point (no hindsight at all): meets its 0.99·qB target on {cal_met}/{len(rows)} sets.", "",
          *_noise_lines(nz, len(rows)), "",
          "## RouteLLM two-model sets: APGR and CPT(50%) (arXiv 2406.18665 definitions), test split", "",
          "| set | kNN APGR | ours APGR | kNN CPT50 | ours CPT50 | met |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["set"].startswith("routellm/"):
            k, o = r["knn"], r["ours"]
            met = (o.get("apgr") or 0) > (k.get("apgr") or 0) and (o.get("cpt50") or 1e9) < (k.get("cpt50") or 0)
            L.append(f"| {r['set']} | {_p(k.get('apgr'))} | {_p(o.get('apgr'))} | {_p(k.get('cpt50'), '.1f')} | "
                     f"{_p(o.get('cpt50'), '.1f')} | {'✓' if met else '✗'} |")
    L += ["", "## What ours used", "", "| set | ours-G chain (read on test) | ours-H pool (read on test) | configurations "
          "in the train-fitted τ family | with a start router | calibrated chain (start knob) |", "|---|---|---|---|---|---|"]
    for r in rows:
        o = r["ours"]
        if "chains_used" not in o:
            continue
        used = o["chains_used"]
        cal = o["calibrated"]
        L.append(f"| {r['set']} | {' > '.join(o['grid_chain'])} | {' > '.join(o['hindsight_chain'])} | {len(used)} | {sum('start' in u for u in used)} "
                 f"| {' > '.join(cal['chain'])} ({cal['start_knob']:.2f}) |")
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", help="comma-separated subset of the default sets")
    args = ap.parse_args(argv)
    sets = args.sets.split(",") if args.sets else SETS
    t0, rows = time.time(), []
    with tempfile.TemporaryDirectory(prefix="tierwise-brain-") as tmp:
        for name in sets:
            t = time.time()
            rows.append(one_set(name, Path(tmp) / name.replace("/", "_")))
            o = rows[-1]["ours"].get("hull_grid") or rows[-1]["ours"]["hull"]
            print(f"{name}: AUC ours-G {_p(o['auc'])} ours-H {_p(rows[-1]['ours']['hull']['auc'])} grid {_p((rows[-1].get('grid') or {}).get('auc'))} kNN "
                  f"{_p(rows[-1]['knn']['auc'])} ({time.time() - t:.1f}s)", file=sys.stderr, flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    nz = noise(rows)
    for r in rows:
        r["ours"].pop("points", None)
        r.pop("_draws")
    (OUT / "routing_brain.json").write_text(json.dumps({"sets": rows, "noise": nz}, indent=1, default=float))
    (OUT / "routing_brain.md").write_text(render(rows, time.time() - t0, nz))
    print(f"done in {time.time() - t0:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
