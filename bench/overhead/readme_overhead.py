"""README's "Gateway overhead" table, written from the saved results of the four ``run.py`` configurations.

    python bench/overhead/run.py                          # → bench/results/overhead.json
    python bench/overhead/run.py --no-journal             # → bench/results/overhead-nojournal.json
    python bench/overhead/run.py --governance             # → bench/results/overhead-governance.json
    python bench/overhead/run.py --telemetry tracing --out bench/results/telemetry
    python bench/overhead/readme_overhead.py              # rewrites README.md between <!-- overhead:begin/end -->

Each column names the run it comes from (when, which commit, how loaded the machine was and how fast it was: the
bare proxy's own CPU per request), so a table assembled from runs of different hours says so instead of hiding it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "bench"))

from readme_block import replace_block  # noqa: E402
from report import TARGET_ADDED_P50_MS, TARGET_ADDED_P99_MS, TARGET_RPS, TARGET_RSS_MB, cell  # noqa: E402
from run import NONSTREAM_CONC  # noqa: E402
from stats import added, max_sustained_rps, scalar, spread  # noqa: E402

RESULTS = REPO / "bench" / "results"
COLUMNS = (("default", RESULTS / "overhead.json"), ("crash journal off (`--no-journal`)",
                                                      RESULTS / "overhead-nojournal.json"),
           ("keys + budgets + rate limits (`--governance`)", RESULTS / "overhead-governance.json"),
           ("tracing on (`--telemetry tracing`)", RESULTS / "telemetry" / "overhead-telemetry-tracing.json"))
CPU_CLIENTS = 16


def mark(ok: bool) -> str:
    return "" if ok else " ✗"


def column(path: Path) -> dict[str, str]:
    res = orjson.loads(path.read_bytes())
    meta, runs = res["meta"], res["runs"]
    a50 = added(runs, "gateway", "direct", False, 1, "latency", "p50")
    a99 = added(runs, "gateway", "direct", False, 1, "latency", "p99")
    rps = max_sustained_rps(runs, "gateway", NONSTREAM_CONC)
    gw = scalar(runs, "gateway", False, CPU_CLIENTS, "server_cpu_us_per_req")
    bare = scalar(runs, "bare", False, CPU_CLIENTS, "server_cpu_us_per_req")
    ext = spread([r["external_cores"] for r in runs])
    rss = meta["rss_idle_kb"]["gateway"] / 1024
    return {
        "p50": f"**{cell(a50)} ms**{mark(a50['median'] <= TARGET_ADDED_P50_MS)}",
        "p99": f"**{cell(a99)} ms**{mark(a99['median'] <= TARGET_ADDED_P99_MS)}",
        "rps": f"**{cell(rps, '{:,.0f}')}** ({rps['concurrency']}){mark(rps['median'] >= TARGET_RPS)}",
        "cpu": f"{gw['median']:.0f} / {bare['median']:.0f} µs ({gw['median'] / bare['median']:.2f}×)",
        "rss": f"{rss:.0f} MB{mark(rss <= TARGET_RSS_MB)}",
        "rows": f"{meta['ledger']['rows']:,} / {meta['ledger']['requests_sent']:,}{mark(meta['ledger']['pass'])}",
        "run": f"{meta['started']}, git {meta['git']}, load {meta['loadavg_before'][0]:.1f}, other processes "
               f"{ext['median']:.2f} cores",
    }


def main() -> int:
    cols = [(name, column(path)) for name, path in COLUMNS if path.exists()]
    missing = [str(path.relative_to(REPO)) for _, path in COLUMNS if not path.exists()]
    if missing:
        print(f"readme_overhead: not run yet, left out: {', '.join(missing)}", file=sys.stderr)
    rows = (("added latency p50, 1 client", f"≤ {TARGET_ADDED_P50_MS:g} ms", "p50"),
            ("added latency p99, 1 client", f"≤ {TARGET_ADDED_P99_MS:g} ms", "p99"),
            ("max sustained RPS, 0 errors (clients)", f"≥ {TARGET_RPS:,}", "rps"),
            (f"gateway / bare proxy CPU per request, {CPU_CLIENTS} clients", "≤ 3× (governance: `scale.py`)", "cpu"),
            ("RSS idle", f"≤ {TARGET_RSS_MB} MB", "rss"),
            ("ledger rows / requests after SIGTERM", "one per request", "rows"),
            ("run", "", "run"))
    lines = ["", "Written by `python bench/overhead/readme_overhead.py` from the saved results (✗: target missed).", "",
             "| | target | " + " | ".join(name for name, _ in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    lines += [f"| {label} | {goal} | " + " | ".join(c[key] for _, c in cols) + " |" for label, goal, key in rows]
    lines.append("")
    replace_block(REPO / "README.md", "overhead", lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
