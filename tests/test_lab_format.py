"""The outcome format: round trip, matrices, and validation errors that name the file, row and field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from tierwise.lab.datasets import (
    ModelOutcome,
    OutcomeFormatError,
    OutcomeSet,
    PromptOutcomes,
    paths_for,
    read_outcome_set,
    write_outcome_set,
)
from tierwise.lab.datasets.splits import hash_fraction, hash_split


def _set() -> OutcomeSet:
    def mo(q: float, cost: float | None, **kw) -> ModelOutcome:
        return ModelOutcome(answer="A", quality=q, input_tokens=10, output_tokens=2, cost_usd=cost, **kw)

    prompts = [
        PromptOutcomes(
            id="p1",
            split="train",
            prompt="2+2?",
            system="be brief",
            reference="4",
            models={
                "small": mo(1.0, 0.001, confidence=0.9, samples=["4", "4"]),
                "big": mo(1.0, 0.01, samples=["4", "5"]),
            },
            meta={"topic": "math"},
        ),
        PromptOutcomes(
            id="p2",
            split="test",
            prompt="capital of France?",
            models={
                "small": mo(0.0, 0.002, samples=["", "Lyon"]),
                "big": mo(0.5, None, latency_ms=12.5, samples=["Paris", "Paris"]),
            },
        ),
    ]
    return OutcomeSet(
        name="toy/set", models=["small", "big"], prompts=prompts, meta={"source": "hand-written"}
    )


def test_round_trip_is_lossless_and_byte_stable(tmp_path: Path) -> None:
    original = _set()
    path = write_outcome_set(original, tmp_path)
    assert path.name == "toy__set.jsonl.gz" and paths_for(path)[1].name == "toy__set.meta.json"
    loaded = read_outcome_set(path)
    assert loaded.name == original.name and loaded.models == original.models
    assert loaded.prompts == original.prompts
    assert (
        loaded.meta["source"] == "hand-written" and loaded.meta["n_train"] == 1 and loaded.meta["n_test"] == 1
    )
    first = path.read_bytes()
    write_outcome_set(loaded, tmp_path)
    assert path.read_bytes() == first  # gzip mtime is fixed: identical input, identical bytes


def test_matrices_and_helpers() -> None:
    s = _set()
    assert s.quality_matrix().tolist() == [[1.0, 1.0], [0.0, 0.5]]
    assert s.quality_matrix(["big"]).tolist() == [[1.0], [0.5]]
    cost = s.cost_matrix()
    assert cost[0].tolist() == [0.001, 0.01] and np.isnan(cost[1, 1])
    conf = s.confidence_matrix()
    assert conf[0, 0] == 0.9 and np.isnan(conf[1, 0])
    assert s.priced_models() == ["small"]
    assert s.mean_cost("big") is None and s.mean_cost("small") == pytest.approx(0.0015)
    test = s.split("test")
    assert test.ids() == ["p2"] and test.name == "toy/set@test"
    with pytest.raises(KeyError):
        s.quality_matrix(["nope"])
    with pytest.raises(ValueError):
        s.split("dev")  # type: ignore[arg-type]


def test_hash_split_is_pinned() -> None:
    # Pinned values: changing the split recipe silently would move prompts between train and test.
    assert hash_fraction("hello") == 0.34532108884165286
    assert [hash_split(t) for t in ("hello", "d", "e", "f")] == ["test", "test", "train", "train"]
    assert hash_split("x", test_fraction=0.0) == "train" and hash_split("x", test_fraction=1.0) == "test"


# ------------------------------------------------------------------------------------------------ bad input


def _write_raw(tmp_path: Path, rows: list[dict], meta: dict | None = None) -> Path:
    data = tmp_path / "bad.jsonl.gz"
    data.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    (tmp_path / "bad.meta.json").write_text(
        json.dumps(meta if meta is not None else {"name": "bad", "models": ["s", "b"]})
    )
    return data


def _row(pid: str = "p1", **over) -> dict:
    outcome = {"answer": "x", "quality": 1.0, "input_tokens": 3, "output_tokens": 1, "cost_usd": 0.1}
    row = {"id": pid, "split": "test", "prompt": "q", "models": {"s": dict(outcome), "b": dict(outcome)}}
    row.update(over)
    return row


def _expect(
    tmp_path: Path,
    rows: list[dict],
    row: int | None,
    field: str,
    meta: dict | None = None,
    file: str = "bad.jsonl.gz",
) -> OutcomeFormatError:
    path = _write_raw(tmp_path, rows, meta)
    with pytest.raises(OutcomeFormatError) as info:
        read_outcome_set(path)
    err = info.value
    assert Path(err.file).name == file and err.row == row and err.field == field, str(err)
    assert file in str(err) and field in str(err)
    if row is not None:
        assert f":{row}:" in str(err)
    return err


def test_missing_field_names_row_and_field(tmp_path: Path) -> None:
    bad = _row("p2")
    del bad["models"]["b"]["quality"]
    _expect(tmp_path, [_row("p1"), bad], 2, "models.b.quality")
    top = _row("p1")
    del top["prompt"]
    _expect(tmp_path, [top], 1, "prompt")


def test_quality_outside_unit_interval(tmp_path: Path) -> None:
    bad = _row()
    bad["models"]["s"]["quality"] = 1.5
    err = _expect(tmp_path, [bad], 1, "models.s.quality")
    assert "[0, 1]" in str(err)
    bad["models"]["s"]["quality"] = True  # booleans are not numbers here
    _expect(tmp_path, [bad], 1, "models.s.quality")


def test_unknown_and_missing_models(tmp_path: Path) -> None:
    bad = _row()
    bad["models"]["gpt-9"] = bad["models"]["s"]
    _expect(tmp_path, [bad], 1, "models.gpt-9")
    missing = _row()
    del missing["models"]["b"]
    _expect(tmp_path, [missing], 1, "models.b")


def test_mismatched_sample_lengths(tmp_path: Path) -> None:
    r1, r2 = _row("p1"), _row("p2")
    r1["models"]["s"]["samples"] = ["a", "b", "c"]
    r2["models"]["s"]["samples"] = ["a", "b"]
    err = _expect(tmp_path, [r1, r2], 2, "models.s.samples")
    assert "line 1" in str(err)
    # a declared count in the meta file is enforced from the first row on
    meta = {"name": "bad", "models": ["s", "b"], "sample_counts": {"s": 2}}
    _expect(tmp_path, [r1], 1, "models.s.samples", meta=meta)


def test_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    err = _expect(tmp_path, [_row("p1"), _row("p2"), _row("p1")], 3, "id")
    assert "line 1" in str(err)


def test_other_bad_values(tmp_path: Path) -> None:
    _expect(tmp_path, [_row(split="dev")], 1, "split")
    neg = _row()
    neg["models"]["b"]["cost_usd"] = -0.1
    _expect(tmp_path, [neg], 1, "models.b.cost_usd")
    conf = _row()
    conf["models"]["b"]["confidence"] = 2
    _expect(tmp_path, [conf], 1, "models.b.confidence")
    tok = _row()
    tok["models"]["s"]["input_tokens"] = 2.5
    _expect(tmp_path, [tok], 1, "models.s.input_tokens")


def test_invalid_json_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(gzip.compress((json.dumps(_row("p1")) + "\n{not json\n").encode()))
    (tmp_path / "bad.meta.json").write_text(json.dumps({"name": "bad", "models": ["s", "b"]}))
    with pytest.raises(OutcomeFormatError) as info:
        read_outcome_set(path)
    assert info.value.row == 2 and info.value.field == "<json>"


def test_meta_file_problems(tmp_path: Path) -> None:
    _expect(tmp_path, [_row()], None, "models", meta={"name": "bad"}, file="bad.meta.json")
    _expect(
        tmp_path,
        [_row()],
        None,
        "n_prompts",
        meta={"name": "bad", "models": ["s", "b"], "n_prompts": 5},
        file="bad.meta.json",
    )
    path = _write_raw(tmp_path, [_row()])
    (tmp_path / "bad.meta.json").unlink()
    with pytest.raises(OutcomeFormatError, match="sidecar meta file is missing"):
        read_outcome_set(path)
