"""Loader for ``routellm_evals`` (Ong et al. 2024, "RouteLLM: Learning to Route LLMs with Preference Data").

Strong/weak pair: ``gpt-4-1106-preview`` vs ``mistralai/Mixtral-8x7B-Instruct-v0.1`` on MMLU (14,042 prompts),
GSM8K (1,319, with responses) and MT-Bench (80 two-turn questions, GPT-4 judge scores 1-10). Sets:
``routellm/mmlu``, ``routellm/gsm8k``, ``routellm/mt_bench``.

- Contaminated prompts are dropped exactly as ``routellm/evals/benchmarks.py`` does (MMLU/GSM8K: prompt in
  ``contaminated_prompts.jsonl``; MT-Bench: either turn in it), so single-model scores match the paper's.
- quality: MMLU/GSM8K correctness → 1.0/0.0; MT-Bench: mean of the two turns' judge scores / 10 (RouteLLM's APGR and
  CPT are invariant to this rescaling).
- cost: the source stores none; RouteLLM's paper prices its cost analysis at $24.7 per 1M tokens for GPT-4 and
  $0.24 per 1M for Mixtral 8x7B (blended). We apply those to tiktoken cl100k counts (an approximation for Mixtral's
  own tokenizer) of the prompt plus the response where the source stores one (GSM8K only); MMLU and MT-Bench costs
  count prompt tokens only. The paper's own x-axis is "% of strong-model calls", which RouteLLM's APGR/CPT use.
- split: none upstream (the paper evaluates routers trained on other data); a documented 50/50 hash split.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from tierwise.lab.datasets._common import build_set, iter_jsonl
from tierwise.lab.datasets.format import ModelOutcome, OutcomeSet, PromptOutcomes
from tierwise.lab.datasets.paths import dataset_dir
from tierwise.lab.datasets.splits import hash_split, hash_split_meta
from tierwise.lab.datasets.tokens import count_tokens_batch

FOLDER = "routellm_evals"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"
MODELS = [WEAK, STRONG]
USD_PER_MTOK = {STRONG: 24.7, WEAK: 0.24}
BENCHMARKS = ("mmlu", "gsm8k", "mt_bench")


def set_names() -> list[str]:
    return [f"routellm/{b}" for b in BENCHMARKS]


def _contaminated(folder: Path, bench: str) -> set[str]:
    return {row["eval_prompt"] for row in iter_jsonl(folder / bench / "contaminated_prompts.jsonl")}


def _read_csv(path: Path) -> list[dict[str, str]]:
    csv.field_size_limit(1 << 30)
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _cost(model: str, tokens: int) -> float:
    return tokens * USD_PER_MTOK[model] / 1e6


def _binary_rows(
    folder: Path, bench: str, decontaminate: bool
) -> tuple[list[tuple[str, dict[str, str]]], int]:
    if bench == "mmlu":
        files = sorted((folder / "mmlu" / "responses").glob("mmlu_*.csv"))
        rows = [(f"{f.stem.removeprefix('mmlu_')}-{i}", r) for f in files for i, r in enumerate(_read_csv(f))]
    else:
        rows = [(f"gsm8k-{i}", r) for i, r in enumerate(_read_csv(folder / "gsm8k" / "gsm8k_responses.csv"))]
    bad = _contaminated(folder, bench) if decontaminate else set()
    return [(pid, r) for pid, r in rows if r["prompt"] not in bad], len(rows)


def _load_binary(folder: Path, bench: str, decontaminate: bool) -> tuple[list[PromptOutcomes], int]:
    rows, n_source = _binary_rows(folder, bench, decontaminate)
    in_tok = count_tokens_batch([r["prompt"] for _, r in rows])
    has_resp = bench == "gsm8k"
    out_tok = {
        m: count_tokens_batch([r[f"{m}_response"] for _, r in rows]) if has_resp else None for m in MODELS
    }
    prompts = []
    for i, (pid, r) in enumerate(rows):
        models = {}
        for m in MODELS:
            col = out_tok[m]
            out = col[i] if col is not None else None
            models[m] = ModelOutcome(
                answer=r[f"{m}_response"] if has_resp else None,
                quality=1.0 if r[m].strip() == "True" else 0.0,
                input_tokens=in_tok[i],
                output_tokens=out,
                cost_usd=_cost(m, in_tok[i] + (out or 0)),
            )
        prompts.append(
            PromptOutcomes(id=pid, split=hash_split(r["prompt"]), prompt=r["prompt"], models=models)
        )
    return prompts, n_source


def _load_mt_bench(folder: Path, decontaminate: bool) -> tuple[list[PromptOutcomes], int]:
    questions = list(iter_jsonl(folder / "mt_bench" / "question.jsonl"))
    bad = _contaminated(folder, "mt_bench") if decontaminate else set()
    kept = [q for q in questions if q["turns"][0] not in bad and q["turns"][1] not in bad]
    scores: dict[tuple[int, str], list[float]] = {}
    for j in iter_jsonl(folder / "mt_bench" / "judgements.jsonl"):
        scores.setdefault((int(j["question_id"]), j["model"]), []).append(float(j["score"]))
    in_tok = count_tokens_batch(["\n".join(q["turns"]) for q in kept])
    prompts = []
    for i, q in enumerate(kept):
        qid = int(q["question_id"])
        models = {}
        for m in MODELS:
            s = scores[(qid, m)]
            if len(s) != 2:
                raise ValueError(
                    f"routellm/mt_bench: question {qid} has {len(s)} judgements for {m}, expected 2"
                )
            models[m] = ModelOutcome(
                answer=None,
                quality=sum(s) / len(s) / 10.0,
                input_tokens=in_tok[i],
                output_tokens=None,
                cost_usd=_cost(m, in_tok[i]),
            )
        meta: dict[str, Any] = {"category": q.get("category"), "turns": q["turns"]}
        prompts.append(
            PromptOutcomes(
                id=f"mt-{qid}",
                split=hash_split(q["turns"][0]),
                prompt=q["turns"][0],
                models=models,
                meta=meta,
            )
        )
    return prompts, len(questions)


def load(name: str, root: Path | None = None, *, decontaminate: bool = True) -> OutcomeSet:
    """Load ``routellm/<bench>``; ``decontaminate=False`` keeps RouteLLM's contaminated prompts (for checking the
    README's full-set numbers only: the registry always decontaminates, as the paper does)."""
    bench = name.removeprefix("routellm/")
    if bench not in BENCHMARKS:
        raise KeyError(name)
    folder = dataset_dir(FOLDER, root)
    if bench == "mt_bench":
        prompts, n_source = _load_mt_bench(folder, decontaminate)
    else:
        prompts, n_source = _load_binary(folder, bench, decontaminate)
    meta = {
        "source": f"shared/data/{FOLDER} (github.com/lm-sys/RouteLLM @ 0b64fdaf, routellm/evals)",
        "paper": "Ong et al., RouteLLM: Learning to Route LLMs with Preference Data, arXiv:2406.18665",
        "benchmark": bench,
        "weak_model": WEAK,
        "strong_model": STRONG,
        "rows_in_source": n_source,
        "decontaminated": decontaminate,
        "dropped_contaminated": n_source - len(prompts),
        "quality": (
            "mean of the two turns' GPT-4 judge scores / 10"
            if bench == "mt_bench"
            else "1.0 if correct else 0.0"
        ),
        "prices_usd_per_1m_tokens": USD_PER_MTOK,
        "cost": (
            "RouteLLM paper's blended $/1M tokens × tiktoken cl100k tokens of the prompt"
            + (
                " plus the stored response"
                if bench == "gsm8k"
                else " (responses not stored: output not counted)"
            )
        ),
        "split": hash_split_meta(key="prompt text (MT-Bench: first turn)"),
    }
    return build_set(name, list(MODELS), prompts, meta)
