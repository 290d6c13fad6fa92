"""Learned-router benchmark: kNN vs the logistic probes vs their CV blend, on every cost-bearing outcome set.

For each set: train each router on the train split (hyper-parameters by 5-fold CV there), sweep its knob on the test
split, and compute design §5 metrics with ``tierwise.lab.metrics``. The headline choice rule of each router is the
one with the higher *train*-CV oracle-normalised AUC (never chosen on test). Two kinds of test numbers:
- hull numbers (AUC, cost-to-parity, quality at budget): knob settings read off the test curve, i.e. in hindsight,
  as RouterBench and the issue's baselines do;
- the calibrated point: the knob fitted on train out-of-fold predictions for 0.99 × the best model's train quality,
  applied once to test (the honest number).

Run: ``python bench/learned_routers.py [--embedder minilm-onnx] [--sets a,b] [--out bench/results]``.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from tierwise.lab.datasets import load_set  # noqa: E402
from tierwise.lab.metrics import apgr, compute_baselines, cpt, evaluate_curve  # noqa: E402
from tierwise.routing.learned.choose import choose  # noqa: E402
from tierwise.routing.learned.embed_cache import embed_prompts  # noqa: E402
from tierwise.routing.learned.train import choose_calibrated, sweep_points, train_router  # noqa: E402

SETS = [
    *(f"zellinger/{b}/{c}" for b in ("mmlu", "medmcqa", "triviaqa", "truthfulqa", "gsm8k") for c in ("llama", "qwen_oai")),
    "fanconi/arc_easy/llama", "fanconi/arc_challenge/llama", "fanconi/medmcqa/llama",
    "fanconi/arc_easy/qwen", "fanconi/arc_challenge/qwen",
    "routerbench/arc_c", "routerbench/winogrande", "routellm/mmlu", "routellm/gsm8k", "mot/date",
]
KINDS = ("knn", "logreg", "ensemble")
TWO_MODEL_APGR = ("routellm/mmlu", "routellm/gsm8k")


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(float(v), nd)


def evaluate_set(name: str, embedder: str) -> dict:
    s = load_set(name)
    tr, te = s.split("train"), s.split("test")
    models = s.priced_models()
    E_tr = embed_prompts(embedder, [p.prompt for p in tr.prompts], progress=True, label=f"{name} train")
    E_te = embed_prompts(embedder, [p.prompt for p in te.prompts], progress=True, label=f"{name} test")
    Q, C = te.quality_matrix(models), te.cost_matrix(models)
    base = compute_baselines(Q, C, models)
    qb, cb = base.best_point.quality, base.best_point.cost
    out: dict = {"set": name, "n_train": len(tr), "n_test": len(te), "models": models,
                 "best": base.best, "cheapest": base.cheapest, "qB": _r(qb), "cB": cb, "q0": _r(base.cheapest_point.quality),
                 "oracle": {"cost": base.oracle.cost, "quality": _r(base.oracle.quality)}, "routers": {}}
    rows = np.arange(len(Q))
    for kind in KINDS:
        res = train_router(s, kind, embedder, models, embeddings=E_tr)
        router = res.router
        pred = router.predict_embeddings(E_te)
        cv_auc = res.report["cv_auc"]
        rule = max(cv_auc, key=lambda r: -1.0 if cv_auc[r] is None else cv_auc[r])
        per_rule = {}
        for r in cv_auc:
            knobs, pts = sweep_points(pred, Q, C, router.mean_cost, r)
            rep = evaluate_curve(pts, base)
            knob = res.report["calibration"][r]
            idx = choose_calibrated(pred, router.mean_cost, r, knob,
                                    models.index(res.report["calibration"]["reference"]))
            cal_cost, cal_q = float(C[rows, idx].mean()), float(Q[rows, idx].mean())
            entry = {
                "auc": _r(rep.auc), "cost_to_parity_pct": _r(rep.cost_to_parity_pct, 1),
                "cost_to_parity_99_pct": _r(rep.cost_to_parity_99_pct, 1),
                "quality_at_25": _r(rep.quality_at_25), "quality_at_50": _r(rep.quality_at_50),
                "quality_at_100": _r(rep.quality_at_100), "cv_auc_train": _r(cv_auc[r]),
                "calibrated": {"knob": knob, "cost_pct": _r(100 * cal_cost / cb, 1), "quality": _r(cal_q),
                               "quality_vs_best": _r(cal_q / qb if qb else None)},
            }
            if name in TWO_MODEL_APGR:
                strong = models.index(base.best)
                pct, qs = [], []
                for k in knobs:
                    i = choose(pred, router.mean_cost, r, float(k))
                    pct.append(100.0 * float(np.mean(i == strong)))
                    qs.append(float(Q[rows, i].mean()))
                wq = base.singles[models[1 - strong]].quality
                entry["apgr"] = _r(apgr(pct, qs, wq, qb))
                entry["cpt50_pct"] = _r(cpt(pct, qs, wq, qb, 0.5), 1)
            per_rule[r] = entry
        out["routers"][kind] = {"rule": rule, "fit_seconds": round(res.seconds, 2), "cv_brier": _r(res.report["cv_brier"]),
                                "cv_brier_constant": _r(res.report["cv_brier_constant"]),
                                "test_brier": _r(float(np.mean((pred - Q) ** 2))),
                                "params": res.report["params"], **per_rule[rule], "by_rule": per_rule}
    return out


def _fmt(v, suffix: str = "") -> str:
    return "none" if v is None else f"{v:.3f}{suffix}" if isinstance(v, float) and abs(v) <= 2 else f"{v}{suffix}"


def write_markdown(results: list[dict], path: Path, embedder: str) -> None:
    a, b = "knn", "ensemble"
    lines = [
        f"# Learned routers: kNN vs ensemble (logistic probes + kNN) — embedder `{embedder}`", "",
        "Test split of each set; routers trained on the train split only (all hyper-parameters by 5-fold CV there;",
        "each router's choice rule = the one with the higher train-CV AUC). AUC, cost-to-parity (CtP, % of the best",
        "model's cost) and quality at 25/50 % of its cost are read off the test hull, i.e. knob settings chosen in",
        "hindsight (as RouterBench and the issue's baselines do). **Calibrated** = knob fitted on train out-of-fold",
        "predictions for 0.99 × best train quality, applied once to test (honest): cost % of cB / quality ÷ qB.",
        "`logreg` (probes alone) is in the JSON.", "",
        "| set | n tr/te | AUC kNN | AUC ens | AUC logreg | CtP99 kNN | CtP99 ens | CtP kNN | CtP ens | q@25 kNN/ens "
        "| q@50 kNN/ens | qB | calibrated kNN | calibrated ens |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        k, e, lr = r["routers"][a], r["routers"][b], r["routers"]["logreg"]
        def cal(x: dict) -> str:
            c = x["calibrated"]
            return f"{c['cost_pct']}% / {c['quality_vs_best']:.3f}"
        lines.append(
            f"| {r['set']} | {r['n_train']}/{r['n_test']} | {_fmt(k['auc'])} | {_fmt(e['auc'])} | {_fmt(lr['auc'])} "
            f"| {_fmt(k['cost_to_parity_99_pct'], '%')} | {_fmt(e['cost_to_parity_99_pct'], '%')} "
            f"| {_fmt(k['cost_to_parity_pct'], '%')} | {_fmt(e['cost_to_parity_pct'], '%')} "
            f"| {_fmt(k['quality_at_25'])}/{_fmt(e['quality_at_25'])} | {_fmt(k['quality_at_50'])}/{_fmt(e['quality_at_50'])} "
            f"| {r['qB']:.3f} | {cal(k)} | {cal(e)} |"
        )
    def mean(kind: str, key: str) -> float:
        vals = [r["routers"][kind][key] for r in results if r["routers"][kind][key] is not None]
        return float(np.mean(vals)) if vals else float("nan")
    def median_ctp(kind: str) -> str:
        vals = [r["routers"][kind]["cost_to_parity_99_pct"] for r in results]
        vals = [np.inf if v is None else v for v in vals]
        m = float(np.median(vals)) if vals else float("nan")
        return "none" if np.isinf(m) else f"{m:.1f}%"
    lines += ["", "| summary | kNN | ensemble | logreg |", "|---|---|---|---|",
              f"| mean AUC | {mean('knn', 'auc'):.3f} | {mean('ensemble', 'auc'):.3f} | {mean('logreg', 'auc'):.3f} |",
              f"| median CtP99 (none = ∞) | {median_ctp('knn')} | {median_ctp('ensemble')} | {median_ctp('logreg')} |"]
    wins = sum(1 for r in results if (r["routers"][b]["auc"] or 0) > (r["routers"][a]["auc"] or 0))
    lines.append(f"| sets where ensemble AUC > kNN AUC | | {wins}/{len(results)} | |")
    two = [r for r in results if r["set"] in TWO_MODEL_APGR]
    if two:
        lines += ["", "RouteLLM two-model sets (APGR / CPT(50%) as in arXiv 2406.18665; paper's kNN ≈ 0.64 / 0.59 APGR):",
                  "", "| set | APGR kNN | APGR ens | APGR logreg | CPT(50%) kNN | CPT(50%) ens | CPT(50%) logreg |",
                  "|---|---|---|---|---|---|---|"]
        for r in two:
            k, e, lr = (r["routers"][x] for x in ("knn", "ensemble", "logreg"))
            lines.append(f"| {r['set']} | {k['apgr']:.3f} | {e['apgr']:.3f} | {lr['apgr']:.3f} | {k['cpt50_pct']}% "
                         f"| {e['cpt50_pct']}% | {lr['cpt50_pct']}% |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--embedder", default="minilm-onnx")
    ap.add_argument("--sets", help="comma-separated subset of the default sets")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    sets = args.sets.split(",") if args.sets else SETS
    results = []
    for i, name in enumerate(sets, 1):
        t = time.perf_counter()
        results.append(evaluate_set(name, args.embedder))
        r = results[-1]["routers"]
        print(f"[{i}/{len(sets)}] {name}: AUC kNN {_fmt(r['knn']['auc'])} ens {_fmt(r['ensemble']['auc'])} "
              f"logreg {_fmt(r['logreg']['auc'])} ({time.perf_counter() - t:.1f}s)", file=sys.stderr, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.embedder == "minilm-onnx" else f"_{args.embedder.replace('-', '_')}"
    (out / f"learned_routers{suffix}.json").write_text(json.dumps({"embedder": args.embedder, "results": results}, indent=1))
    write_markdown(results, out / f"learned_routers{suffix}.md", args.embedder)
    print(f"wrote {out / f'learned_routers{suffix}.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
