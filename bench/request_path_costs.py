"""What two request-path steps cost on their own: counting a prompt's tokens and a learned router's prediction.

The README quotes both (cost estimation before a call; a ``policy: learned`` tier's prediction), so both come
from here:

- **token count**: ``tierwise.cost.count_text_tokens`` on ~200-token prompts, each one new (no cache can help), and
  the gateway's estimator path on a prompt it has seen before (its per-encoding count cache).
- **learned prediction**: a router trained with the public CLI (``tierwise train-router``, ``--kind ensemble``, on
  the train split of a shared outcome set), loaded as the gateway loads it, timed on test-split prompts: embedding
  plus predictor, and the predictor alone.

Writes ``bench/results/request_path_costs.md`` with the machine and its load. Single thread, wall time per call.

    python bench/request_path_costs.py [--data routellm/mmlu] [--embedder minilm-onnx]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "request_path_costs.md"
_SENTENCE = ("the model answers questions about invoices, budgets, routing and cost per token for every tier "
             "while the gateway books one ledger record per request and settles reservations")
WORDS = _SENTENCE.split(" ")


def prompt(rng: random.Random, n_words: int = 150) -> str:
    """~200 tokens of English-like text, different every call."""
    return " ".join(rng.choice(WORDS) + (str(rng.randrange(1000)) if rng.random() < 0.1 else "")
                    for _ in range(n_words))


def percentiles(samples_s: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(samples_s, n=100)
    return q[49], q[98]


def time_token_counts(n: int) -> dict[str, float]:
    from tierwise.cost import count_text_tokens
    from tierwise.cost.tokens import count_chat_tokens

    rng = random.Random(1)
    texts = [prompt(rng) for _ in range(n)]
    count_text_tokens("warm up the encoding", "o200k_base")
    fresh, tokens = [], []
    for t in texts:
        t0 = time.perf_counter()
        tokens.append(count_text_tokens(t, "o200k_base"))
        fresh.append(time.perf_counter() - t0)
    seen = []
    body = {"messages": [{"role": "user", "content": texts[0]}]}
    count_chat_tokens(body, None, "gpt-4o")  # the estimator's path (gpt-4o: o200k_base), now remembered
    for _ in range(n):
        t0 = time.perf_counter()
        count_chat_tokens(body, None, "gpt-4o")
        seen.append(time.perf_counter() - t0)
    (f50, f99), (s50, s99) = percentiles(fresh), percentiles(seen)
    return {"tokens_p50": statistics.median(tokens), "fresh_p50_us": f50 * 1e6, "fresh_p99_us": f99 * 1e6,
            "seen_p50_us": s50 * 1e6, "seen_p99_us": s99 * 1e6, "n": n}


def time_learned(data: str, embedder: str, n: int) -> dict[str, float | str]:
    from tierwise.embed import get_embedder
    from tierwise.lab.datasets import load_set
    from tierwise.routing.learned.artifact import load_router
    from tierwise.routing.learned.embed_cache import routing_text

    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "router.npz"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tierwise.cli", "train-router", "--data", data, "--out", str(artifact),
                        "--kind", "ensemble", "--embedder", embedder], check=True, capture_output=True, text=True)
        train_s = time.perf_counter() - t0
        router = load_router(artifact)
    texts = [p.prompt for p in load_set(data).split("test").prompts][:n]
    router.predict(texts[:3])  # load the embedder
    whole, only = [], []
    for t in texts:
        t0 = time.perf_counter()
        router.predict([t])
        whole.append(time.perf_counter() - t0)
    E = get_embedder(router.embedder_name).embed([routing_text(texts[0], router.tail_chars)])
    for _ in range(len(texts)):
        t0 = time.perf_counter()
        router.predict_embeddings(E)
        only.append(time.perf_counter() - t0)
    (w50, w99) = percentiles(whole)
    out: dict[str, float | str] = {"data": data, "embedder": embedder, "n": len(texts), "train_s": train_s,
                                   "predict_p50_ms": w50 * 1e3, "predict_p99_ms": w99 * 1e3}
    out["predictor_p50_ms"] = statistics.median(only) * 1e3
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="routellm/mmlu", help="outcome set to train the router on (train split)")
    ap.add_argument("--embedder", default="minilm-onnx")
    ap.add_argument("--n", type=int, default=500, help="timed calls per measurement")
    args = ap.parse_args()
    load_start = os.getloadavg()
    tok = time_token_counts(args.n * 4)
    learned = time_learned(args.data, args.embedder, args.n)
    load_end = os.getloadavg()
    lines = [
        "# Request-path step costs",
        "",
        f"Generated by `python bench/request_path_costs.py --data {args.data} --embedder {args.embedder}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.machine()}, {os.cpu_count()} cores, one "
        f"thread; load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end (other work shares the "
        "machine: wall times rise with load).",
        "",
        "| step | p50 | p99 | calls |",
        "|---|---|---|---|",
        f"| count tokens, new ~{tok['tokens_p50']:.0f}-token prompt (`o200k_base`) | {tok['fresh_p50_us']:.1f} µs "
        f"| {tok['fresh_p99_us']:.1f} µs | {tok['n']} |",
        f"| count tokens, a prompt seen before (estimator cache) | {tok['seen_p50_us']:.2f} µs "
        f"| {tok['seen_p99_us']:.2f} µs | {tok['n']} |",
        f"| learned router predict, one prompt ({learned['embedder']} embedding + ensemble predictor) "
        f"| {learned['predict_p50_ms']:.2f} ms | {learned['predict_p99_ms']:.2f} ms | {learned['n']} |",
    ]
    lines.append(f"| … of which the predictor alone | {learned['predictor_p50_ms']:.3f} ms | | {learned['n']} |")
    lines += ["", f"The router was trained by `tierwise train-router --data {args.data} --kind ensemble --embedder "
              f"{args.embedder}` ({learned['train_s']:.0f} s, train split) and timed on test-split prompts.", ""]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
