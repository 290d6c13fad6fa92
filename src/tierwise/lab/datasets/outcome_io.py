"""Read, write and validate outcome sets on disk: ``<stem>.jsonl.gz`` + sidecar ``<stem>.meta.json``.

Validation is strict because everything downstream (replay, calibration, metrics) trusts these numbers: a bad row
fails loudly with the file, the 1-based line number and the field path (``models.gpt-4o.quality``), never silently
becomes a zero. The writer produces byte-stable output (gzip mtime 0, sorted meta keys) so caches and diffs are
reproducible.
"""

from __future__ import annotations

import gzip
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from tierwise.fsutil import atomic_write
from tierwise.lab.datasets.format import SPLITS, ModelOutcome, OutcomeSet, PromptOutcomes

FORMAT_VERSION = 1
DATA_SUFFIX = ".jsonl.gz"
META_SUFFIX = ".meta.json"


class OutcomeFormatError(ValueError):
    """A dataset file breaks the outcome format. Carries ``file``, ``row`` (1-based line or None) and ``field``."""

    def __init__(self, file: str | os.PathLike[str], row: int | None, field: str, problem: str) -> None:
        self.file = str(file)
        self.row = row
        self.field = field
        self.problem = problem
        where = f"{self.file}:{row}" if row is not None else self.file
        super().__init__(f"{where}: field {field!r}: {problem}")


def paths_for(path_or_stem: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(data file, meta file) for a data path, a meta path or a bare stem."""
    p = Path(path_or_stem)
    name = p.name
    for suffix in (DATA_SUFFIX, META_SUFFIX):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return p.with_name(name + DATA_SUFFIX), p.with_name(name + META_SUFFIX)


def safe_stem(set_name: str) -> str:
    """File stem for a set name such as ``zellinger/mmlu/llama`` (slashes are not allowed in file names)."""
    return set_name.replace("/", "__").replace("@", "_at_")


# --------------------------------------------------------------------------------------------------- writing


def write_outcome_set(oset: OutcomeSet, directory: str | os.PathLike[str], stem: str | None = None) -> Path:
    """Write ``oset`` atomically under ``directory``; returns the data file's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data_path, meta_path = paths_for(directory / (stem or safe_stem(oset.name)))
    meta = dict(oset.meta)
    meta.update(
        {
            "format_version": FORMAT_VERSION,
            "name": oset.name,
            "models": list(oset.models),
            "n_prompts": len(oset.prompts),
            "n_train": oset.count("train"),
            "n_test": oset.count("test"),
        }
    )
    lines = b"".join(orjson.dumps(p.to_json()) + b"\n" for p in oset.prompts)
    atomic_write(data_path, gzip.compress(lines, compresslevel=6, mtime=0))
    atomic_write(meta_path, orjson.dumps(meta, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    return data_path


# --------------------------------------------------------------------------------------------------- reading


def read_outcome_set(path_or_stem: str | os.PathLike[str]) -> OutcomeSet:
    """Read and fully validate a set; raises :class:`OutcomeFormatError` naming file, row and field."""
    data_path, meta_path = paths_for(path_or_stem)
    meta = _read_meta(meta_path)
    models: list[str] = meta["models"]
    checker = _RowChecker(data_path, models, meta.get("sample_counts") or {})
    prompts: list[PromptOutcomes] = []
    if not data_path.is_file():
        raise OutcomeFormatError(data_path, None, "<file>", "data file is missing")
    with gzip.open(data_path, "rb") as fh:
        try:
            for lineno, row in json_lines(data_path, fh):
                prompts.append(checker.check(row, lineno))
        except (OSError, EOFError) as exc:
            raise OutcomeFormatError(data_path, None, "<file>", f"cannot read gzip data: {exc}") from exc
    expected = meta.get("n_prompts")
    if expected is not None and expected != len(prompts):
        raise OutcomeFormatError(
            meta_path, None, "n_prompts", f"says {expected} but {data_path.name} has {len(prompts)} rows"
        )
    return OutcomeSet(name=meta["name"], models=models, prompts=prompts, meta=meta)


def json_lines(path: Path, lines: Iterable[bytes]) -> Iterator[tuple[int, Any]]:
    """(line number, decoded value) of every non-blank JSON line; a bad line names the file and line."""
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            yield lineno, orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise OutcomeFormatError(path, lineno, "<json>", f"not valid JSON ({exc})") from exc


def _read_meta(meta_path: Path) -> dict[str, Any]:
    try:
        meta = orjson.loads(meta_path.read_bytes())
    except FileNotFoundError as exc:
        raise OutcomeFormatError(meta_path, None, "<file>", "sidecar meta file is missing") from exc
    except orjson.JSONDecodeError as exc:
        raise OutcomeFormatError(meta_path, None, "<json>", f"not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise OutcomeFormatError(meta_path, None, "<root>", "must be a JSON object")
    if not isinstance(meta.get("name"), str) or not meta["name"]:
        raise OutcomeFormatError(meta_path, None, "name", "missing or not a non-empty string")
    models = meta.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
        raise OutcomeFormatError(meta_path, None, "models", "missing or not a non-empty list of model names")
    if len(set(models)) != len(models):
        raise OutcomeFormatError(meta_path, None, "models", "lists a model more than once")
    counts = meta.get("sample_counts")
    if counts is not None and not isinstance(counts, dict):
        raise OutcomeFormatError(meta_path, None, "sample_counts", "must be an object {model: k}")
    return meta


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


class _RowChecker:
    """Validates rows one by one, remembering ids and per-model sample counts across rows."""

    def __init__(self, file: Path, models: list[str], sample_counts: dict[str, int]) -> None:
        self.file = file
        self.models = models
        self.model_set = set(models)
        self.sample_counts: dict[str, tuple[int, int | None]] = {
            m: (int(k), None) for m, k in sample_counts.items()
        }
        self.seen_ids: dict[str, int] = {}

    def fail(self, row: int, field: str, problem: str) -> OutcomeFormatError:
        return OutcomeFormatError(self.file, row, field, problem)

    def check(self, row: Any, n: int) -> PromptOutcomes:
        if not isinstance(row, dict):
            raise self.fail(n, "<row>", "must be a JSON object")
        for key in ("id", "split", "prompt", "models"):
            if key not in row:
                raise self.fail(n, key, "missing")
        pid = row["id"]
        if not isinstance(pid, str) or not pid:
            raise self.fail(n, "id", "must be a non-empty string")
        if pid in self.seen_ids:
            raise self.fail(n, "id", f"duplicate id {pid!r} (first on line {self.seen_ids[pid]})")
        self.seen_ids[pid] = n
        if row["split"] not in SPLITS:
            raise self.fail(n, "split", f"must be one of {list(SPLITS)}, got {row['split']!r}")
        if not isinstance(row["prompt"], str):
            raise self.fail(n, "prompt", "must be a string")
        for key in ("system", "reference"):
            if row.get(key) is not None and not isinstance(row[key], str):
                raise self.fail(n, key, "must be a string or null")
        meta = row.get("meta") or {}
        if not isinstance(meta, dict):
            raise self.fail(n, "meta", "must be an object")
        models = row["models"]
        if not isinstance(models, dict):
            raise self.fail(n, "models", "must be an object {model: outcome}")
        for name in models:
            if name not in self.model_set:
                raise self.fail(n, f"models.{name}", f"unknown model (meta lists {self.models})")
        outcomes: dict[str, ModelOutcome] = {}
        for name in self.models:
            if name not in models:
                raise self.fail(
                    n, f"models.{name}", "missing: every row must have an outcome for every model"
                )
            outcomes[name] = self._outcome(models[name], n, f"models.{name}", name)
        return PromptOutcomes(
            id=pid,
            split=row["split"],
            prompt=row["prompt"],
            models=outcomes,
            system=row.get("system"),
            reference=row.get("reference"),
            meta=meta,
        )

    def _outcome(self, obj: Any, n: int, path: str, model: str) -> ModelOutcome:
        if not isinstance(obj, dict):
            raise self.fail(n, path, "must be an object")
        for key in ("answer", "quality", "input_tokens", "output_tokens", "cost_usd"):
            if key not in obj:
                raise self.fail(n, f"{path}.{key}", "missing (use null when the source did not record it)")
        if obj["answer"] is not None and not isinstance(obj["answer"], str):
            raise self.fail(n, f"{path}.answer", "must be a string or null")
        q = obj["quality"]
        if not _is_number(q) or not 0.0 <= q <= 1.0:
            raise self.fail(n, f"{path}.quality", f"must be a number in [0, 1], got {q!r}")
        for key in ("input_tokens", "output_tokens"):
            v = obj[key]
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise self.fail(n, f"{path}.{key}", f"must be a non-negative integer or null, got {v!r}")
        for key in ("cost_usd", "latency_ms", "ttft_ms"):
            v = obj.get(key)
            if v is not None and (not _is_number(v) or v < 0):
                raise self.fail(n, f"{path}.{key}", f"must be a non-negative number or null, got {v!r}")
        conf = obj.get("confidence")
        if conf is not None and (not _is_number(conf) or not 0.0 <= conf <= 1.0):
            raise self.fail(n, f"{path}.confidence", f"must be a number in [0, 1] or null, got {conf!r}")
        samples = obj.get("samples")
        if samples is not None:
            if not isinstance(samples, list) or not all(isinstance(s, str) for s in samples):
                raise self.fail(n, f"{path}.samples", "must be a list of strings or null")
            self._check_sample_count(model, len(samples), n, f"{path}.samples")
        return ModelOutcome(
            answer=obj["answer"],
            quality=float(q),
            input_tokens=obj["input_tokens"],
            output_tokens=obj["output_tokens"],
            cost_usd=None if obj["cost_usd"] is None else float(obj["cost_usd"]),
            confidence=None if conf is None else float(conf),
            samples=samples,
            latency_ms=None if obj.get("latency_ms") is None else float(obj["latency_ms"]),
            ttft_ms=None if obj.get("ttft_ms") is None else float(obj["ttft_ms"]),
        )

    def _check_sample_count(self, model: str, k: int, n: int, path: str) -> None:
        expected, first_line = self.sample_counts.get(model, (None, None))
        if expected is None:
            self.sample_counts[model] = (k, n)
            return
        if k != expected:
            origin = f"line {first_line}" if first_line is not None else "meta sample_counts"
            raise self.fail(n, path, f"has {k} samples but {model!r} has {expected} elsewhere ({origin})")
