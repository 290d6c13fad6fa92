"""The CPU ratio of several ``scale.py`` runs pooled round by round: how far one run's reading can be trusted.

    python bench/overhead/scale_pool.py bench/results/scale.json bench/results/scale-repeats/*.json [-c 64]

A run of ``scale.py`` reports, per setup, the median over its rounds (2 by default) of gateway CPU per request ÷
the bare proxy's, measured seconds apart in the same block. On this 2-core machine single rounds of the same setup
have ranged over ±20 %, so one run's median can land either side of a 3× target. This pools every round of every
given run at one client count (default 64, the setting where the Redis setups reach their max RPS and the SQLite
setup within a few per cent of it) and prints, per setup, the pooled median ratio, the range of single rounds, and
each run's own median, with the runs' dates and commits. Prints markdown; writes nothing.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import orjson


def ratios(setup: dict, clients: int) -> list[float]:
    """Gateway ÷ bare CPU per request, per round, at ``clients``."""
    by_round: dict[int, dict[str, float]] = {}
    for r in setup["runs"]:
        if r["concurrency"] == clients and r["target"] in ("gateway", "bare"):
            by_round.setdefault(r["round"], {})[r["target"]] = r["server_cpu_us_per_req"]
    return [x["gateway"] / x["bare"] for _, x in sorted(by_round.items()) if len(x) == 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="scale.json files")
    ap.add_argument("-c", "--clients", type=int, default=64)
    args = ap.parse_args()
    pooled: dict[str, list[float]] = {}
    per_run: dict[str, list[str]] = {}
    lines = [f"Gateway ÷ bare proxy CPU per request at {args.clients} clients, every round of:", ""]
    for path in args.runs:
        doc = orjson.loads(path.read_bytes())
        meta = doc["meta"]
        lines.append(f"- `{path}`: {meta['started']}, git {meta['git']}, {meta['rounds']} rounds, load before "
                     f"{meta['loadavg_before'][0]:.2f}")
        for setup in doc["setups"]:
            rs = ratios(setup, args.clients)
            if rs:
                pooled.setdefault(setup["name"], []).extend(rs)
                per_run.setdefault(setup["name"], []).append(f"{statistics.median(rs):.2f}")
    lines += ["", "| setup | rounds | pooled median | single rounds | each run's median |", "|---|---:|---:|---:|---|"]
    for name, rs in pooled.items():
        lines.append(f"| {name} | {len(rs)} | **{statistics.median(rs):.2f}×** | {min(rs):.2f}–{max(rs):.2f}× | "
                     f"{', '.join(per_run[name])} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
