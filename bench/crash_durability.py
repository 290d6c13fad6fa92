"""SIGKILL `tierwise serve` under concurrent load, restart it, and count what the ledger kept.

    python bench/crash_durability.py [--rounds 5] [--clients 16] [--load-s 3]

Each round: a real gateway process (SQLite ledger, crash journal on, batch and flush interval so large that
nothing reaches SQLite before the kill), ``--clients`` closed-loop clients (every third request streams), SIGKILL
after ``--load-s`` seconds, a restart (which replays the journal) and a SIGTERM. Every request carries a unique
``user`` that the mock upstream records, so each upstream call is matched to its row independently of the
gateway's own bookkeeping (``tests/crash_scenario.py``, the same scenario ``tests/test_crash_durability.py`` runs
in CI in a shorter form). Writes ``bench/results/crash_durability.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench" / "overhead"))

import procs  # noqa: E402

from tests.crash_scenario import run  # noqa: E402

COLUMNS = ("acknowledged_responses", "upstream_calls", "ledger_rows", "interrupted_rows", "problems")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--load-s", type=float, default=3.0)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "crash_durability.md")
    args = ap.parse_args()
    load0, t0 = procs.loadavg(), time.time()
    summaries, problems = [], []
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="tierwise-crash-") as tmp:
            res = run(Path(tmp), clients=args.clients, load_s=args.load_s)
        summaries.append(res.summary())
        problems += res.problems()[:5]
        print(f"round {i + 1}: {summaries[-1]}", flush=True)
    m = procs.machine_facts()
    lines = [
        "# Crash durability: SIGKILL under load, then count the ledger",
        "",
        f"Command: `python bench/crash_durability.py --rounds {args.rounds} --clients {args.clients} "
        f"--load-s {args.load_s:g}` — {dt.datetime.now().isoformat(timespec='seconds')}, {time.time() - t0:.0f} s.",
        f"Machine: {m['nproc']} cores, {m['cpu_model']}, Python {m['python']}. Load average before {load0}, "
        f"after {procs.loadavg()}.",
        "",
        "acknowledged = complete 200 answers the clients received (streams up to `[DONE]`); upstream calls = chat "
        "requests the mock upstream counted; interrupted = rows booked at the pre-call estimate for requests the "
        "kill cut off after their upstream call began; problems = acknowledged answers without exactly one `ok` "
        "row, upstream calls without a row, or duplicated rows (must be 0).",
        "",
        "| round | " + " | ".join(c.replace("_", " ") for c in COLUMNS) + " |",
        "|---:|" + "---:|" * len(COLUMNS),
    ]
    for i, s in enumerate(summaries, 1):
        lines.append(f"| {i} | " + " | ".join(f"{s[c]:,}" for c in COLUMNS) + " |")
    total = {c: sum(int(s[c]) for s in summaries) for c in COLUMNS}
    lines.append("| **all** | " + " | ".join(f"**{total[c]:,}**" for c in COLUMNS) + " |")
    lines += ["", f"**{total['problems']}** problems in all rounds." if total["problems"] else
              "Lost or duplicated records: **0** — every acknowledged answer has exactly one `ok` row and every "
              "upstream call the mock counted has a row. Rows beyond the upstream calls are requests the kill cut "
              "off between their journal line and their upstream call: booked at their estimate, since tierwise "
              "cannot know whether the call left the machine.", ""]
    if problems:
        lines += ["First problems:", *[f"- {p}" for p in problems], ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
