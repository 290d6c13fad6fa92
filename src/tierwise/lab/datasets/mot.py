"""Loader for ``mot_cascade_yue2024`` (Yue et al., ICLR 2024, "LLM Cascades with Mixture of Thoughts").

Only DATE has both the weak (gpt-3.5-turbo) and the strong (gpt-4) results in the snapshot, so only ``mot/date``
exists. Skipped, on purpose: GSM8K/CREPE pair gpt-4 with llama-2-13b (not the paper's setup, and llama-2-13b has no
documented price), and the other datasets lack the weak model's files (see the folder's MISSING_FILES.txt).

The set mirrors the paper's evaluation code (``Evaluation/utils.py``, ``eval_acc_cost``, MoT-1d-vote) exactly:

- weak ``gpt-3.5-turbo``: k = int((N - 0.75·M)/2) = 7 samples each from the CoT-1 and PoT-1 prompts (default
  temperature), merged into 14 ``samples``; ``answer`` = majority vote (None results skipped); ``confidence`` = votes
  of the majority / 14 (the paper's "vote" gate accepts when confidence >= tau); cost = tiktoken(cot1 demos + pot1
  demos) input tokens at $0.0015/1K + tiktoken("\\n".join(14 generations)) output tokens at $0.002/1K.
- strong ``gpt-4``: the CoT-1 file (3 samples); ``answer`` = its majority ``prediction``; cost = tiktoken(cot1 demos)
  at $0.03/1K + tiktoken(generations) at $0.06/1K. As in the paper, input cost counts the few-shot demos, not the
  question text.
- quality: prediction == gold (the paper's ``finqa_equal`` reduces to string equality for DATE's string answers).
- split: none upstream (the paper fixes thresholds, it does not train); a documented 50/50 hash split of questions.

The paper averages over 8 weak-file pairings (demo set 1/2 × temperature default/0.4); :func:`load_date_pairings`
returns all 8 for reproducing that average.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from tierwise.lab.datasets._common import build_set, read_json, read_json_gz
from tierwise.lab.datasets.format import ModelOutcome, OutcomeSet, PromptOutcomes
from tierwise.lab.datasets.paths import dataset_dir
from tierwise.lab.datasets.splits import hash_split, hash_split_meta
from tierwise.lab.datasets.tokens import count_tokens, count_tokens_batch

FOLDER = "mot_cascade_yue2024"
WEAK, STRONG = "gpt-3.5-turbo", "gpt-4"
PRICES_PER_1K = {WEAK: (0.0015, 0.002), STRONG: (0.03, 0.06)}  # (input, output) USD, Evaluation/utils.py
M_DEMOS, N_SAMPLES = 8, 20
K_PER_PROMPT = int((N_SAMPLES - M_DEMOS * 0.75) / 2)  # = 7, as in eval_acc_cost
# (demo set, cot file, pot file) for the paper's 8 MoT-1d pairings, in eval_acc_cost's order.
PAIRINGS = [
    (1, "date_cot1", "date_pot1"),
    (1, "date_cot1", "date_pot1_t=0.4"),
    (1, "date_cot1_t=0.4", "date_pot1"),
    (1, "date_cot1_t=0.4", "date_pot1_t=0.4"),
    (2, "date_cot2", "date_pot2"),
    (2, "date_cot2", "date_pot2_t=0.4"),
    (2, "date_cot2_t=0.4", "date_pot2"),
    (2, "date_cot2_t=0.4", "date_pot2_t=0.4"),
]


def set_names() -> list[str]:
    return ["mot/date"]


def _majority(results: list[Any]) -> tuple[str | None, int]:
    counter = Counter(r for r in results if r is not None)
    if not counter:
        return None, 0
    answer, votes = counter.most_common(1)[0]
    return str(answer), votes


def _cost(model: str, in_tokens: int, out_tokens: int) -> float:
    p_in, p_out = PRICES_PER_1K[model]
    return (in_tokens * p_in + out_tokens * p_out) / 1000.0


def _build(name: str, folder: Path, demo_set: int, cot_file: str, pot_file: str) -> OutcomeSet:
    demos = read_json(folder / "few_shot_prompts.json")["date"]
    weak_prompt = demos[f"date_CoT{demo_set}_prompting"] + demos[f"date_PoT{demo_set}_prompting"]
    strong_prompt = demos["date_CoT1_prompting"]  # the paper's strong call always uses the CoT-1 demos
    cot = read_json_gz(folder / "GPT3_result" / f"{cot_file}.json.gz")
    pot = read_json_gz(folder / "GPT3_result" / f"{pot_file}.json.gz")
    strong = read_json_gz(folder / "GPT4_result" / "date_cot1.json.gz")
    if not len(cot) == len(pot) == len(strong):
        raise ValueError(f"{name}: files disagree on the number of questions")
    weak_in, strong_in = count_tokens(weak_prompt), count_tokens(strong_prompt)
    weak_gen = [
        "\n".join(c["generated"][:K_PER_PROMPT] + p["generated"][:K_PER_PROMPT])
        for c, p in zip(cot, pot, strict=True)
    ]
    weak_out = count_tokens_batch(weak_gen)
    strong_out = count_tokens_batch(["\n".join(s["generated"]) for s in strong])
    prompts: list[PromptOutcomes] = []
    for i, (c, p, s) in enumerate(zip(cot, pot, strong, strict=True)):
        if not c["question"] == p["question"] == s["question"]:
            raise ValueError(f"{name}: question {i} differs between files")
        gold = str(c["answer"])
        results = c["results"][:K_PER_PROMPT] + p["results"][:K_PER_PROMPT]
        weak_answer, votes = _majority(results)
        strong_answer = None if s["prediction"] is None else str(s["prediction"])
        _, strong_votes = _majority(s["results"])
        prompts.append(
            PromptOutcomes(
                id=f"date-{i}",
                split=hash_split(c["question"]),
                prompt=c["question"],
                reference=gold,
                models={
                    WEAK: ModelOutcome(
                        answer=weak_answer,
                        quality=1.0 if weak_answer == gold else 0.0,
                        input_tokens=weak_in,
                        output_tokens=weak_out[i],
                        cost_usd=_cost(WEAK, weak_in, weak_out[i]),
                        confidence=votes / len(results),
                        samples=["" if r is None else str(r) for r in results],
                    ),
                    STRONG: ModelOutcome(
                        answer=strong_answer,
                        quality=1.0 if strong_answer == gold else 0.0,
                        input_tokens=strong_in,
                        output_tokens=strong_out[i],
                        cost_usd=_cost(STRONG, strong_in, strong_out[i]),
                        confidence=strong_votes / len(s["results"]) if s["results"] else 0.0,
                        samples=["" if r is None else str(r) for r in s["results"]],
                    ),
                },
            )
        )
    meta = {
        "source": f"shared/data/{FOLDER} (github.com/MurongYue/LLM_MoT_cascade @ 8db97e65)",
        "paper": "Yue et al., Large Language Model Cascades with Mixture of Thoughts Representations, ICLR 2024",
        "weak_files": [f"GPT3_result/{cot_file}.json", f"GPT3_result/{pot_file}.json"],
        "strong_file": "GPT4_result/date_cot1.json",
        "k_per_prompt": K_PER_PROMPT,
        "sample_counts": {WEAK: 2 * K_PER_PROMPT, STRONG: 3},
        "prices_usd_per_1k_tokens": {m: {"input": pi, "output": po} for m, (pi, po) in PRICES_PER_1K.items()},
        "quality": "1.0 if the majority answer equals the gold date string else 0.0",
        "cost": "tiktoken cl100k counts: few-shot demos as input (not the question), joined generations as output",
        "confidence": "share of the samples that voted for the majority answer (None results count as votes lost)",
        "samples": "extracted final answers; '' where a completion yielded none (PoT program failed)",
        "split": hash_split_meta(),
    }
    return build_set(name, [WEAK, STRONG], prompts, meta)


def load(name: str, root: Path | None = None) -> OutcomeSet:
    if name != "mot/date":
        raise KeyError(name)
    demo_set, cot_file, pot_file = PAIRINGS[0]
    return _build(name, dataset_dir(FOLDER, root), demo_set, cot_file, pot_file)


def load_date_pairings(root: Path | None = None) -> list[OutcomeSet]:
    """The paper's 8 weak-file pairings as sets ``mot/date/pairing{1..8}`` (first = ``mot/date``)."""
    folder = dataset_dir(FOLDER, root)
    return [_build(f"mot/date/pairing{i}", folder, *pair) for i, pair in enumerate(PAIRINGS, start=1)]
