"""Presentation of an evaluation: a text table, a PNG (matplotlib, optional) and a self-contained HTML plot.

The HTML draws its cost–quality plot as inline SVG, with no script or CDN, so the file opens anywhere offline and
can be attached to an issue as it is. Matplotlib is only needed for the PNG (the ``lab`` extra); without it the PNG
is skipped with a note, never an error.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tierwise.lab.curve_bootstrap import PerPrompt
from tierwise.lab.metrics import Baselines, CurveReport, Point

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


@dataclass
class Row:
    """One line of the table: a router or a baseline, its design §5 numbers and optional RouteLLM metrics."""

    name: str
    report: CurveReport | None
    points: list[Point] = field(default_factory=list)
    apgr: float | None = None
    cpt50: float | None = None
    note: str = ""
    calibrated: Point | None = None  # the train-fitted point, drawn apart from the hindsight hull
    per_prompt: PerPrompt | None = None  # per-prompt cost/quality of each point: for the paired bootstrap
    calibrated_runs: list[Any] | None = None  # the calibrated point's per-prompt runs: for its latency
    ungated: tuple[str, ...] | None = None  # models whose answers stream ungated in those runs (None: all)
    runs: list[list[Any]] | None = None  # per point, its per-prompt runs: to re-read the row on a subset of prompts
    apgr_ends: bool | None = None  # two-model APGR/CPT: from the points plus both ends (cascades), or the points
    baseline: bool = False  # a single model, random mixing or the oracle: recomputed from the baselines


def _f(v: float | None, fmt: str) -> str:
    """"none" where a number is undefined (None, or NaN as an undefined APGR)."""
    return "none" if v is None or v != v else format(v, fmt)


def metrics_table(rows: Sequence[Row], base: Baselines, two_model: bool) -> str:
    """Fixed-width table; costs as % of the best model's test cost."""
    cb = base.best_point.cost
    w = max([34, *(len(r.name) for r in rows)])  # names are never cut: two rows must not read alike
    head = f"{'router':<{w}} {'AUC':>6} {'c@qB%':>7} {'c@.99qB%':>9} {'q@25%':>6} {'q@50%':>6} {'q@100%':>6}"
    if two_model:
        head += f" {'APGR':>6} {'CPT50%':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        rep = r.report
        if rep is None:
            cells = ["n/a"] * 6
        else:
            cells = [_f(rep.auc, ".3f"), _f(rep.cost_to_parity_pct, ".1f"), _f(rep.cost_to_parity_99_pct, ".1f"),
                     _f(rep.quality_at_25, ".3f"), _f(rep.quality_at_50, ".3f"), _f(rep.quality_at_100, ".3f")]
        line = f"{r.name:<{w}} {cells[0]:>6} {cells[1]:>7} {cells[2]:>9} {cells[3]:>6} {cells[4]:>6} {cells[5]:>6}"
        if two_model:
            line += f" {_f(r.apgr, '.3f'):>6} {_f(r.cpt50, '.1f'):>7}"
        if r.calibrated is not None:
            line += f"  calibrated: q={r.calibrated.quality:.4f} at {100 * r.calibrated.cost / cb:.1f}% cB"
        if r.note:
            line += f"  [{r.note}]"
        lines.append(line)
    singles = ", ".join(f"{m} q={p.quality:.4f} c={100 * p.cost / cb:.1f}%" for m, p in base.singles.items())
    lines += [
        "",
        f"best={base.best} (qB={base.best_point.quality:.4f}, cB=${cb:.3g}/req); cheapest={base.cheapest}; "
        f"oracle q={base.oracle.quality:.4f} at {100 * base.oracle.cost / cb:.1f}% cB",
        f"single models: {singles}",
        "Hull points are chosen in hindsight on the test split (as RouterBench does); the 'calibrated' point is fitted",
        "on train only and is the honest number.",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- plots


def _series(rows: Sequence[Row], base: Baselines) -> list[tuple[str, list[Point], list[Point], Point | None]]:
    """(label, raw points, hull, calibrated point) per row that has a curve."""
    return [(r.name, r.points, r.report.hull if r.report else [], r.calibrated) for r in rows if r.points]


def plot_png(path: str | Path, rows: Sequence[Row], base: Baselines, title: str) -> str | None:
    """Write the PNG; returns None on success or the reason it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'tierwise[lab]'): PNG skipped, the HTML plot has the same"
    cb = base.best_point.cost
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for i, (label, pts, hull, cal) in enumerate(_series(rows, base)):
        col = PALETTE[i % len(PALETTE)]
        ax.scatter([100 * p.cost / cb for p in pts], [p.quality for p in pts], s=10, color=col, alpha=0.5)
        ax.plot([100 * p.cost / cb for p in hull], [p.quality for p in hull], color=col, label=label)
        if cal is not None:
            ax.scatter([100 * cal.cost / cb], [cal.quality], marker="*", s=160, color=col, edgecolor="black",
                       label=f"{label}: calibrated (train-fitted)")
    for m, p in base.singles.items():
        ax.scatter([100 * p.cost / cb], [p.quality], marker="s", color="black", s=22)
        ax.annotate(m, (100 * p.cost / cb, p.quality), fontsize=7, xytext=(3, 3), textcoords="offset points")
    c0 = base.cheapest_point
    ax.plot([100 * c0.cost / cb, 100], [c0.quality, base.best_point.quality], "k--", lw=1, label="random mixing")
    ax.scatter([100 * base.oracle.cost / cb], [base.oracle.quality], marker="D", color="gold", edgecolor="black",
               label="oracle")
    ax.set_xlabel("mean cost, % of the best model's")
    ax.set_ylabel("mean quality (test split)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def svg_plot(rows: Sequence[Row], base: Baselines, title: str, w: int = 760, h: int = 480) -> str:
    """The same plot as inline SVG (no script, no external resource)."""
    cb = base.best_point.cost
    pts_all = [p for r in rows for p in r.points] + list(base.singles.values()) + [base.oracle]
    xs = [100 * p.cost / cb for p in pts_all]
    ys = [p.quality for p in pts_all]
    x0, x1 = 0.0, max(xs) * 1.05
    y0, y1 = min(ys) - 0.02, max(ys) + 0.02
    ml, mr, mt, mb = 60, 200, 30, 45

    def sx(c: float) -> float:
        return ml + (100 * c / cb - x0) / (x1 - x0) * (w - ml - mr)

    def sy(q: float) -> float:
        return h - mb - (q - y0) / (y1 - y0) * (h - mt - mb)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
           f'<text x="{ml}" y="18" font-size="13">{html.escape(title)}</text>',
           f'<rect x="{ml}" y="{mt}" width="{w - ml - mr}" height="{h - mt - mb}" fill="none" stroke="#999"/>']
    for i in range(6):
        xv = x0 + i * (x1 - x0) / 5
        yv = y0 + i * (y1 - y0) / 5
        px = ml + i * (w - ml - mr) / 5
        py = h - mb - i * (h - mt - mb) / 5
        out.append(f'<text x="{px:.1f}" y="{h - mb + 15}" text-anchor="middle">{xv:.0f}%</text>')
        out.append(f'<text x="{ml - 5}" y="{py + 4:.1f}" text-anchor="end">{yv:.3f}</text>')
    out.append(f'<text x="{(w - mr + ml) / 2}" y="{h - 8}" text-anchor="middle">mean cost, % of the best model\'s</text>')
    c0, best = base.cheapest_point, base.best_point
    out.append(f'<line x1="{sx(c0.cost):.1f}" y1="{sy(c0.quality):.1f}" x2="{sx(best.cost):.1f}" '
               f'y2="{sy(best.quality):.1f}" stroke="black" stroke-dasharray="4 3"/>')
    legend = [("random mixing", "black"), ("oracle", "goldenrod")]
    for i, (label, pts, hull, cal) in enumerate(_series(rows, base)):
        col = PALETTE[i % len(PALETTE)]
        legend.append((label, col))
        for p in pts:
            out.append(f'<circle cx="{sx(p.cost):.1f}" cy="{sy(p.quality):.1f}" r="2.5" fill="{col}" opacity="0.5"/>')
        path = " ".join(f"{sx(p.cost):.1f},{sy(p.quality):.1f}" for p in hull)
        out.append(f'<polyline points="{path}" fill="none" stroke="{col}" stroke-width="2"/>')
        if cal is not None:
            out.append(f'<circle cx="{sx(cal.cost):.1f}" cy="{sy(cal.quality):.1f}" r="6" fill="{col}" stroke="black">'
                       f"<title>{html.escape(label)}: calibrated (train-fitted)</title></circle>")
    for m, p in base.singles.items():
        out.append(f'<rect x="{sx(p.cost) - 3:.1f}" y="{sy(p.quality) - 3:.1f}" width="6" height="6" fill="black"/>')
        out.append(f'<text x="{sx(p.cost) + 5:.1f}" y="{sy(p.quality) - 5:.1f}" font-size="9">{html.escape(m)}</text>')
    o = base.oracle
    out.append(f'<rect x="{sx(o.cost) - 5:.1f}" y="{sy(o.quality) - 5:.1f}" width="10" height="10" fill="gold" '
               f'stroke="black" transform="rotate(45 {sx(o.cost):.1f} {sy(o.quality):.1f})"/>')
    for i, (label, col) in enumerate(legend):
        y = mt + 12 + 16 * i
        out.append(f'<rect x="{w - mr + 10}" y="{y - 8}" width="10" height="10" fill="{col}"/>')
        out.append(f'<text x="{w - mr + 25}" y="{y + 1}">{html.escape(label[:30])}</text>')
    out.append("</svg>")
    return "\n".join(out)


def write_html(path: str | Path, rows: Sequence[Row], base: Baselines, title: str, table: str) -> None:
    """A self-contained page: the SVG plot and the metrics table."""
    doc = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body style='font-family:sans-serif'>"
        f"<h2>{html.escape(title)}</h2>{svg_plot(rows, base, title)}"
        f"<pre style='font-size:12px'>{html.escape(table)}</pre>"
        "<p>Large dots: calibrated (train-fitted) points. Lines: upper hulls of the test points, chosen in hindsight."
        "</p></body></html>"
    )
    Path(path).write_text(doc, encoding="utf-8")
