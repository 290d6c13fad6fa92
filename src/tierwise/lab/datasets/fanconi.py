"""Loader for ``cascaded_llms_fanconi2025`` (Fanconi & van der Schaar, NeurIPS 2025, "Cascaded Language Models").

Two-tier traces (base → large) on 1000 test questions each; both models answered every question. Sets:
``fanconi/{arc_easy,arc_challenge,medmcqa}/llama`` (Llama-3.2-1B → Llama-3.1-8B) and
``fanconi/{arc_easy,arc_challenge}/qwen`` (Qwen2.5-1.5B → Qwen2.5-7B). Skipped: ``llama_3_8/online/arc_easy``
(its config also says 1B → 8B and its accuracies equal llama_1_8's), ``grid_search/`` and ``imperfect_expert/``
(re-runs of the same qwen ARC-Easy questions); every other response file is missing upstream (≥ 4 MiB).

- quality: ``<tier>_prediction == label`` → 1.0/0.0 (unparsable answers, "nan", count as wrong).
- confidence: the surrogate token probability P(YES)/(P(YES)+P(NO)) that each model gives to *its own* answer being
  correct (``base_prob`` for the base model, ``large_uncertainty`` for the large one; the column names are the
  paper's). ``meta.large_verifies_base`` holds ``large_prob``: the large model's verdict on the base answer.
- cost: the paper's cost unit is ``params_B × (input tokens + 5 × output tokens)`` (``src/utils.calculate_costs``;
  columns ``base_gen_cost``/``large_gen_cost``). It has no dollar price, so we convert with one documented constant,
  ``USD_PER_UNIT`` = 2.5e-8 (= $0.025 per 1M input tokens per billion parameters, output 5× that; e.g. an 8B model at
  $0.20/$1.00 per 1M, in line with 2025 hosted open-model prices). Relative costs are exactly the paper's, so every
  cost-normalised metric (AUC, cost-to-parity as % of the best model's cost) is independent of the constant. The
  verification passes that produce the confidences (``*_uncert_cost``) are in ``meta`` per prompt, not in the cost.
  Input/output tokens are not recorded separately: None.
- split: none upstream (the paper learns online); a documented 50/50 hash split of questions.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

from tierwise.lab.datasets._common import build_set
from tierwise.lab.datasets.format import ModelOutcome, OutcomeSet, PromptOutcomes
from tierwise.lab.datasets.paths import dataset_dir
from tierwise.lab.datasets.splits import hash_split, hash_split_meta

FOLDER = "cascaded_llms_fanconi2025"
USD_PER_UNIT = 2.5e-8
CHAINS = {
    "llama": ("llama_1_8", "Llama-3.2-1B-Instruct", "Llama-3.1-8B-Instruct"),
    "qwen": ("qwen_1_7", "Qwen2.5-1.5B-Instruct", "Qwen2.5-7B-Instruct"),
}
BENCHMARKS = {"llama": ("arc_easy", "arc_challenge", "medmcqa"), "qwen": ("arc_easy", "arc_challenge")}
RESPONSE_FILE = "responses_surrogate_token_probs_1_large.csv.gz"


def set_names() -> list[str]:
    return [f"fanconi/{b}/{chain}" for chain, benches in BENCHMARKS.items() for b in benches]


def _read_rows(path: Path) -> list[dict[str, str]]:
    csv.field_size_limit(1 << 30)
    with gzip.open(path, "rb") as fh:
        return list(csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8", newline="")))


def load(name: str, root: Path | None = None) -> OutcomeSet:
    _, bench, chain = name.split("/")
    if chain not in CHAINS or bench not in BENCHMARKS[chain]:
        raise KeyError(name)
    run_dir, base, large = CHAINS[chain]
    path = dataset_dir(FOLDER, root) / run_dir / "online" / bench / RESPONSE_FILE
    prompts: list[PromptOutcomes] = []
    for i, row in enumerate(_read_rows(path)):
        label = row["label"].strip()

        def outcome(tier: str, conf_col: str, row: dict[str, str] = row, label: str = label) -> ModelOutcome:
            pred = row[f"{tier}_prediction"].strip()
            return ModelOutcome(
                answer=row[f"{tier}_response"],
                quality=1.0 if pred == label else 0.0,
                input_tokens=None,
                output_tokens=None,
                cost_usd=float(row[f"{tier}_gen_cost"]) * USD_PER_UNIT,
                confidence=min(1.0, max(0.0, float(row[conf_col]))),
            )

        prompts.append(
            PromptOutcomes(
                id=f"{bench}-{i}",
                split=hash_split(row["question"]),
                prompt=row["question"],
                reference=label,
                models={base: outcome("base", "base_prob"), large: outcome("large", "large_uncertainty")},
                meta={
                    "base_prediction": row["base_prediction"],
                    "large_prediction": row["large_prediction"],
                    "large_verifies_base": float(row["large_prob"]),
                    "base_uncert_cost_usd": float(row["base_uncert_cost"]) * USD_PER_UNIT,
                    "large_uncert_cost_usd": float(row["large_uncert_cost"]) * USD_PER_UNIT,
                },
            )
        )
    meta = {
        "source": f"shared/data/{FOLDER}/{run_dir}/online/{bench} (github.com/fanconic/cascaded-llms @ ed642da8)",
        "paper": "Fanconi & van der Schaar, Cascaded Language Models for Cost-effective Human-AI Decision-Making",
        "benchmark": bench,
        "quality": "1.0 if <tier>_prediction == label else 0.0",
        "cost": (
            f"paper's unit params_B*(in + 5*out) tokens (columns *_gen_cost) × {USD_PER_UNIT} USD/unit "
            "($0.025 per 1M input tokens per billion params); relative costs are the paper's"
        ),
        "usd_per_cost_unit": USD_PER_UNIT,
        "confidence": "surrogate token probability of the model's own answer (base_prob / large_uncertainty)",
        "split": hash_split_meta(),
    }
    return build_set(name, [base, large], prompts, meta)
