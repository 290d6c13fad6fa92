"""The eval table's baseline rows, its two-model metrics, and the whole table re-read on a subset of test prompts.

``tierwise eval`` prints its table a second time without the test prompts that also appear in train
(:mod:`tierwise.lab.leakage`). The train split is untouched by that, so every router, threshold and knob is the same;
only the prompts they are scored on change. :func:`restrict_rows` therefore re-reads each row from the per-prompt
runs already made (each point's engine results, kept on the row) on the remaining prompts: the same routers at the
same operating points, no re-training and no second engine pass (which had doubled ``eval``'s time on large sets).
The best model, the cheapest and the oracle — and with them every single-model, random-mixing and oracle row — are
recomputed on the subset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tierwise.lab.curve_bootstrap import PerPrompt
from tierwise.lab.metrics import Baselines, Point, apgr, cpt, evaluate_curve, gap_to_recover
from tierwise.lab.report import Row


def two_model_metrics(base: Baselines, pcts: list[float], quals: list[float]) -> tuple[float | None, float | None]:
    """(APGR, CPT(50%)); both None (printed "none") when the best model is also the cheapest or no better than it:
    there is no performance gap to recover, so the ratio is undefined (see :func:`tierwise.lab.metrics.apgr`)."""
    weak, strong = base.cheapest_point.quality, base.best_point.quality
    if base.best == base.cheapest or not gap_to_recover(weak, strong):
        return None, None
    return apgr(pcts, quals, weak, strong), cpt(pcts, quals, weak, strong, 0.5)


def apgr_of(row: Row, base: Baselines) -> tuple[float | None, float | None]:
    """APGR and CPT(50%) of a row from its runs: % of prompts that called the best model, per point; cascades
    (``apgr_ends``) add the all-cheap and all-best ends, as the RouteLLM code does for its routers' sweeps."""
    assert row.runs is not None
    pcts = [100 * float(np.mean([base.best in r.models_called for r in run])) for run in row.runs]
    quals = [float(np.mean([r.quality for r in run])) for run in row.runs]
    if row.apgr_ends:
        return two_model_metrics(base, [0.0, *pcts, 100.0],
                                 [base.cheapest_point.quality, *quals, base.best_point.quality])
    return two_model_metrics(base, pcts, quals)


def baseline_rows(base: Baselines, two: bool) -> list[Row]:
    """Every single model, random mixing and the oracle, on the split ``base`` was computed from."""
    rows = [Row(f"single:{m}", evaluate_curve([p], base), baseline=True) for m, p in base.singles.items()]
    rows.append(Row("random mixing (cheapest↔best)", evaluate_curve([base.best_point], base),
                    apgr=0.5 if two else None, cpt50=50.0 if two else None, note="AUC 0 by definition", baseline=True))
    rows.append(Row("oracle", evaluate_curve([base.oracle], base), note="limit, per-prompt hindsight", baseline=True))
    return rows


def _means(run: Sequence[Any]) -> Point:
    n = max(1, len(run))
    return Point(sum(r.cost for r in run) / n, sum(r.quality for r in run) / n)


def restrict_rows(rows: Sequence[Row], keep: Sequence[int], base: Baselines, two: bool) -> list[Row]:
    """``rows`` re-read on the test prompts at positions ``keep`` (split order), against ``base`` computed on those
    prompts. Rows without runs (an unavailable baseline's note) are kept as they are; baseline rows are rebuilt."""
    out: list[Row] = []
    for r in rows:
        if r.baseline:
            continue
        if r.runs is None:
            out.append(r)
            continue
        runs = [[run[i] for i in keep] for run in r.runs]
        pts = [_means(run) for run in runs]
        row = Row(r.name, evaluate_curve(pts, base), pts, note=r.note, per_prompt=PerPrompt.from_runs(runs),
                  ungated=r.ungated, runs=runs, apgr_ends=r.apgr_ends)
        if r.calibrated_runs is not None:
            row.calibrated_runs = [r.calibrated_runs[i] for i in keep]
            row.calibrated = _means(row.calibrated_runs)
        if two and r.apgr_ends is not None:
            row.apgr, row.cpt50 = apgr_of(row, base)
        out.append(row)
    return out + baseline_rows(base, two)
