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


@pytest.mark.parametrize("name", EMBEDDERS)
def test_with_max_tokens_reads_only_the_head_and_shares_the_model(name: str) -> None:
    base = get_embedder(name)
    short = base.with_max_tokens(16)  # type: ignore[attr-defined]
    assert base.with_max_tokens(base.max_tokens) is base  # type: ignore[attr-defined]
    head = "Classify the sentiment of this customer review as positive, negative or neutral, answer with one word"
    texts = [head + " and then write a sorting function in Rust.", head + " ok thanks, that is all for today."]
    a, b = short.embed(texts)
    np.testing.assert_array_equal(a, b)  # the tails lie beyond the 16-token budget
    full_a, full_b = base.embed(texts)
    assert float(full_a @ full_b) < 0.9999
    if name == "minilm-onnx":
        assert short._session is base._session  # noqa: SLF001 - one ORT session, two token budgets


def test_fingerprint_names_the_shipped_model() -> None:
    from tierwise.embed import fingerprint
    from tierwise.embed.onnx_minilm import MODEL_FILE
    from tierwise.routing.learned.embed_cache import EmbeddingCache

    manifest = json.loads(asset_path("MANIFEST.json").read_text())
    assert fingerprint("minilm-onnx") == manifest["files"][MODEL_FILE]["sha256"][:12]
    assert fingerprint("minilm-static") != fingerprint("minilm-onnx")
    with pytest.raises(ValueError, match="minilm-onnx"):
        fingerprint("bert-large")
    # cached vectors of another build of the model are never mixed with this one's
    assert EmbeddingCache("minilm-onnx", root=Path("/nonexistent")).folder.name == f"minilm-onnx-{fingerprint('minilm-onnx')}"


def test_fused_graph_masks_padding() -> None:
    """QAttention gets one valid length per row and the pooling divides by the mask: a right-padded text embeds close
    to the same text alone (not equal: int8 activation scales are per call and see the padding rows), and much
    closer than when the padding is (wrongly) attended to."""
    emb = get_embedder("minilm-onnx")
    ids = emb._tokenizer.encode("short one").ids  # noqa: SLF001
    padded = np.array([ids + [0] * 20], dtype=np.int64)
    run = emb._session.run  # noqa: SLF001

    def vec(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        v = run(None, {"input_ids": x, "attention_mask": mask, "token_type_ids": np.zeros_like(x)})[0][0]
        return v / np.linalg.norm(v)

    alone = vec(np.array([ids], dtype=np.int64), np.ones((1, len(ids)), dtype=np.int64))
    masked = vec(padded, (padded != 0).astype(np.int64))
    unmasked = vec(padded, np.ones_like(padded))
    assert float(alone @ masked) > 0.97
    assert float(alone @ masked) > float(alone @ unmasked) + 0.05
