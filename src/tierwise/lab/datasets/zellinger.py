"""Loader for ``llm_cascades_zellinger2025`` (Zellinger & Thomson 2025, "Rational Tuning of LLM Cascades").

Per-query traces of two model chains on five benchmarks; every model answered every query, so any router or cascade
can be replayed. What the source gives, and how it maps to the outcome format:

- quality: ``correct`` (exact match for multiple choice and GSM8K, an LLM judge for TriviaQA/TruthfulQA) → 1.0/0.0;
- cost: ``cost_usd`` per query as recorded by the authors (Fireworks / OpenAI prices), tokens ``in``/``out``, latency;
- confidence: ``exp(raw_confidence)``; ``raw_confidence`` is the model's log-probability signal (<= 0), so
  ``log(confidence)`` recovers it exactly. The paper calibrates it with a logistic regression; we store it raw.
- splits: the authors' own train/test files. GSM8K's test traces are missing upstream (over 4 MiB), so
  ``zellinger/gsm8k/*`` splits the 300 train queries with the documented hash split (``splits.hash_split``).
- reference: the gold answer from ``<bench>_<split>_questions`` (TriviaQA's question files are missing: None).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tierwise.lab.datasets._common import build_set, iter_jsonl
from tierwise.lab.datasets.format import ModelOutcome, OutcomeSet, PromptOutcomes, Split
from tierwise.lab.datasets.paths import dataset_dir
from tierwise.lab.datasets.splits import hash_split, hash_split_meta, native_split_meta

FOLDER = "llm_cascades_zellinger2025"
BENCHMARKS = ("mmlu", "medmcqa", "triviaqa", "truthfulqa", "gsm8k")
CHAINS = {
    "llama": ["llama3.2-1b", "llama3.2-3b", "llama3.1-8b", "llama3.1-70b", "llama3.1-405b"],
    "qwen_oai": ["gpt-4o-mini", "qwen2.5-32b-coder-instruct", "qwen2.5-72b-instruct", "gpt-4o"],
}
NO_TEST_SPLIT = {"gsm8k"}


def set_names() -> list[str]:
    return [f"zellinger/{b}/{c}" for b in BENCHMARKS for c in CHAINS]


def _reference(bench: str, q: dict[str, Any] | None) -> str | None:
    if q is None:
        return None
    if bench == "mmlu":
        return "ABCD"[int(q["answer"])]
    if bench == "medmcqa":
        return "ABCD"[int(q["cop"])]
    if bench == "truthfulqa":
        return q.get("best_answer")
    if bench == "gsm8k":
        ans = str(q.get("answer", ""))
        return ans.split("####")[-1].strip() if "####" in ans else ans
    return None


def _questions(folder: Path, bench: str, split: str) -> list[dict[str, Any]] | None:
    path = folder / bench / f"{bench}_{split}_questions.jsonl.gz"
    return list(iter_jsonl(path)) if path.exists() else None


def _outcome(m: dict[str, Any]) -> ModelOutcome:
    raw = m.get("raw_confidence")
    return ModelOutcome(
        answer=m["answer"],
        quality=1.0 if m["correct"] else 0.0,
        input_tokens=int(m["tokens"]["in"]),
        output_tokens=int(m["tokens"]["out"]),
        cost_usd=float(m["cost_usd"]),
        confidence=None if raw is None else math.exp(min(0.0, float(raw))),
        latency_ms=float(m["latency_ms"]),
    )


def load(name: str, root: Path | None = None) -> OutcomeSet:
    _, bench, chain = name.split("/")
    if bench not in BENCHMARKS or chain not in CHAINS:
        raise KeyError(name)
    folder = dataset_dir(FOLDER, root)
    models = CHAINS[chain]
    prompts: list[PromptOutcomes] = []
    source_splits: tuple[str, ...] = ("train",) if bench in NO_TEST_SPLIT else ("train", "test")
    for src_split in source_splits:
        questions = _questions(folder, bench, src_split)
        trace_file = folder / bench / f"{bench}_{chain}_{src_split}.jsonl.gz"
        for row in iter_jsonl(trace_file):
            idx = int(row["idx"])
            q = questions[idx] if questions is not None else None
            split: Split = hash_split(row["user_prompt"]) if bench in NO_TEST_SPLIT else src_split  # type: ignore[assignment]
            prompts.append(
                PromptOutcomes(
                    id=f"{src_split}-{idx}",
                    split=split,
                    prompt=row["user_prompt"],
                    system=row.get("system_prompt"),
                    reference=_reference(bench, q),
                    models={m: _outcome(row["models"][m]) for m in models},
                )
            )
    split_meta = (
        dict(
            hash_split_meta(), note="upstream gsm8k test traces are missing; the 300 train queries are split"
        )
        if bench in NO_TEST_SPLIT
        else native_split_meta("the authors' train/test files")
    )
    meta = {
        "source": f"shared/data/{FOLDER} (github.com/mzelling/rational-llm-cascades @ 0d9c8610)",
        "paper": "Zellinger & Thomson, Rational Tuning of LLM Cascades via Probabilistic Modeling, arXiv:2501.09345",
        "benchmark": bench,
        "chain": chain,
        "quality": "1.0 if the source's `correct` else 0.0 (exact match for MC/GSM8K, LLM judge for open-ended)",
        "cost": "the source's per-query cost_usd (authors' recorded provider prices); tokens and latency as recorded",
        "confidence": "exp(raw_confidence); raw_confidence is the model's log-probability signal (<= 0)",
        "split": split_meta,
    }
    return build_set(name, models, prompts, meta)
