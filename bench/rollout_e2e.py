"""A scripted rollout, end to end, every step a tierwise command (issue 11, "Measured").

The operator starts with everything on the flagship and ends with a calibrated cascade promoted in production:

1. capture — a labelled prompt file (bench/local_cascade/prompts.jsonl: arithmetic, sentiment labels, capitals,
   unit conversions, known answers) goes through a real ``tierwise serve`` whose only tier is the (mock) flagship,
   with ``rollout.capture`` on; each answer gets user feedback (1 when it contains the known answer, else 0);
2. ``tierwise sample`` — every captured prompt into a labelling file; the labeller fills in ``reference`` (the known
   answer);
3. ``tierwise trial`` — the two local models of examples/local.yaml (llama.cpp in-process: SmolLM2-135M,
   Qwen2.5-Coder-0.5B) answer every prompt through their real provider; judged ``contains`` against the reference;
4. ``tierwise calibrate --data <trial outcome set>`` — the cheapest chain and log-prob threshold that keeps
   ``--target`` x the flagship's quality, with the lab's guards; the fitted tier becomes a ``canary:`` at 20 %;
5. canary — the prompts again, each from ``--repeat`` sessions, through ``tierwise serve`` with the canary, with
   feedback as in 1;
6. ``tierwise canary report`` — cost and quality of each arm with 95 % intervals;
7. ``tierwise canary promote --write-config``;
8. ``tierwise calibrate --from-ledger`` on the promoted config over the canary window (re-fit proposal and drift).

The flagship is a mock upstream (OpenAI wire format, priced like gpt-4o: $2.50 / $10 per 1M tokens) answering every
prompt with its known answer: a stand-in for "the big model is right". ``--mock-local`` replaces the local models by a
second mock upstream too (the small one right on arithmetic only, the larger one on everything but capitals): that is
the reduced form CI runs (tests/test_rollout_e2e.py). Real run: writes bench/results/rollout_e2e.md and .json;
``--out DIR`` writes there instead. Needs the local tier (scripts/install-local-models.sh) unless --mock-local.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakes.upstream import FakeUpstream  # noqa: E402
from tierwise.rollout.trial_judge import Judge, rule_score  # noqa: E402

PROMPTS = ROOT / "bench" / "local_cascade" / "prompts.jsonl"
SYSTEM = "Reply with the final answer only: a number, a single word or a city name. No explanation."
SMALL, LARGE, FLAGSHIP = "smollm2-135m", "qwen2.5-coder-0.5b", "flagship"
CONTAINS = Judge("contains")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answer_of(body: dict[str, Any], rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return rows[body["messages"][-1]["content"]]


def base_config(work: Path, port: int, flagship_url: str, local_url: str | None) -> dict[str, Any]:
    local = yaml.safe_load((ROOT / "examples" / "local.yaml").read_text())
    models = {m: local["models"][m] for m in (SMALL, LARGE)}
    providers: dict[str, Any] = {"flag": {"format": "openai", "base_url": flagship_url, "api_key": "sk-mock",
                                          "timeout_s": 30}}
    if local_url is None:
        providers["local"] = {"format": "llamacpp", "n_threads": 1, "n_ctx": 1024, "timeout_s": 240}
    else:  # --mock-local: the same model names, served by a mock upstream
        providers["local"] = {"format": "openai", "base_url": local_url, "api_key": "sk-mock", "timeout_s": 30}
        for m in models.values():
            m.pop("gguf", None)
    models[FLAGSHIP] = {"provider": "flag", "upstream": "gpt-4o-mock", "price": {"input": 2.5, "output": 10.0}}
    return {
        "server": {"port": port, "request_deadline_s": 300},
        "ledger": {"path": str(work / "ledger.db"), "flush_interval_ms": 50},
        "providers": providers,
        "models": models,
        "tiers": {"qa": {"description": "short factual answers", "models": [FLAGSHIP]}},
        "default_tier": "qa",
        "fallback_model": FLAGSHIP,
        "rollout": {"capture": {"enabled": True}},
    }


class Serve:
    """``tierwise serve`` as a process of its own."""

    def __init__(self, cfg_path: Path, port: int) -> None:
        self.port = port
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "tierwise.cli", "serve", "--config", str(cfg_path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
        deadline = time.time() + 180
        while time.time() < deadline and self.proc.poll() is None:
            try:
                if self.http.get("/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.proc.kill()
        raise RuntimeError("gateway did not start: " + (self.proc.stderr.read() if self.proc.stderr else ""))

    def ask(self, row: dict[str, Any], session: str) -> tuple[str, str]:
        """(request id, answer) for one prompt, and the user's feedback on it."""
        body = {"model": "qa", "max_tokens": 12, "temperature": 0, "seed": 1,
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": row["prompt"]}]}
        r = self.http.post("/v1/chat/completions", json=body, headers={"X-Session-Id": session})
        r.raise_for_status()
        rid, text = r.headers["x-tierwise-request-id"], r.json()["choices"][0]["message"]["content"] or ""
        score = rule_score(CONTAINS, text, row["answer"])
        fb = self.http.post("/v1/feedback", json={"request_id": rid, "score": score})
        fb.raise_for_status()
        return rid, text

    def stop(self) -> None:
        self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)


def cli(*argv: str, ok: tuple[int, ...] = (0,)) -> str:
    r = subprocess.run([sys.executable, "-m", "tierwise.cli", *argv], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode not in ok:
        raise RuntimeError(f"tierwise {' '.join(argv)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def mock_local_models(rows: dict[str, dict[str, Any]]) -> tuple[Any, Any]:
    """(reply, logprob) of the mock local models: the small one is right, and sure, on arithmetic only; the larger
    one is right on everything but capitals."""
    def reply(body: dict[str, Any]) -> str:
        row = answer_of(body, rows)
        if body["model"] == SMALL:
            return row["answer"] if row["kind"] == "number" else "I am not sure"
        return row["answer"] if not row["id"].startswith("capital") else "London"

    def logprob(body: dict[str, Any]) -> float:
        sure = body["model"] != SMALL or answer_of(body, rows)["kind"] == "number"
        return -0.05 if sure else -1.5

    return reply, logprob


def run(out: Path, *, mock_local: bool, repeat: int, share: float, target: float) -> dict[str, Any]:
    rows = [json.loads(x) for x in PROMPTS.read_text().splitlines() if x.strip()]
    by_prompt = {r["prompt"]: r for r in rows}
    work = Path(tempfile.mkdtemp(prefix="tw-rollout-"))
    flagship = FakeUpstream().start()
    flagship.set(reply=lambda body: answer_of(body, by_prompt)["answer"], record=False)
    local = FakeUpstream().start() if mock_local else None
    if local is not None:
        reply, logprob = mock_local_models(by_prompt)
        local.set(reply=reply, logprob=logprob, record=False)
    times: dict[str, float] = {}
    result: dict[str, Any] = {"prompts": len(rows), "repeat": repeat, "share": share, "target": target,
                              "mock_local": mock_local}
    try:
        port = free_port()
        cfg = base_config(work, port, flagship.base_url, local.base_url if local else None)
        cfg_path = work / "tierwise.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

        t = time.time()
        gw = Serve(cfg_path, port)
        try:
            for i, r in enumerate(rows):
                gw.ask(r, f"capture-{i}")
        finally:
            gw.stop()
        times["1 capture (serve on the flagship, feedback)"] = time.time() - t

        t = time.time()
        labels = work / "labels.jsonl"
        cli("sample", "-c", str(cfg_path), "--out", str(labels), "--per-tier", str(len(rows)))
        lines = [json.loads(x) for x in labels.read_text().splitlines()]
        for d in lines:  # the labeller writes down the known answer
            d["reference"] = by_prompt[d["prompt"]]["answer"]
        labels.write_text("".join(json.dumps(d) + "\n" for d in lines))
        times["2 sample + label"] = time.time() - t

        t = time.time()
        trial = work / "trial"
        cli("trial", "-c", str(cfg_path), "--labels", str(labels), "--models", f"{SMALL},{LARGE}", "--judge",
            "contains", "--budget-usd", "1", "--concurrency", "2", "--out", str(trial), "--quiet")
        result["trial"] = json.loads((trial / "trial.json").read_text())
        times["3 trial (local models through their providers)"] = time.time() - t

        t = time.time()
        cand = work / "candidate.yaml"
        cand.write_text(cfg_path.read_text())
        result["calibrate"] = cli("calibrate", "--data", str(trial / "trial-qa.jsonl.gz"), "--relative-to", FLAGSHIP,
                                  "--target-quality", str(target), "--config", str(cand), "--tier", "qa")
        tier = yaml.safe_load(cand.read_text())["tiers"]["qa"]
        result["candidate_tier"] = tier
        canary = dict(cfg, canary={"name": "rollout", "share": share, "refresh_s": 1, "tiers": {"qa": tier}})
        cfg_path.write_text(yaml.safe_dump(canary, sort_keys=False))
        times["4 calibrate on the trial set"] = time.time() - t

        t = time.time()
        canary_start = time.time()
        gw = Serve(cfg_path, port)
        try:
            for k in range(repeat):
                for i, r in enumerate(rows):
                    gw.ask(r, f"user-{k}-{i}")
        finally:
            gw.stop()
        times[f"5 canary at {share:.0%} ({repeat * len(rows)} requests, feedback)"] = time.time() - t

        t = time.time()
        result["canary_report"] = json.loads(cli("canary", "report", "rollout", "-c", str(cfg_path), "--format",
                                                 "json", "--since", str(canary_start)))
        result["canary_report_text"] = cli("canary", "report", "rollout", "-c", str(cfg_path), "--since",
                                           str(canary_start))
        times["6 canary report"] = time.time() - t

        t = time.time()
        result["promote"] = cli("canary", "promote", "rollout", "-c", str(cfg_path), "--write-config", "--reason",
                                "bench: rollout_e2e")
        times["7 promote (--write-config)"] = time.time() - t

        t = time.time()
        promoted = yaml.safe_load(cfg_path.read_text())["tiers"]["qa"]
        if promoted.get("policy") == "cascade":
            result["recalibrate"] = cli("calibrate", "--from-ledger", "--config", str(cfg_path), "--tier", "qa",
                                        "--since", str(canary_start), "--propose", str(work / "next.yaml"),
                                        "--cv-folds", "0", ok=(0, 2))
        else:
            result["recalibrate"] = "(the calibrated tier is not a cascade: nothing to re-fit from the ledger)"
        times["8 calibrate --from-ledger (proposal + drift)"] = time.time() - t
    finally:
        flagship.stop()
        if local is not None:
            local.stop()
    result["times_s"] = times
    result["workdir"] = str(work)
    out.mkdir(parents=True, exist_ok=True)
    return result


def report_md(res: dict[str, Any], load_before: str, load_after: str, wall: float) -> str:
    metrics = {m["metric"]: m for m in res["canary_report"]["metrics"]}

    def f(v: Any, spec: str = ".4g") -> str:
        return "-" if v is None else format(v, spec)

    lines = [
        "# Rollout end to end (bench/rollout_e2e.py)",
        "",
        f"`python bench/rollout_e2e.py{' --mock-local' if res['mock_local'] else ''}` — {res['prompts']} prompts "
        f"with known answers (bench/local_cascade/prompts.jsonl); flagship: a mock upstream priced $2.50/$10 per 1M "
        f"tokens that answers every prompt right; local models: "
        + ("a mock upstream" if res["mock_local"] else "SmolLM2-135M and Qwen2.5-Coder-0.5B (llama.cpp, in-process, "
           "prices from the local TCO of examples/local.yaml)")
        + f"; canary share {res['share']:.0%}, each prompt from {res['repeat']} sessions; calibration target "
        f"{res['target']} x the flagship's trial quality.",
        f"Wall time {wall:.0f} s; machine: 2 cores shared with other sessions, load average (1 min) before "
        f"{load_before}, after {load_after}.",
        "",
        "## Time per step",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in res["times_s"].items()],
        "",
        "## Trial (tier qa, judge `contains` against the known answer)",
        "",
        "| model | n | quality | 95 % CI | cost $ | flagship cost $ (same prompts) | p50 latency ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    tier = res["trial"]["tiers"]["qa"]
    lines.append(f"| {tier['incumbent']} (incumbent) | {tier['n']} | {f(tier['incumbent_quality'], '.3f')} | "
                 f"[{f(tier['incumbent_ci_low'], '.3f')}, {f(tier['incumbent_ci_high'], '.3f')}] | - | - | - | - |")
    for model, c in tier["candidates"].items():
        lines.append(f"| {model} | {c['n']} | {f(c['quality'], '.3f')} | [{f(c['ci_low'], '.3f')}, "
                     f"{f(c['ci_high'], '.3f')}] | {c['cost_usd']:.6f} | {c['incumbent_cost_usd']:.6f} | "
                     f"{f(c['latency_ms_p50'], '.0f')} | {c['errors']} |")
    lines += ["", "Calibrated candidate tier (step 4):", "", "```yaml",
              yaml.safe_dump({"qa": res["candidate_tier"]}, sort_keys=False).rstrip(), "```", "",
              "## Canary arms (step 6: `tierwise canary report`)", "",
              "| metric | control | canary | difference (canary - control) | 95 % CI | significant | n per arm needed |",
              "|---|---|---|---|---|---|---|"]
    for m in metrics.values():
        lines.append(f"| {m['metric']} | {f(m['control'])} | {f(m['canary'])} | {f(m['diff'])} | "
                     f"[{f(m['low'])}, {f(m['high'])}] | {'yes' if m['significant'] else 'no'} | "
                     f"{'-' if m['n_needed'] is None or m['significant'] else m['n_needed']} |")
    cost = metrics["cost_per_request_usd"]
    lines += ["", f"Requests: control {cost['n_control']}, canary {cost['n_canary']} (quality = user feedback: 1 when "
              "the answer contains the known answer).", "", "## Promotion and re-calibration (steps 7-8)", "",
              "```", res["promote"].strip(), "", re.sub(r"\n{3,}", "\n\n", str(res["recalibrate"]).strip()), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mock-local", action="store_true", help="mock the local models too (the CI form)")
    ap.add_argument("--repeat", type=int, default=3, help="sessions per prompt in the canary step (default 3)")
    ap.add_argument("--share", type=float, default=0.2, help="canary share (default 0.2)")
    ap.add_argument("--target", type=float, default=0.95, help="quality target as a multiple of the flagship's")
    ap.add_argument("--out", help="directory for rollout_e2e.md/.json (default: bench/results)")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else ROOT / "bench" / "results"
    load_before = f"{os.getloadavg()[0]:.2f}"
    t0 = time.time()
    res = run(out, mock_local=args.mock_local, repeat=args.repeat, share=args.share, target=args.target)
    wall = time.time() - t0
    md = report_md(res, load_before, f"{os.getloadavg()[0]:.2f}", wall)
    (out / "rollout_e2e.md").write_text(md)
    (out / "rollout_e2e.json").write_text(json.dumps({k: v for k, v in res.items() if k != "canary_report_text"},
                                                     indent=2, default=str) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
