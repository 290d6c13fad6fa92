"""A real cascade, end to end, with the two local models of examples/local.yaml (issue 3, item 9).

1. Record: every prompt of ``prompts.jsonl`` (short arithmetic, sentiment labels, capitals, unit conversions; known
   answers) goes through a real `tierwise serve` to the small model (SmolLM2-135M) and to the larger one
   (Qwen2.5-Coder-0.5B), asking for logprobs; answers are graded, costs read from ``x-tierwise-cost-usd``.
2. Calibrate on the train half (even rows) with tierwise's own calibrator (the recorded rows become an outcome set:
   this is "thresholds fitted to your logged traffic"): the cheapest sub-chain and log-prob threshold whose train
   accuracy is at least ``--target`` x the larger model's, with its standard-error and selection guards. It may decide that
   cascading does not pay and serve the larger model alone.
3. Serve: a second gateway with the fitted policy; the test half (odd rows) goes through it live. In a cascade the
   gate really decides: the small model answers, its mean token log-prob is computed from the provider's logprobs,
   and the request escalates to the larger model when confidence < threshold. For transparency the report also
   shows the whole threshold curve on the test half, replayed from the recorded answers (hindsight).

Writes bench/results/local_cascade.md and .json. Run: ``.venv/bin/python bench/local_cascade/run.py``.
Needs the local tier: ``scripts/install-local-models.sh``. Takes ~3-6 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import httpx

from tierwise.lab.calibrate import CascadeCalibrator
from tierwise.lab.datasets.format import ModelOutcome, OutcomeSet, PromptOutcomes
from tierwise.lab.evaluate import cascade_tier, means, run_tier

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "bench" / "results"
SMALL, LARGE = "smollm2-135m", "qwen2.5-coder-0.5b"
SYSTEM = "Reply with the final answer only: a number, a single word or a city name. No explanation."

MODELS_YAML = (ROOT / "examples" / "local.yaml").read_text().split("models:", 1)[1].split("tiers:", 1)[0]


def config(port: int, db: Path, threshold: float | None) -> str:
    if threshold is None:  # calibration chose the larger model alone
        tier = f"""  cascade:
    models: [{LARGE}]"""
    else:
        tier = f"""  cascade:
    policy: cascade
    cascade:
      rungs:
        - {{model: {SMALL}, gate: {{kind: logprob, threshold: {threshold:.6f}}}}}
        - {{model: {LARGE}}}"""
    return f"""
server: {{port: {port}, request_deadline_s: 300}}
ledger: {{path: "{db}"}}
providers:
  local: {{format: llamacpp, n_threads: 1, n_ctx: 1024, timeout_s: 240}}
models:{MODELS_YAML}
tiers:
{tier}
default_tier: cascade
fallback_model: {SMALL}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    def __init__(self, threshold: float | None, workdir: Path) -> None:
        self.port = free_port()
        cfg = workdir / f"cascade-{self.port}.yaml"
        cfg.write_text(config(self.port, workdir / "ledger.db", threshold))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "tierwise.cli", "serve", "--config", str(cfg)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.proc.kill()
        raise RuntimeError("gateway did not start: " + (self.proc.stderr.read() if self.proc.stderr else ""))

    def ask(self, model: str, prompt: str, logprobs: bool = False) -> tuple[dict, httpx.Headers]:
        body = {"model": model, "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
                "max_tokens": 12,
                "temperature": 0, "seed": 1}
        if logprobs:
            body["logprobs"] = True
        r = httpx.post(self.url, json=body, timeout=300)
        r.raise_for_status()
        return r.json(), r.headers

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def _fold(s: str) -> str:
    return unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode().lower()


def correct(row: dict, answer: str) -> bool:
    text = _fold(answer)
    if row["kind"] == "number":
        nums = re.findall(r"-?\d+", text.replace(",", ""))
        return bool(nums) and nums[0] == row["answer"]
    if row["kind"] == "label":
        hits = sorted((text.find(lab), lab) for lab in row["labels"] if lab in text)
        return bool(hits) and hits[0][1] == row["answer"]
    return _fold(row["answer"]) in text


def confidence(resp: dict) -> float:
    lps = [t["logprob"] for t in ((resp["choices"][0].get("logprobs") or {}).get("content") or [])]
    return math.exp(sum(lps) / len(lps)) if lps else 0.0


def outcome_set(rows: list[dict]) -> OutcomeSet:
    """The recorded rows in tierwise's outcome format (train = even rows, test = odd rows)."""
    prompts = []
    for i, r in enumerate(rows):
        models = {
            SMALL: ModelOutcome(r["small_answer"], float(r["small_ok"]), None, None, r["small_cost"], r["conf"]),
            LARGE: ModelOutcome(r["large_answer"], float(r["large_ok"]), None, None, r["large_cost"]),
        }
        prompts.append(PromptOutcomes(r["id"], "train" if i % 2 == 0 else "test", r["prompt"], models))
    return OutcomeSet("local-cascade", [SMALL, LARGE], prompts, {"source": "bench/local_cascade"})


def calibrate(oset: OutcomeSet, target: float, force_cascade: bool = False) -> tuple[float | None, str]:
    """(threshold, or None for 'large alone'; a description) fitted on the train split by tierwise's calibrator."""
    chain = [SMALL, LARGE] if force_cascade else None
    calib = CascadeCalibrator(oset.split("train"), gate="logprob", chain=chain, ref_model=LARGE)
    fit = calib.fit(calib.constraint_quality(target, z=1.0))
    if fit.chain == [SMALL, LARGE]:
        return fit.thresholds[0], f"cascade, log-prob threshold {fit.thresholds[0]:.3f}"
    if fit.chain == [LARGE]:
        return None, "larger model alone (cascading does not pay on train)"
    return 0.0, "small model alone (it meets the target on train)"


def replayed_curve(test: OutcomeSet) -> list[tuple[float, float, float]]:
    """(threshold, accuracy, cost per 1M requests) of the cascade on the test half, replayed through the engine."""
    out = []
    for t in (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        res = run_tier(test, cascade_tier([SMALL, LARGE], "logprob", [t]))
        cost, quality = means(res)
        out.append((t, quality, cost * 1e6))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", type=float, default=0.99, help="fraction of the large model's train accuracy")
    args = ap.parse_args()
    rows = [json.loads(x) for x in (HERE / "prompts.jsonl").read_text().splitlines()]
    work = Path(tempfile.mkdtemp(prefix="tw-local-cascade-"))
    t0 = time.time()
    gw = Gateway(1.0, work)
    try:
        for r in rows:
            s, sh = gw.ask(SMALL, r["prompt"], logprobs=True)  # the confidence the gate will see
            lg, lh = gw.ask(LARGE, r["prompt"])
            r["small_answer"], r["large_answer"] = s["choices"][0]["message"]["content"], lg["choices"][0]["message"]["content"]
            r["small_ok"], r["large_ok"] = correct(r, r["small_answer"]), correct(r, r["large_answer"])
            r["conf"] = confidence(s)
            r["small_cost"], r["large_cost"] = float(sh["x-tierwise-cost-usd"]), float(lh["x-tierwise-cost-usd"])
    finally:
        gw.stop()
    train, test = rows[0::2], rows[1::2]
    oset = outcome_set(rows)
    threshold, policy = calibrate(oset, args.target)
    forced, forced_policy = calibrate(oset, args.target, force_cascade=True)
    for key, thr in (("cascade", threshold), ("forced", forced)):
        gw = Gateway(thr, work)
        try:
            for r in test:
                resp, h = gw.ask("cascade", r["prompt"])
                r[f"{key}_answer"] = resp["choices"][0]["message"]["content"]
                r[f"{key}_ok"] = correct(r, r[f"{key}_answer"])
                r[f"{key}_cost"] = float(h["x-tierwise-cost-usd"])
                r[f"{key}_model"] = h["x-tierwise-model"]
        finally:
            gw.stop()
    n = len(test)

    def acc(key: str) -> float:
        return sum(r[key] for r in test) / n

    def cost(key: str) -> float:
        return sum(r[key] for r in test) / n * 1e6  # $ per 1M requests

    table = [
        ("always small (SmolLM2-135M)", acc("small_ok"), cost("small_cost"), 0.0),
        ("always large (Qwen2.5-Coder-0.5B)", acc("large_ok"), cost("large_cost"), 1.0),
        (f"calibrated on train: {policy}", acc("cascade_ok"),
         cost("cascade_cost"), sum(r["cascade_model"] == LARGE for r in test) / n),
        (f"cascade forced (chain fixed to small → large): {forced_policy}", acc("forced_ok"),
         cost("forced_cost"), sum(r["forced_model"] == LARGE for r in test) / n),
    ]
    lines = [
        "# Local cascade, end to end (SmolLM2-135M -> Qwen2.5-Coder-0.5B, llama.cpp in-process)",
        "",
        f"`python bench/local_cascade/run.py` — {len(rows)} prompts with known answers ({HERE.name}/prompts.jsonl), "
        f"train = even rows ({len(train)}), test = odd rows ({n}); threshold fit on train for "
        f"{args.target:.2f} x the large model's train accuracy; test rows served live through `tierwise serve`.",
        f"Wall time {time.time() - t0:.0f} s; machine: {os.cpu_count()} cores, load average before/after "
        f"{os.getloadavg()[0]:.2f}. Costs are the local TCO prices of examples/local.yaml.",
        "",
        "| policy (test split) | accuracy | cost $ per 1M requests | share served by large |",
        "|---|---|---|---|",
        *[f"| {name} | {a:.3f} | {c:.2f} | {e:.2f} |" for name, a, c, e in table],
        "",
        f"Train accuracy: small {sum(r['small_ok'] for r in train) / len(train):.3f}, "
        f"large {sum(r['large_ok'] for r in train) / len(train):.3f}.",
        "",
        "The cascade's whole threshold curve on the test half, replayed from the recorded answers through the engine "
        "(thresholds read off the test set: hindsight, for transparency only):",
        "",
        "| threshold | accuracy | cost $ per 1M requests |",
        "|---|---|---|",
        *[f"| {t:.1f} | {q:.3f} | {c:.2f} |" for t, q, c in replayed_curve(oset.split("test"))],
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "local_cascade.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "local_cascade.json").write_text(json.dumps({"threshold": threshold, "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
