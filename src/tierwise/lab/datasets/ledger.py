"""tierwise's own traffic as an outcome set: ledger records joined with quality labels.

The ledger never stores prompt text (privacy by default), so the labels file brings it: one JSON object per line,
``{"id": "<x-tierwise-request-id>", "prompt": "...", "quality": 0.0-1.0 | {"<model>": q, ...}, "split"?: ...}``.
A scalar ``quality`` labels the answer that was served; a mapping labels any model whose answer the request saw
(cascade rungs that escalated included: their answers were produced, just not served). Each labelled model becomes a
:class:`ModelOutcome` with the tokens, cost, latency and gate confidence the ledger recorded for that attempt.

Splits: the label's own ``split`` when given, else the fixed hash split every other loader uses, so a router trained
on last week's traffic is evaluated on prompts it never saw.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tierwise.lab.datasets.format import ModelOutcome, OutcomeSet, PromptOutcomes
from tierwise.lab.datasets.outcome_io import OutcomeFormatError, json_lines
from tierwise.lab.datasets.splits import hash_split
from tierwise.ledger.store import LedgerStore


def _labels(path: Path) -> dict[str, tuple[int, dict[str, Any]]]:
    out: dict[str, tuple[int, dict[str, Any]]] = {}
    with open(path, "rb") as f:
        for lineno, row in json_lines(path, f):
            if not isinstance(row, dict):
                raise OutcomeFormatError(path, lineno, "<json>", "each line must be a JSON object")
            for key in ("id", "prompt", "quality"):
                if key not in row:
                    raise OutcomeFormatError(path, lineno, key, "missing")
            if row["id"] in out:
                raise OutcomeFormatError(path, lineno, "id", f"duplicate of line {out[row['id']][0]}")
            out[row["id"]] = (lineno, row)
    return out


def _check_quality(path: Path, lineno: int, field: str, q: Any) -> float:
    if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 <= q <= 1.0:
        raise OutcomeFormatError(path, lineno, field, f"quality must be a number in [0, 1], got {q!r}")
    return float(q)


def ledger_outcomes(store: LedgerStore, labels_path: str | os.PathLike[str], name: str = "ledger") -> OutcomeSet:
    """Join ``store``'s records with the labels file; unlabelled records are left out, unknown ids are errors."""
    path = Path(labels_path)
    labels = _labels(path)
    rows = {r["id"]: r for r in store.iter_rows(None, None) if r["id"] in labels}
    prompts: list[PromptOutcomes] = []
    models: list[str] = []
    for rid, (lineno, lab) in labels.items():
        row = rows.get(rid)
        if row is None:
            raise OutcomeFormatError(path, lineno, "id", f"no ledger record with id {rid!r}")
        quality = lab["quality"]
        if not isinstance(quality, dict):
            if row.get("model") is None:
                raise OutcomeFormatError(path, lineno, "quality", "the request served no answer to label")
            quality = {row["model"]: quality}
        attempts = {a["model"]: a for a in row.get("attempts") or [] if a.get("outcome") in ("ok", "escalated")}
        outcomes: dict[str, ModelOutcome] = {}
        for model, q in quality.items():
            att = attempts.get(model)
            if att is None:
                raise OutcomeFormatError(path, lineno, f"quality.{model}", f"request {rid} got no answer from {model}")
            usage = att.get("usage") or {}
            outcomes[model] = ModelOutcome(
                answer=None,
                quality=_check_quality(path, lineno, f"quality.{model}", q),
                input_tokens=(usage.get("input_tokens", 0) + usage.get("cache_read_tokens", 0)
                              + usage.get("cache_write_tokens", 0)) if usage else None,
                output_tokens=usage.get("output_tokens") if usage else None,
                cost_usd=att.get("cost_usd"),
                confidence=att.get("confidence"),
                latency_ms=att.get("latency_ms"),
            )
            if model not in models:
                models.append(model)
        split = lab.get("split") or hash_split(lab["prompt"])
        prompts.append(PromptOutcomes(rid, split, lab["prompt"], outcomes, meta={"tier": row.get("tier")}))
    meta = {"source": f"tierwise ledger joined with {path.name}", "quality": "operator labels",
            "cost": "ledger cost_usd per attempt (settled from provider usage)", "split": "label split or hash"}
    return OutcomeSet(name, models, prompts, meta)


def load_data(spec: str) -> OutcomeSet:
    """What ``--data`` names: a registry set (``zellinger/mmlu/llama``), an outcome file (``x.jsonl.gz``), or
    tierwise's own traffic, ``ledger:<ledger.db>:<labels.jsonl>``."""
    from tierwise.lab.datasets.outcome_io import read_outcome_set
    from tierwise.lab.datasets.registry import list_sets, load_set
    from tierwise.ledger.store import SQLiteLedgerStore

    if spec.startswith("ledger:"):
        db, sep, labels = spec[len("ledger:"):].rpartition(":")
        if not sep or not db or not labels:
            raise ValueError(f"--data {spec!r}: use ledger:<ledger.db>:<labels.jsonl>")
        if not Path(db).exists():
            raise ValueError(f"--data {spec!r}: no ledger at {db}")
        store = SQLiteLedgerStore(Path(db))
        try:
            return ledger_outcomes(store, labels, name=f"ledger/{Path(db).stem}")
        finally:
            store.close()
    if spec in list_sets():
        return load_set(spec)
    if spec.endswith((".jsonl.gz", ".meta.json")) or Path(spec).exists():
        return read_outcome_set(spec)
    raise ValueError(f"--data {spec!r}: neither a known set ({', '.join(list_sets())}), an outcome file, "
                     "nor ledger:<db>:<labels.jsonl>")
