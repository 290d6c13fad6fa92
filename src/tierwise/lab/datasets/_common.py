"""Small helpers shared by the loaders (reading gzip'd JSON, assembling a set)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from tierwise.lab.datasets.format import OutcomeSet, PromptOutcomes


def _loads(raw: bytes) -> Any:
    # orjson is fast but strict; some sources write non-standard tokens (-Infinity, NaN) that stdlib json accepts.
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def read_json_gz(path: Path) -> Any:
    with gzip.open(path, "rb") as fh:
        return _loads(fh.read())


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        for raw in fh:
            if raw.strip():
                yield _loads(raw)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def build_set(
    name: str, models: list[str], prompts: list[PromptOutcomes], meta: dict[str, Any]
) -> OutcomeSet:
    """Assemble a set, checking the invariants every loader promises (unique ids, every model on every row)."""
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{name}: loader produced duplicate prompt ids")
    for p in prompts:
        if list(p.models) != models:
            raise ValueError(f"{name}: prompt {p.id} has models {list(p.models)}, expected {models}")
    return OutcomeSet(name=name, models=models, prompts=prompts, meta=meta)
