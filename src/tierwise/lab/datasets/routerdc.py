"""Loader for ``routerdc_chen2024`` (Chen et al., NeurIPS 2024, "RouterDC"): 7 open ~7B models, quality only.

Sets: ``routerdc/<task>`` for the in-distribution tasks with RouterDC's own train/test files (mmlu, gsm8k, cmmlu,
arc_challenge, humaneval, arc_easy) and for the out-of-distribution test-only tasks (math_prealgebra, mbpp, ceval,
javascript; every prompt is ``test``, train routers on another set).

- quality: RouterDC's per-model score, already in [0, 1]: a probability-like score for the correct option on the
  multiple-choice sets, the fraction correct over 10 samples for GSM8K/HumanEval/MBPP/JavaScript, 0/1 for MATH.
- cost: none. All seven are 7-8B models with no recorded tokens, so there is no defensible per-model price:
  ``cost_usd`` is None and these sets are for quality-only routing (cost-based metrics do not apply).
"""

from __future__ import annotations

from pathlib import Path

from tierwise.lab.datasets._common import build_set, read_json_gz
from tierwise.lab.datasets.format import ModelOutcome, OutcomeSet, PromptOutcomes, Split
from tierwise.lab.datasets.paths import dataset_dir
from tierwise.lab.datasets.splits import native_split_meta

FOLDER = "routerdc_chen2024"
SUBDIR = "split2_model7"
MODELS = [
    "mistralai/Mistral-7B-v0.1",
    "meta-math/MetaMath-Mistral-7B",
    "itpossible/Chinese-Mistral-7B-v0.1",
    "HuggingFaceH4/zephyr-7b-beta",
    "cognitivecomputations/dolphin-2.6-mistral-7b",
    "meta-llama/Meta-Llama-3-8B",
    "cognitivecomputations/dolphin-2.9-llama3-8b",
]
# set task -> {split: file stem}
FILES: dict[str, dict[str, str]] = {
    "mmlu": {"train": "mmlu_train", "test": "mmlu_test"},
    "gsm8k": {"train": "gsm8k-train", "test": "gsm8k-test"},
    "cmmlu": {"train": "cmmlu_train", "test": "cmmlu_test"},
    "arc_challenge": {"train": "arc_challenge_train", "test": "arc_challenge_test"},
    "humaneval": {"train": "humaneval_train", "test": "humaneval_test"},
    "arc_easy": {"train": "arc_easy_train", "test": "arc_easy_test"},
    "math_prealgebra": {"test": "MATH_prealgebra"},
    "mbpp": {"test": "mbpp"},
    "ceval": {"test": "ceval"},
    "javascript": {"test": "javascript"},
}


def set_names() -> list[str]:
    return [f"routerdc/{t}" for t in FILES]


def load(name: str, root: Path | None = None) -> OutcomeSet:
    task = name.removeprefix("routerdc/")
    if task not in FILES:
        raise KeyError(name)
    folder = dataset_dir(FOLDER, root) / SUBDIR
    prompts: list[PromptOutcomes] = []
    for split, stem in FILES[task].items():
        split_name: Split = split  # type: ignore[assignment]
        for i, row in enumerate(read_json_gz(folder / f"{stem}.json.gz")):
            scores = row["scores"]
            prompts.append(
                PromptOutcomes(
                    id=f"{split}-{i}",
                    split=split_name,
                    prompt=row["question"],
                    models={
                        m: ModelOutcome(
                            answer=None,
                            quality=min(1.0, max(0.0, float(scores[m]))),
                            input_tokens=None,
                            output_tokens=None,
                            cost_usd=None,
                        )
                        for m in MODELS
                    },
                    meta={"cluster_id": row["cluster_id"]} if "cluster_id" in row else {},
                )
            )
    ood = "train" not in FILES[task]
    meta = {
        "source": f"shared/data/{FOLDER}/{SUBDIR} (github.com/shuhao02/RouterDC @ 0e63989c)",
        "paper": "Chen et al., RouterDC: Query-Based Router by Dual Contrastive Learning, arXiv:2409.19886",
        "task": task,
        "out_of_distribution": ood,
        "quality": "RouterDC's per-model score in [0, 1] (MC: option probability; code/math: fraction of 10 samples)",
        "cost": "none: no tokens or prices recorded; all models are 7-8B; cost-based metrics do not apply",
        "split": native_split_meta(
            "out-of-distribution test-only file" if ood else "RouterDC's train/test files"
        ),
    }
    return build_set(name, list(MODELS), prompts, meta)
