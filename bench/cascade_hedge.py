"""A hedged cascade against a plain one on the real local tier (SmolLM2-135M -> Qwen2.5-Coder-0.5B, llama.cpp).

1. Budget, on the train half (even rows of ``local_cascade/prompts.jsonl``): a plain cascade gateway answers every
   train prompt; the hedge budget is the p90 latency of its small rung (from the ledger). Nothing is read on test.
2. Test half (odd rows): a plain and a hedged gateway (same threshold, ``hedge_after_ms`` = the budget) each answer
   every test prompt; the order alternates per prompt so neither always runs on a warmer machine. Reported: p50/p95
   request latency, mean cost (the gateway's ``x-tierwise-cost-usd``, cancelled calls at their estimate), accuracy,
   and how many hedges fired, with the load average.

The log-prob threshold (``--threshold``, default 0.738) is the one ``bench/rollout_e2e.py`` calibrated for this
chain on its own traffic, not fitted here. Both models run in-process with one thread each on a 2-core machine: a
hedge runs both at once, so it competes for the cores with the rung it hedges — measured as it is.

Writes bench/results/cascade_hedge.md. Run: ``.venv/bin/python bench/cascade_hedge.py``. Needs the local tier.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "local_cascade"))
from run import LARGE, MODELS_YAML, SMALL, SYSTEM, Gateway, correct  # noqa: E402

from tierwise.ledger.store import SQLiteLedgerStore  # noqa: E402

RESULTS = HERE / "results"


def config(port: int, db: Path, threshold: float, hedge_ms: float | None) -> str:
    hedge = f"\n      hedge_after_ms: {hedge_ms:.1f}" if hedge_ms else ""
    return f"""
server: {{port: {port}, request_deadline_s: 300}}
ledger: {{path: "{db}", flush_interval_ms: 50}}
providers:
  local: {{format: llamacpp, n_threads: 1, n_ctx: 1024, timeout_s: 240}}
models:{MODELS_YAML}
tiers:
  cascade:
    policy: cascade
    cascade:{hedge}
      rungs:
        - {{model: {SMALL}, gate: {{kind: logprob, threshold: {threshold:.6f}}}}}
        - {{model: {LARGE}}}
default_tier: cascade
fallback_model: {SMALL}
"""


class Gw(Gateway):
    """The local-cascade bench's gateway process with this bench's config."""

    def __init__(self, workdir: Path, name: str, threshold: float, hedge_ms: float | None) -> None:
        import run

        self.db = workdir / f"{name}.db"
        orig = run.config
        run.config = lambda port, db, thr: config(port, self.db, threshold, hedge_ms)  # noqa: ARG005
        try:
            super().__init__(0.0, workdir)
        finally:
            run.config = orig

    def ask_one(self, prompt: str) -> tuple[float, float, str, str]:
        body = {"model": "cascade", "max_tokens": 12, "temperature": 0, "seed": 1,
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]}
        t0 = time.perf_counter()
        r = httpx.post(self.url, json=body, timeout=300)
        took = time.perf_counter() - t0
        r.raise_for_status()
        return took * 1000, float(r.headers["x-tierwise-cost-usd"]), r.headers["x-tierwise-model"], \
            r.json()["choices"][0]["message"]["content"] or ""

    def rows(self) -> list[dict]:
        return list(SQLiteLedgerStore(self.db).iter_rows())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threshold", type=float, default=0.738)
    args = ap.parse_args()
    rows = [json.loads(x) for x in (HERE / "local_cascade" / "prompts.jsonl").read_text().splitlines()]
    train, test = rows[0::2], rows[1::2]
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        plain = Gw(work, "plain", args.threshold, None)
        try:
            for r in train:
                plain.ask_one(r["prompt"])
            small_ms = [a["latency_ms"] for row in plain.rows() for a in row["attempts"] if a["model"] == SMALL]
            budget = float(np.percentile(small_ms, 90))
            print(f"hedge budget (train p90 of the small rung, n={len(small_ms)}): {budget:.0f} ms", flush=True)
            hedged = Gw(work, "hedged", args.threshold, budget)
            try:
                res: dict[str, list[tuple[float, float, str, bool]]] = {"plain": [], "hedged": []}
                n_before = len(plain.rows())
                for k, r in enumerate(test):
                    order = [("plain", plain), ("hedged", hedged)][:: 1 if k % 2 == 0 else -1]
                    for name, gw in order:
                        ms, usd, model, text = gw.ask_one(r["prompt"])
                        res[name].append((ms, usd, model, correct(r, text)))
                fired = sum(any("hedge:" in n for n in row["notes"]) for row in hedged.rows())
                plain_test = plain.rows()[n_before:]
                assert len(plain_test) == len(test)
            finally:
                hedged.stop()
        finally:
            plain.stop()
    load1 = os.getloadavg()
    lines = [
        "# Hedged cascade vs plain cascade on the local tier",
        "",
        f"`python bench/cascade_hedge.py` — {len(test)} test prompts (odd rows of local_cascade/prompts.jsonl), "
        f"{SMALL} -> {LARGE}, log-prob threshold {args.threshold} (from bench/rollout_e2e.py, not fitted here); "
        f"hedge_after_ms = {budget:.0f} (p90 of the small rung's latency on the {len(train)} train prompts).",
        f"Machine: {os.cpu_count()} cores shared with other sessions; load average {load0[0]:.1f} before, "
        f"{load1[0]:.1f} after. Plain and hedged requests alternate per prompt.",
        "",
        "| cascade | p50 ms | p95 ms | mean cost $/req | accuracy | served by large | hedges fired |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("plain", "hedged"):
        ms = np.array([x[0] for x in res[name]])
        lines.append(
            f"| {name} | {np.percentile(ms, 50):.0f} | {np.percentile(ms, 95):.0f} | "
            f"{np.mean([x[1] for x in res[name]]):.3g} | {np.mean([x[3] for x in res[name]]):.3f} | "
            f"{sum(x[2] == LARGE for x in res[name])}/{len(test)} | {fired if name == 'hedged' else '-'} |")
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cascade_hedge.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
