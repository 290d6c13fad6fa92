"""Embedders: shapes, normalisation, fidelity of the shipped int8 model to fp32 MiniLM, and failure messages."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tierwise.embed import EMBEDDERS, EmbedderUnavailable, get_embedder
from tierwise.embed.base import asset_path

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "embed_reference.json").read_text())


@pytest.fixture(scope="module", params=EMBEDDERS)
def embedder(request):
    return get_embedder(request.param)


def test_vectors_are_unit_float32_rows(embedder) -> None:
    texts = ["route me to the cheapest model", "Écris une fonction Python", "a very long prompt " * 800]
    vecs = embedder.embed(texts)
    assert vecs.shape == (3, embedder.dim)
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_empty_batch_and_deterministic(embedder) -> None:
    assert embedder.embed([]).shape == (0, embedder.dim)
    a = embedder.embed(["the same sentence twice"])
    b = embedder.embed(["something else first", "the same sentence twice"])[1:]
    np.testing.assert_array_equal(a, b)  # a text's vector does not depend on its batch-mates


def test_paraphrase_is_closer_than_unrelated(embedder) -> None:
    a, para, other = embedder.embed([
        "Write a Python function that sorts a list of numbers.",
        "Implement a Python function to sort a list of integers.",
        "What is a good recipe for banana bread?",
    ])
    assert a @ para > a @ other + 0.2


def test_int8_onnx_matches_fp32_reference() -> None:
    """The shipped int8 graph stays within quantisation error of fp32 all-MiniLM-L6-v2 (computed with torch)."""
    vecs = get_embedder("minilm-onnx").embed(REFERENCE["sentences"])
    cos = (vecs * np.asarray(REFERENCE["fp32"], dtype=np.float32)).sum(axis=1)
    assert cos.min() >= 0.985, cos
    assert cos.mean() >= 0.99, cos


def test_text_with_no_known_tokens_gives_zero_vector_not_nan() -> None:
    # whitespace only, and a 5000-char "word" (WordPiece maps words over 100 chars to [UNK], which is dropped)
    vecs = get_embedder("minilm-static").embed(["   ", "x" * 5000])
    assert not np.isnan(vecs).any()
    assert float(np.abs(vecs).sum()) == 0.0


def test_assets_match_manifest() -> None:
    manifest = json.loads(asset_path("MANIFEST.json").read_text())
    for name, meta in manifest["files"].items():
        path = asset_path(name)
        assert path.stat().st_size == meta["bytes"], name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == meta["sha256"], name


def test_unknown_embedder_name() -> None:
    with pytest.raises(ValueError, match="minilm-onnx"):
        get_embedder("bert-large")


@pytest.mark.parametrize(("module", "backend"), [("onnxruntime", "onnx_minilm.OnnxMiniLM"),
                                                  ("tokenizers", "static_minilm.StaticMiniLM")])
def test_missing_runtime_names_the_pip_command(monkeypatch, module: str, backend: str) -> None:
    import importlib

    mod_name, cls_name = backend.split(".")
    cls = getattr(importlib.import_module(f"tierwise.embed.{mod_name}"), cls_name)
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(EmbedderUnavailable, match=f"pip install {module}"):
        cls()


def test_missing_asset_is_a_clear_error() -> None:
    with pytest.raises(EmbedderUnavailable, match="build-embedders.py"):
        asset_path("no-such-model.onnx")
