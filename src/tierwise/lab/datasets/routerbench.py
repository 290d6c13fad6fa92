"""Loader for ``routerbench_subset_via_routerdc`` (RouterBench 0-shot rows, Hu et al. 2024, via the RouterDC repo).

Eleven models with a 0/1 score, the response and the USD cost per query, on three tasks with RouterDC's train/test
split. Sets: ``routerbench/arc_c``, ``routerbench/mbpp``, ``routerbench/winogrande``.

- quality: the score column (0.0/1.0). A few rows have empty score cells (failed calls upstream; on most of those
  rows *every* model is empty). A row is kept only when all eleven models have a score, so every set is a complete
  prompts × models matrix; the dropped rows are listed in ``meta.dropped_incomplete``. This is also how the README's
  per-task reference numbers are computed (GPT-4 on ARC-C test .957 = mean over complete rows).
- cost: ``<model>|total_cost`` (USD, RouterBench's prices); tokens are not stored (None).
- ids: ``sample_id`` is not unique in ARC-C (``arc-challenge.val.208`` names two different questions), so the id is
  ``<sample_id>#<row index>`` using the file's unnamed pandas index column.
- split: RouterDC's own train/test files.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
from pathlib import Path

from tierwise.lab.datasets._common import build_set
from tierwise.lab.datasets.format import ModelOutcome, OutcomeSet, PromptOutcomes, Split
from tierwise.lab.datasets.paths import dataset_dir
from tierwise.lab.datasets.splits import native_split_meta

FOLDER = "routerbench_subset_via_routerdc"
TASKS = {"arc_c": "arc_challenge", "mbpp": "mbpp", "winogrande": "winograde"}
MODELS = [
    "gpt-4-1106-preview",
    "gpt-3.5-turbo-1106",
    "claude-v1",
    "claude-v2",
    "claude-instant-v1",
    "meta/llama-2-70b-chat",
    "mistralai/mixtral-8x7b-chat",
    "zero-one-ai/Yi-34B-Chat",
    "meta/code-llama-instruct-34b-chat",
    "WizardLM/WizardLM-13B-V1.2",
    "mistralai/mistral-7b-chat",
]


def set_names() -> list[str]:
    return [f"routerbench/{t}" for t in TASKS]


def _read(path: Path) -> list[dict[str, str]]:
    csv.field_size_limit(1 << 30)
    with gzip.open(path, "rb") as fh:
        return list(csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8", newline="")))


def _unwrap(text: str) -> str:
    """RouterBench stores prompts and responses as the repr of a one-element list; return the element."""
    if text.startswith("[") and text.endswith("]"):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return text
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            return value[0]
    return text


def load(name: str, root: Path | None = None) -> OutcomeSet:
    task = name.removeprefix("routerbench/")
    if task not in TASKS:
        raise KeyError(name)
    folder = dataset_dir(FOLDER, root)
    prompts: list[PromptOutcomes] = []
    dropped: list[str] = []
    rows_in_source: dict[str, int] = {}
    for split in ("train", "test"):
        rows = _read(folder / f"{TASKS[task]}_{split}.csv.gz")
        rows_in_source[split] = len(rows)
        for row in rows:
            pid = f"{row['sample_id']}#{row['']}"
            if any(row[m].strip() == "" for m in MODELS):
                dropped.append(pid)
                continue
            split_name: Split = split  # type: ignore[assignment]
            prompts.append(
                PromptOutcomes(
                    id=pid,
                    split=split_name,
                    prompt=_unwrap(row["prompt"]),
                    models={
                        m: ModelOutcome(
                            answer=_unwrap(row[f"{m}|model_response"]),
                            quality=float(row[m]),
                            input_tokens=None,
                            output_tokens=None,
                            cost_usd=float(row[f"{m}|total_cost"]),
                        )
                        for m in MODELS
                    },
                    meta={"oracle_model_to_route_to": row.get("oracle_model_to_route_to")},
                )
            )
    meta = {
        "source": f"shared/data/{FOLDER} (github.com/shuhao02/RouterDC @ 0e63989c, datasets/routerbench_zs)",
        "paper": "Hu et al., RouterBench: A Benchmark for Multi-LLM Routing System, arXiv:2403.12031",
        "task": task,
        "rows_in_source": rows_in_source,
        "dropped_incomplete": dropped,
        "quality": "RouterBench's 0/1 score",
        "cost": "RouterBench's per-query total_cost (USD)",
        "split": native_split_meta("RouterDC's train/test files"),
    }
    return build_set(name, list(MODELS), prompts, meta)
