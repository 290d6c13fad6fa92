#!/usr/bin/env python
"""Rewrite the int8 MiniLM ONNX export into a graph of fused onnxruntime kernels with 7-bit weights.

Why: on the 2-core AMD EPYC machine (AVX-512 VNNI) much of the exported graph's time was outside the int8 matrix
products: the SDPA export's attention (Reshape/Transpose/Where/IsNaN around a float MatMul, 3 separate Q/K/V
products) and ORT's own ``SkipLayerNormalization`` fusion, slower in onnxruntime 1.32 than the ``Add`` +
``LayerNormalization`` it replaces (``bench/results/embed_spread.md`` has the per-op and per-graph timings). This
script keeps every scale, zero point, bias and LayerNorm parameter byte for byte, narrows the matrix weights
(:data:`WEIGHT_BITS`) and changes the graph around them:

* the three Q/K/V projections become one ``com.microsoft.QAttention`` (weights concatenated per column, so the
  per-channel scales are the same numbers), with the mask as one valid length per row (right padding);
* the attention output and the two feed-forward products are ``DynamicQuantizeMatMul`` with the bias folded in;
* residuals are ``Add`` + ``LayerNormalization`` (sessions disable ORT's SkipLayerNormFusion, see ``onnx_minilm``);
* mean pooling over the mask and L2 normalisation end the graph, as before.

The matrix weights are also narrowed from 8 to 7 bits per column (:data:`WEIGHT_BITS`, what onnxruntime's
``reduce_range`` does): only then do CPUs without VNNI compute the same integer products as this one. The script
prints the cosine to the source graph and to the fp32 reference vectors, and refuses to write a graph below the
fidelity the test-suite asserts (mean 0.99, min 0.985 to fp32).

Source: the unfused graph that ``scripts/build-embedders.py`` exports (it calls :func:`fuse` itself), or, by
default, the one shipped up to 2026-12-03, read from git history and checked against its recorded sha256::

    .venv/bin/pip install onnx==1.23.2      # build-time only; tierwise never imports onnx
    .venv/bin/python scripts/fuse-embedder.py            # writes src/tierwise/embed/assets/minilm-l6-int8-fused.onnx
    .venv/bin/python scripts/fuse-embedder.py --check    # rebuild in memory and compare with the shipped sha256
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "src" / "tierwise" / "embed" / "assets"
FUSED_NAME = "minilm-l6-int8-fused.onnx"
SOURCE_NAME = "minilm-l6-int8.onnx"
# The unfused export as shipped from 5a53ec8 until this graph replaced it (recorded in MANIFEST.json).
SOURCE_COMMIT = "5a53ec882313acfc9ee6cee0378072c7cd23be34"
SOURCE_SHA256 = "f774a6fd4a00fdae4c56ff9b5cae875cc6ee97edbf32002d3635a2cbe3cc9eb8"
# 7-bit weights (|w| <= 63): a pair of u8 x s7 products fits int16, so the AVX2 / AVX-512 (no VNNI) kernels, whose
# vpmaddubsw saturates pairs of u8 x s8 products at int16, compute the same integers as the VNNI/AMX/NEON ones.
# With 8-bit weights an emulation of those kernels routed 12 of the 210 labelled prompts differently from this
# machine; with 7-bit weights none (bench/results/embed_spread.md). Dev accuracy held (0.757 -> 0.764).
WEIGHT_BITS = 7
NUM_HEADS = 12
LN_EPSILON = 1e-12
ROLES = {"q": "attention/self/query", "k": "attention/self/key", "v": "attention/self/value",
         "o": "attention/output/dense", "i": "intermediate/dense", "f": "output/dense"}


def _matmul_weights(model) -> dict[tuple[int, str], str]:
    """(layer, role path) → base name of the quantised weight, read from the MatMulInteger node names."""
    out: dict[tuple[int, str], str] = {}
    for node in model.graph.node:
        if node.op_type == "MatMulInteger":
            m = re.match(r"/encoder/encoder/layer\.(\d+)/(.+)/MatMul_quant$", node.name)
            if not m:
                raise SystemExit(f"unexpected MatMulInteger {node.name!r}: not the graph build-embedders.py exports")
            out[(int(m.group(1)), m.group(2))] = node.input[1].removesuffix("_quantized")
    return out


class _Builder:
    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []

    def init(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str, domain: str = "", **attrs: object) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op_type, inputs, [output], domain=domain or None, **attrs))
        return output


def narrow(q: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-quantise symmetric per-column int8 weights to ``bits`` bits: (new weights, factor to multiply the old
    scales by). Each column keeps its own range: the largest |w| maps to 2**(bits-1) - 1."""
    top = 2 ** (bits - 1) - 1
    peak = np.maximum(np.abs(q.astype(np.int32)).max(axis=0), 1).astype(np.float64)
    narrowed = np.clip(np.rint(q.astype(np.float64) * top / peak), -top, top).astype(np.int8)
    return narrowed, (peak / top).astype(np.float32)


def fuse(src: Path, out: Path, weight_bits: int = WEIGHT_BITS) -> None:
    """Write the fused graph of the unfused int8 export ``src`` to ``out`` (deterministic bytes); ``weight_bits`` < 8
    re-quantises the matrix weights to that many bits (7: no int16 saturation in vpmaddubsw kernels)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weights = _matmul_weights(model)
    layers = sorted({layer for layer, _ in weights})
    b = _Builder()
    emb = "encoder.embeddings."
    # Only 1-D shape tensors here: ORT 1.32's constant-sharing pass merged a scalar 1 with a [1] and broke a
    # Gather → Slice rewrite of the position lookup, so positions are a Slice of the table from the start.
    b.init("axis0", np.array([0], np.int64))
    b.init("axis1", np.array([1], np.int64))
    b.init("axis_last", np.array([-1], np.int64))
    b.init("eps", np.array(1e-9, np.float32))
    b.op("Shape", ["input_ids"], "seq_len", start=1, end=2)
    x = ""
    for table, ids in (("word", "input_ids"), ("position", ""), ("token_type", "token_type_ids")):
        base = f"{emb}{table}_embeddings.weight"
        q = b.init(f"{table}_q", w[f"{base}_quantized"])
        b.init(f"{table}_scale", w[f"{base}_scale"])
        b.init(f"{table}_zp", w[f"{base}_zero_point"])
        if ids:
            rows = b.op("Gather", [q, ids], f"{table}_rows", axis=0)
        else:  # (seq, hidden): broadcast over the batch by the Add below
            rows = b.op("Slice", [q, "axis0", "seq_len", "axis0"], f"{table}_rows")
        vec = b.op("DequantizeLinear", [rows, f"{table}_scale", f"{table}_zp"], f"{table}_emb")
        x = vec if not x else b.op("Add", [x, vec], f"emb_plus_{table}")
    b.init("emb_ln_g", w[emb + "LayerNorm.weight"])
    b.init("emb_ln_b", w[emb + "LayerNorm.bias"])
    x = b.op("LayerNormalization", [x, "emb_ln_g", "emb_ln_b"], "h_emb", axis=-1, epsilon=LN_EPSILON)
    b.op("ReduceSum", ["attention_mask", "axis1"], "valid_len64", keepdims=0)
    b.op("Cast", ["valid_len64"], "valid_len", to=TensorProto.INT32)
    for layer in layers:
        p, pre = f"l{layer}_", f"encoder.encoder.layer.{layer}."
        q = {r: w[weights[(layer, path)] + "_quantized"] for r, path in ROLES.items()}
        scale = {r: np.broadcast_to(w[weights[(layer, path)] + "_scale"], (q[r].shape[1],)).astype(np.float32)
                 for r, path in ROLES.items()}
        zp = {r: np.broadcast_to(w[weights[(layer, path)] + "_zero_point"], (q[r].shape[1],)).astype(np.int8)
              for r, path in ROLES.items()}
        bias = {r: w[pre + path.replace("/", ".") + ".bias"] for r, path in ROLES.items()}
        if weight_bits < 8:
            for r in ROLES:
                if np.any(zp[r]):
                    raise SystemExit("narrowing needs symmetric weights (zero point 0)")
                q[r], factor = narrow(q[r], weight_bits)
                scale[r] = scale[r] * factor
        b.init(p + "w_qkv", np.concatenate([q["q"], q["k"], q["v"]], axis=1))
        b.init(p + "s_qkv", np.concatenate([scale[r] for r in "qkv"]))
        b.init(p + "z_qkv", np.concatenate([zp[r] for r in "qkv"]))
        b.init(p + "b_qkv", np.concatenate([bias[r] for r in "qkv"]))
        for r in "oif":
            b.init(p + "w_" + r, q[r])
            b.init(p + "s_" + r, scale[r])
            b.init(p + "z_" + r, zp[r])
            b.init(p + "b_" + r, bias[r])
        for ln, path in (("ln1", "attention.output.LayerNorm"), ("ln2", "output.LayerNorm")):
            b.init(p + ln + "_g", w[f"{pre}{path}.weight"])
            b.init(p + ln + "_b", w[f"{pre}{path}.bias"])
        b.nodes.append(helper.make_node("DynamicQuantizeLinear", [x], [p + "xq", p + "xs", p + "xz"]))
        attn = b.op("QAttention", [p + "xq", p + "w_qkv", p + "b_qkv", p + "xs", p + "s_qkv", "valid_len",
                                   p + "xz", p + "z_qkv"], p + "attn", domain="com.microsoft", num_heads=NUM_HEADS)
        dense = b.op("DynamicQuantizeMatMul", [attn, p + "w_o", p + "s_o", p + "z_o", p + "b_o"], p + "attn_out",
                     domain="com.microsoft")
        res1 = b.op("Add", [dense, x], p + "res1")
        x1 = b.op("LayerNormalization", [res1, p + "ln1_g", p + "ln1_b"], p + "x1", axis=-1, epsilon=LN_EPSILON)
        inter = b.op("DynamicQuantizeMatMul", [x1, p + "w_i", p + "s_i", p + "z_i", p + "b_i"], p + "inter",
                     domain="com.microsoft")
        act = b.op("Gelu", [inter], p + "gelu", domain="com.microsoft")
        ffn = b.op("DynamicQuantizeMatMul", [act, p + "w_f", p + "s_f", p + "z_f", p + "b_f"], p + "ffn",
                   domain="com.microsoft")
        res2 = b.op("Add", [ffn, x1], p + "res2")
        x = b.op("LayerNormalization", [res2, p + "ln2_g", p + "ln2_b"], p + "x2", axis=-1, epsilon=LN_EPSILON)
    b.op("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    b.op("Unsqueeze", ["mask_f", "axis_last"], "mask_f3")
    b.op("Mul", [x, "mask_f3"], "masked")
    b.op("ReduceSum", ["masked", "axis1"], "summed", keepdims=0)
    b.op("ReduceSum", ["mask_f3", "axis1"], "count", keepdims=0)
    b.op("Max", ["count", "eps"], "count_safe")
    b.op("Div", ["summed", "count_safe"], "mean")
    out_name = model.graph.output[0].name
    b.op("LpNormalization", ["mean"], out_name, axis=1, p=2)
    graph = helper.make_graph(b.nodes, "minilm-l6-int8-fused", list(model.graph.input), list(model.graph.output),
                              b.inits)
    fused = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)],
                              producer_name="tierwise scripts/fuse-embedder.py")
    fused.ir_version = model.ir_version
    onnx.checker.check_model(fused)
    out.write_bytes(fused.SerializeToString())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_from_git(dest: Path) -> Path:
    """The unfused graph as shipped, from git history, checked against its recorded sha256."""
    blob = subprocess.run(["git", "-C", str(ROOT), "show", f"{SOURCE_COMMIT}:src/tierwise/embed/assets/{SOURCE_NAME}"],
                          capture_output=True, check=True).stdout
    if hashlib.sha256(blob).hexdigest() != SOURCE_SHA256:
        raise SystemExit(f"{SOURCE_COMMIT}:{SOURCE_NAME} does not have the recorded sha256")
    dest.write_bytes(blob)
    return dest


def compare(src: Path, fused: Path) -> tuple[float, float]:
    """(mean, min) cosine between the two graphs' vectors over the bundled routing prompts (128 tokens)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ASSETS / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=128)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sessions = [ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for p in (src, fused)]
    rows = (ROOT / "tests" / "data" / "semantic_routing.jsonl").read_text().splitlines()
    cos = []
    for line in rows:
        if not line.strip():
            continue
        ids = np.array([tok.encode(json.loads(line)["prompt"]).ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        a, f = (s.run(None, feed)[0][0] for s in sessions)
        cos.append(float(a @ f / (np.linalg.norm(a) * np.linalg.norm(f))))
    return float(np.mean(cos)), float(np.min(cos))


def fp32_fidelity(graph: Path) -> tuple[float, float]:
    """(mean, min) cosine to the fp32 sentence-transformers vectors that build-embedders.py recorded."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    ref = json.loads((ROOT / "tests" / "data" / "embed_reference.json").read_text())
    tok = Tokenizer.from_file(str(ASSETS / "tokenizer.json"))
    tok.no_padding()  # the shipped tokenizer.json pads to 128
    tok.enable_truncation(max_length=128)
    sess = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    cos = []
    for text, vec in zip(ref["sentences"], ref["fp32"], strict=True):
        ids = np.array([tok.encode(text).ids], dtype=np.int64)
        out = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                              "token_type_ids": np.zeros_like(ids)})[0][0]
        cos.append(float(out @ np.asarray(vec, dtype=np.float32) / np.linalg.norm(out)))
    return float(np.mean(cos)), float(np.min(cos))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", type=Path, help=f"unfused int8 graph (default: {SOURCE_NAME} from git {SOURCE_COMMIT[:7]})")
    ap.add_argument("--out", type=Path, default=ASSETS / FUSED_NAME)
    ap.add_argument("--check", action="store_true", help="rebuild in a temp dir and compare with MANIFEST.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = args.src or source_from_git(Path(tmp) / SOURCE_NAME)
        out = Path(tmp) / FUSED_NAME if args.check else args.out
        fuse(src, out)
        if args.check:
            shipped = json.loads((ASSETS / "MANIFEST.json").read_text())["files"][FUSED_NAME]["sha256"]
            print("reproducible" if sha256(out) == shipped else f"differs: {sha256(out)} != {shipped}")
            sys.exit(0 if sha256(out) == shipped else 1)
        mean, low = compare(src, out)
        ref_mean, ref_min = fp32_fidelity(out)
        print(f"wrote {out} ({out.stat().st_size} bytes, sha256 {sha256(out)}); cosine to the source graph over the "
              f"routing set: mean {mean:.5f}, min {low:.5f}; to fp32 MiniLM (tests/data/embed_reference.json): "
              f"mean {ref_mean:.5f}, min {ref_min:.5f}")
        if ref_mean < 0.99 or ref_min < 0.985:
            out.unlink()
            sys.exit("the fused graph drifted from fp32 MiniLM (cosine mean < 0.99 or min < 0.985); not written")


if __name__ == "__main__":
    main()
