"""``bench/routing_brain.py``'s paired-bootstrap analysis and its Markdown report (kept apart: the bench gathers, this
module measures the noise and writes).

Readings of "ours" (see the bench's docstring): ``ours_g`` (grid protocol, hindsight), ``ours_tau`` (every sub-chain
fitted on train, τ read on test) and ``ours_cv`` (the sub-pool chosen by cross-validation on train, τ read on test) —
the **user-reachable** reading (``tierwise eval --router contextual`` prints it first; ``tierwise calibrate --kind
contextual --pool auto --procedure none --target-quality τ`` fits each of its points).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tierwise.lab.curve_bootstrap import interval

BOOTSTRAP = 400  # paired bootstrap draws of each test split (tierwise.lab.curve_bootstrap)
READINGS = {"ours_cv": ("ours-CV", "hull_cv"), "ours_tau": ("ours-τ", "hull_tau"), "ours_g": ("ours-G", "hull_grid")}
USER = "ours_cv"  # the user-reachable reading the issue's interval targets are about
CAL_TAU, CHEAP_PCT = 0.99, 90.0  # the calibrated point's target and "cheap" cost (% of the best model's)


def _p(v, f: str = ".3f") -> str:  # noqa: ANN001
    return "—" if v is None else format(v, f)


def _ok(b: bool) -> str:
    return "✓" if b else "✗"


def _reading(o: dict, key: str) -> dict:
    return o.get(key) or o["hull"]  # learned-router sets have one reading: the knob sweep


def _better(r: dict) -> float | None:
    return max([x["auc"] for x in (r.get("grid"), r["knn"]) if x and x["auc"] is not None], default=None)


def _targets(rows: list[dict], key: str) -> list[str]:
    """The issue-3 target lines for one reading of our curve (``hull``, ``hull_tau``, ``hull_cv``, ``hull_grid``)."""
    gains, c99s, full50 = [], [], []
    for r in rows:
        o = _reading(r["ours"], key)
        better = _better(r)
        if o["auc"] is not None and better is not None:
            gains.append(o["auc"] - better)
        c99s.append(o["ctp99"] if o["ctp99"] is not None else float("inf"))
        if o["ctp"] is not None and o["ctp"] <= 50:
            full50.append(r["set"])
    n = len(gains)
    above, close = sum(x > 0 for x in gains), sum(x >= -0.01 for x in gains)
    med = float(np.median(c99s)) if c99s else float("nan")
    return [f"- AUC never more than 0.01 below the better baseline: {close}/{n} sets {_ok(close == n)}; strictly above "
            f"on {above}/{n} (target ≥ {int(np.ceil(2 * n / 3))}) {_ok(above >= 2 * n / 3)}; mean gain "
            f"{np.mean(gains):+.3f} (target ≥ +0.03) {_ok(bool(np.mean(gains) >= 0.03))}",
            f"- cost to 99% of qB, median over sets: {'none' if np.isinf(med) else f'{med:.0f}%'} of cB (target ≤ 65%) "
            f"{_ok(med <= 65)}",
            f"- full qB at ≤ 50% of cB on {len(full50)} sets (target ≥ 3) {_ok(len(full50) >= 3)}: "
            f"{', '.join(full50) or 'none'}"]


def noise(rows: list[dict]) -> dict:
    """Paired-bootstrap intervals (:mod:`tierwise.lab.curve_bootstrap`) per reading: each set's ΔAUC vs the better
    baseline and the across-set target numbers (draw i of every set combined with draw i of the others: sets are
    independent); and the calibrated point's margin and cost (:func:`cal_noise`)."""
    out: dict = {"draws": BOOTSTRAP, "readings": {}, "calibrated": cal_noise(rows)}
    for m in READINGS:
        per_set, deltas, c99, c100 = {}, [], [], []
        for r in rows:
            d = r["_draws"]
            better = np.fmax(d["knn"]["auc"], d["grid"]["auc"]) if "grid" in d else d["knn"]["auc"]
            delta = d[m]["auc"] - better
            deltas.append(delta)
            c99.append(d[m]["ctp99"])
            c100.append(d[m]["ctp"])
            per_set[r["set"]] = {"delta_ci": interval(delta), "p_close": float(np.nanmean(delta >= -0.01)),
                                 "p_above": float(np.nanmean(delta > 0)), "c99_ci": interval(d[m]["ctp99"])}
        D = np.array(deltas)
        out["readings"][m] = {
            "per_set": per_set, "mean_gain_ci": interval(np.nanmean(D, axis=0)),
            "close_ci": interval((D >= -0.01).sum(axis=0).astype(float)),
            "above_ci": interval((D > 0).sum(axis=0).astype(float)),
            "c99_median_ci": interval(np.median(np.array(c99), axis=0)),
            "full50_ci": interval((np.array(c100) <= 50).sum(axis=0).astype(float)),
            "below": [s for s, v in per_set.items() if v["delta_ci"][1] < -0.01]}
    return out


def cal_noise(rows: list[dict], draws: int = BOOTSTRAP, seed: int = 0) -> dict:
    """The calibrated point per set: a bootstrap of the test prompts (paired with the target model and the best
    model) for its margin over CAL_TAU × the target model's quality and its cost as % of the best model's; and across
    sets the counts "met" and "met at ≤ CHEAP_PCT %" per draw."""
    rng = np.random.default_rng(seed)
    per_set, met, cheap = {}, [], []
    for r in rows:
        c = r["_cal"]
        n = len(c["q"])
        idx = rng.integers(0, n, size=(draws, n))
        margin = c["q"][idx].mean(axis=1) - CAL_TAU * c["q_ref"][idx].mean(axis=1)
        pct = 100 * c["c"][idx].mean(axis=1) / c["c_best"][idx].mean(axis=1)
        per_set[r["set"]] = {"margin_ci": interval(margin), "cost_pct_ci": interval(pct),
                             "p_met": float(np.mean(margin >= -1e-12))}
        met.append(margin >= -1e-12)
        cheap.append((margin >= -1e-12) & (pct <= CHEAP_PCT))
    return {"per_set": per_set, "met_ci": interval(np.sum(met, axis=0).astype(float)),
            "cheap_ci": interval(np.sum(cheap, axis=0).astype(float))}


def _interval_targets(rows: list[dict], nz: dict) -> list[str]:
    """The issue-12 targets, restated as intervals, for every reading and the calibrated point."""
    n = len(rows)
    L = ["## Targets (issue 12), restated as intervals", "",
         f"95 % paired-bootstrap intervals ({nz['draws']} draws of each test split). The user-reachable reading is "
         "**ours-CV** (no hindsight choice of sub-chain: the sub-pool by cross-validation on train); ours-τ (every "
         "sub-chain) and ours-G (hindsight) for comparison.", ""]
    for m, (label, key) in READINGS.items():
        rz = nz["readings"][m]
        lo, hi = rz["mean_gain_ci"]
        point = float(np.mean([_reading(r["ours"], key)["auc"] - _better(r) for r in rows
                               if _reading(r["ours"], key)["auc"] is not None and _better(r) is not None]))
        below = rz["below"]
        tag = " (user-reachable)" if m == USER else ""
        L.append(f"- {label}{tag}: mean AUC gain over the better baseline {point:+.3f} [{lo:+.3f}, {hi:+.3f}] — "
                 f"interval above 0: {_ok(lo > 0)}; sets whose ΔAUC interval lies wholly below −0.01: {len(below)} "
                 f"{_ok(not below)}{': ' + ', '.join(below) if below else ''}")
    cz = nz["calibrated"]
    met = sum(r["ours"]["calibrated"]["met"] for r in rows)
    cheap = sum(r["ours"]["calibrated"]["met"] and r["ours"]["calibrated"]["cost_pct"] <= CHEAP_PCT for r in rows)
    L += [f"- calibrated point (no hindsight): {CAL_TAU}·qB met on {met}/{n} sets [{cz['met_ci'][0]:.0f}, "
          f"{cz['met_ci'][1]:.0f}] (target ≥ 18) {_ok(met >= 18)}; met at ≤ {CHEAP_PCT:.0f} % of the best model's "
          f"cost on {cheap}/{n} [{cz['cheap_ci'][0]:.0f}, {cz['cheap_ci'][1]:.0f}] (target ≥ 10) {_ok(cheap >= 10)}"]
    old = [r["ours"].get("calibrated_guard") or r["ours"]["calibrated"] for r in rows]
    L += [f"- for comparison only (not a choice: the procedure was fixed on train before this run), the previous "
          "defaults (`--procedure families` at z = 1; the learned router's knob at z = 0) in the same run: met on "
          f"{sum(c['met'] for c in old)}/{n}, at ≤ "
          f"{CHEAP_PCT:.0f} % of the best model's cost on {sum(c['met'] and c['cost_pct'] <= CHEAP_PCT for c in old)}"
          f"/{n}"]
    return L


def _noise_lines(nz: dict, n: int) -> list[str]:
    g = nz["readings"]["ours_g"]
    ci = lambda k, f: f"[{g[k][0]:{f}}, {g[k][1]:{f}}]"  # noqa: E731
    L = ["## How much of this is noise (paired bootstrap of the test split)", "",
         f"`tierwise.lab.curve_bootstrap`: {nz['draws']} draws of each test split with replacement; on each draw the "
         "best model, the oracle and every method's hull, AUC and costs are recomputed from the same prompts (each "
         "method keeps the operating points it reported above: ours-G's and the grid's hull vertices, the τ families "
         "of ours-τ and ours-CV and the kNN and learned routers' whole sweeps, re-hulled on each draw — which favours "
         "the sweeps and families, since they re-pick their points on every draw and the vertex sets cannot). 95 % "
         "percentile intervals; across sets, draw i of every set is combined.", "",
         f"ours-G: mean AUC gain {ci('mean_gain_ci', '+.3f')} (target ≥ +0.03); sets within 0.01 of the better "
         f"baseline {ci('close_ci', '.0f')} of {n}; strictly above {ci('above_ci', '.0f')} (target ≥ "
         f"{int(np.ceil(2 * n / 3))}); median cost to 99 % of qB {ci('c99_median_ci', '.0f')} % of cB (target ≤ 65 %); "
         f"sets with full qB at ≤ 50 % of cB {ci('full50_ci', '.0f')} (target ≥ 3).", "",
         "| set | ΔAUC ours-CV | P(Δ ≥ −0.01) | ΔAUC ours-τ | ΔAUC ours-G | c99 ours-CV |", "|---|---|---|---|---|---|"]
    for name in nz["readings"]["ours_cv"]["per_set"]:
        cv, t, gg = (nz["readings"][m]["per_set"][name] for m in ("ours_cv", "ours_tau", "ours_g"))
        f = lambda v: f"[{v['delta_ci'][0]:+.3f}, {v['delta_ci'][1]:+.3f}]"  # noqa: E731
        L.append(f"| {name} | {f(cv)} | {cv['p_close']:.2f} | {f(t)} | {f(gg)} | "
                 f"[{cv['c99_ci'][0]:.0f}, {cv['c99_ci'][1]:.0f}] |")
    return L


def _cal_lines(rows: list[dict], nz: dict) -> list[str]:
    L = ["## The calibrated point, per set", "",
         f"Fitted on train once for {CAL_TAU} × the reference (best train) model's quality, with the z and "
         "procedure named "
         "(the bench's docstring says how it was chosen); run once on test through the engine. Margin = test quality "
         f"− {CAL_TAU} × the target model's test quality (≥ 0: met), cost as % of the best test model's, each with its "
         "95 % bootstrap interval over the test prompts.", "",
         "| set | procedure: what it chose | chain (start knob) | margin [95 %] | cost % [95 %] | met | previous "
         "default (same procedure at z = 1; learned router: z = 0) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["ours"]["calibrated"]
        z = nz["calibrated"]["per_set"][r["set"]]
        chain = (" > ".join(c["chain"]) + f" ({c['start_knob']:.2f})" if "chain" in c
                 else "the reference model alone" if c["knob"] is None else f"knob {c['knob']:.4g}")
        what = (f"{c['procedure']} (z = {c.get('z', 1):g}): {c['detail']}" if "procedure" in c
                else f"the router's out-of-fold knob, z = {c.get('z', 0):g}")
        g = r["ours"].get("calibrated_guard") or c
        L.append(f"| {r['set']} | {what} | {chain} | {c['test_quality'] - c['target']:+.3f} "
                 f"[{z['margin_ci'][0]:+.3f}, {z['margin_ci'][1]:+.3f}] | {c['cost_pct']:.0f} "
                 f"[{z['cost_pct_ci'][0]:.0f}, {z['cost_pct_ci'][1]:.0f}] | {_ok(c['met'])} | "
                 f"{g['test_quality'] - g['target']:+.3f} {_ok(g['met'])} @{g['cost_pct']:.0f}% |")
    return L


def render(rows: list[dict], secs: float, nz: dict, load0: str, load1: str, machine: str) -> str:
    L = ["# Routing brain vs the issue-3 baselines (held-out test splits)", "",
         f"Generated by `bench/routing_brain.py` in {secs:.0f} s on {machine} (load average {load0} at the start, "
         f"{load1} at the end, on 2 cores shared with other sessions: the quality numbers do not depend on load, but "
         "the embedder's integer kernels differ between CPUs: `bench/results/routing_brain_cpus.md`); the method, and how "
         "every choice was made without the test splits, are in its docstring. AUC = oracle-normalised AUC (design "
         "§5). All hull numbers read knob settings off the **test** curve (hindsight), for ours and for the "
         "baselines. **ours-CV** (the user-reachable reading) fits everything on train — the sub-pool by "
         "cross-validated train AUC, then per τ the sub-chain, thresholds and start knob — and reads only τ on "
         "test; **ours-τ** is the same over every sub-chain; **ours-H** reads the sub-pool on test; **ours-G** is "
         "the grid baseline's protocol (the same 6 per-rung quantile levels of the train confidences, every "
         "sub-chain; sub-chain and grid point read on the test hull) with our contextual gate's out-of-fold "
         "confidence in place of the raw log-prob/vote share and the start-router knob as one more grid dimension — "
         "a larger knob space than the grid's. **cal@0.99** = fitted on train for 0.99 × the best train model's "
         "quality (cascade sets: the procedure the bench names; learned-router sets: the router's out-of-fold "
         "knob), applied once: test quality / 0.99·qB, ✓ when met, cost % of cB (the honest number). c99 / c100 = "
         "hull cost to 0.99·qB / qB (% of cB). Baselines exactly as `bench/routing_quality.py` (imported). Sets "
         "without a confidence signal use our learned router (hull = knob sweep; every reading the same).", "",
         "| set | ours | AUC ours-CV | AUC ours-τ | AUC ours-H | AUC ours-G | AUC grid | AUC kNN | Δ(CV) vs better "
         "| Δ(G) vs better | c99 ours-CV | c99 ours-G | c99 grid | c99 kNN | cal@0.99 |", "|" + "---|" * 15]
    for r in rows:
        o, g, k = r["ours"], r.get("grid"), r["knn"]
        cv, t, gg = _reading(o, "hull_cv"), _reading(o, "hull_tau"), _reading(o, "hull_grid")
        better = _better(r)
        dcv = None if (cv["auc"] is None or better is None) else cv["auc"] - better
        dg = None if (gg["auc"] is None or better is None) else gg["auc"] - better
        cal = o["calibrated"]
        cal_s = f"{cal['test_quality']:.3f}/{cal['target']:.3f} {_ok(cal['met'])} @{cal['cost_pct']:.0f}%"
        L.append(f"| {r['set']} | {o['kind']} | {_p(cv['auc'])} | {_p(t['auc'])} | {_p(o['hull']['auc'])} | "
                 f"{_p(gg['auc'])} | {_p(g and g['auc'])} | {_p(k['auc'])} | {_p(dcv, '+.3f')} | {_p(dg, '+.3f')} | "
                 f"{_p(cv['ctp99'], '.0f')} | {_p(gg['ctp99'], '.0f')} | {_p(g and g['ctp99'], '.0f')} | "
                 f"{_p(k['ctp99'], '.0f')} | {cal_s} |")
    L += ["", *_interval_targets(rows, nz), "", "## Targets (issue 3), plainly, per reading", ""]
    for label, key in (("ours-CV (user-reachable: sub-pool by train CV, only τ read on test)", "hull_cv"),
                       ("ours-τ (every sub-chain, only τ read on test)", "hull_tau"),
                       ("ours-H (sub-pool read on test; thresholds and start knob fitted on train)", "hull"),
                       ("ours-G (the grid baseline's protocol on our gate's confidence)", "hull_grid")):
        L += [f"{label}:", "", *_targets(rows, key), ""]
    L += [*_noise_lines(nz, len(rows)), "", *_cal_lines(rows, nz), "",
          "## RouteLLM two-model sets: APGR and CPT(50%) (arXiv 2406.18665 definitions), test split", "",
          "| set | kNN APGR | ours APGR | kNN CPT50 | ours CPT50 | met |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["set"].startswith("routellm/"):
            k, o = r["knn"], r["ours"]
            met = (o.get("apgr") or 0) > (k.get("apgr") or 0) and (o.get("cpt50") or 1e9) < (k.get("cpt50") or 0)
            L.append(f"| {r['set']} | {_p(k.get('apgr'))} | {_p(o.get('apgr'))} | {_p(k.get('cpt50'), '.1f')} | "
                     f"{_p(o.get('cpt50'), '.1f')} | {_ok(met)} |")
    L += ["", "## What ours used", "", "| set | ours-CV pool (train CV AUC) | ours-G chain (read on test) | ours-H pool "
          "(read on test) | configurations in the ours-CV τ family | with a start router | calibrated chain (start "
          "knob) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        o = r["ours"]
        if "chains_used" not in o:
            continue
        used, cal = o["chains_used"], o["calibrated"]
        L.append(f"| {r['set']} | {' > '.join(o['cv_pool'])} ({_p(o['cv_pool_auc'])}) | {' > '.join(o['grid_chain'])} "
                 f"| {' > '.join(o['hindsight_chain'])} | {len(used)} | {sum('start' in u for u in used)} "
                 f"| {' > '.join(cal['chain'])} ({cal['start_knob']:.2f}) |")
    return "\n".join(L) + "\n"


def readme_lines(rows: list[dict], nz: dict, secs: float, load0: str, load1: str, machine: str) -> list[str]:
    """The README's routing-quality block (between ``<!-- routing-brain:begin/end -->``), from this run only."""
    L = [f"Generated by `python bench/routing_brain.py --readme` in {secs:.0f} s on {machine} (load average {load0} → "
         f"{load1} on 2 cores shared with other sessions; quality numbers do not depend on load, but can move between "
         "CPUs: `bench/results/routing_brain_cpus.md`). Every column, per-set "
         "interval, chain and plot: `bench/results/routing_brain.md`.", "",
         "| set | ours-CV | ours-τ | ours-H | ours-G | grid | kNN | Δ(CV) vs better [95 %] | c99 ours-CV | cal@0.99 |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, g, k = r["ours"], r.get("grid"), r["knn"]
        cv = _reading(o, "hull_cv")
        better = _better(r)
        d = None if (cv["auc"] is None or better is None) else cv["auc"] - better
        lo, hi = nz["readings"][USER]["per_set"][r["set"]]["delta_ci"]
        cal = o["calibrated"]
        kind = "" if o["kind"] == "contextual cascade" else " (learned router)"
        L.append(f"| {r['set']}{kind} | {_p(cv['auc'])} | {_p(_reading(o, 'hull_tau')['auc'])} | "
                 f"{_p(o['hull']['auc'])} | {_p(_reading(o, 'hull_grid')['auc'])} | {_p(g and g['auc'])} | "
                 f"{_p(k['auc'])} | {_p(d, '+.3f')} [{lo:+.3f}, {hi:+.3f}] | {_p(cv['ctp99'], '.0f')} | "
                 f"{cal['test_quality']:.3f}/{cal['target']:.3f} {_ok(cal['met'])} @{cal['cost_pct']:.0f}% |")
    L += ["", *[x.replace("## ", "**", 1) + "**" if x.startswith("## ") else x for x in _interval_targets(rows, nz)]]
    L += ["", "Issue-3 targets, point estimates:", ""]
    for label, key in (("ours-CV", "hull_cv"), ("ours-G (hindsight)", "hull_grid")):
        L += [f"{label}:", "", *_targets(rows, key), ""]
    apgr = [f"{r['set']} APGR {_p(r['ours'].get('apgr'))} vs kNN {_p(r['knn'].get('apgr'))}, CPT(50%) "
            f"{_p(r['ours'].get('cpt50'), '.1f')} % vs {_p(r['knn'].get('cpt50'), '.1f')} %"
            for r in rows if r["set"].startswith("routellm/")]
    if apgr:
        L.append("RouteLLM: " + "; ".join(apgr) + ".")
    return L


def replace_block(path: Path, name: str, lines: list[str]) -> None:
    """Rewrite the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in ``path`` (markers kept)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text(encoding="utf-8")
    if text.count(begin) != 1 or text.count(end) != 1:
        raise SystemExit(f"{path}: needs exactly one {begin} … {end} block")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    path.write_text(head + "\n".join([begin, *lines, end]) + tail, encoding="utf-8")
