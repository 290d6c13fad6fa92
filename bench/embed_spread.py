"""What could make the embedders route differently on another CPU, measured on this one: the spread of tier scores
and routed tiers across kernel paths, plus the latency of the exported vs the fused ONNX graph.

    .venv/bin/pip install onnx==1.23.2   # reads the graph's weights for the reference forward pass (bench only)
    python bench/embed_spread.py [--out bench/results/embed_spread.md]

Why this matters: ``minilm-onnx`` quantises every activation to uint8 on the fly, so a float difference of one ulp
before a rounding boundary (another summation order, another exp/erf approximation) moves an activation by a whole
quantisation step, and the int8 products themselves are computed by a kernel that onnxruntime's MLAS picks from
CPUID: AVX-512 VNNI / AVX-VNNI (``vpdpbusd``: exact int32 sums) on this machine, AVX2 or AVX-512 without VNNI
(``vpmaddubsw``: u8×s8 products summed in pairs with int16 saturation) elsewhere, AMX on recent Xeons. Only this
machine's path can be run here, so the others are measured as follows, against the production session
(fused graph, ``ORT_ENABLE_ALL``, ``SkipLayerNormFusion`` off):

* ORT variants here: graph optimisations off; SkipLayerNormFusion on (ORT's default); denormals as zero; the
  exported graph this one was fused from (git history);
* an independent numpy forward pass of the fused graph (same int8 weights, same dynamic quantisation, exact int32
  products, numpy float32 LayerNorm / softmax / erf): stands in for "another CPU's float kernels";
* the same numpy pass with the int8 products summed as ``vpmaddubsw`` does (pairs of u8×s8 products saturated to
  int16): an emulation of a CPU without VNNI, not a run on one.

For each: the largest difference of any tier score (cosine; the classifier compares these with each other and with
the threshold), the smallest cosine between the two vectors of a prompt, and how many of the 210 labelled prompts
(plus the tier texts, re-embedded by each variant) are routed to a different tier. ``minilm-static`` is a float32
mean of table rows: compared with the same mean in float64 (summation order).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "overhead"))

import procs  # noqa: E402
from routing_latency import labelled_rows, routing_config  # noqa: E402

from tierwise.embed import get_embedder  # noqa: E402
from tierwise.embed.base import asset_path, l2_normalise, load_tokenizer  # noqa: E402
from tierwise.embed.onnx_minilm import DISABLED_OPTIMIZERS, MODEL_FILE, OnnxMiniLM, session_options  # noqa: E402
from tierwise.routing.signals.semantic import SemanticClassifier  # noqa: E402

LAYERS, HEADS, HIDDEN = 6, 12, 384


def _fuse_module():  # scripts/fuse-embedder.py (hyphenated file name)
    import importlib.util

    spec = importlib.util.spec_from_file_location("fuse_embedder", ROOT / "scripts" / "fuse-embedder.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ort_session(path: Path, level: str = "ORT_ENABLE_ALL", disabled: list[str] | None = None,
                daz: bool = False):  # noqa: ANN201 - an onnxruntime.InferenceSession
    import onnxruntime as ort

    opts = session_options(ort)
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    if daz:
        opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=DISABLED_OPTIMIZERS if disabled is None else disabled)


class NumpyMiniLM:
    """The fused graph's arithmetic in numpy: per-tensor uint8 dynamic quantisation of activations (ONNX
    DynamicQuantizeLinear), int8 per-channel weights, int32 products (exact, or saturated in pairs as vpmaddubsw)."""

    def __init__(self, path: Path, max_tokens: int, saturate: bool = False) -> None:
        import onnx
        from onnx import numpy_helper

        w = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
        self.w = w
        self.saturate = saturate
        self._candidates: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._memo: dict[str, np.ndarray] = {}
        self.name = "minilm-onnx"
        self.dim = HIDDEN
        self.max_tokens = max_tokens
        self._tokenizer = load_tokenizer(max_tokens, padding=False)

    @staticmethod
    def _quantise(x: np.ndarray) -> tuple[np.ndarray, np.float32, int]:
        lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
        scale = np.float32((hi - lo) / 255.0) if hi > lo else np.float32(1.0)
        zp = int(np.clip(np.rint(-lo / scale), 0, 255))
        q = np.clip(np.rint(x / scale) + zp, 0, 255).astype(np.int32)
        return q, scale, zp

    def _int_matmul(self, q: np.ndarray, w8: np.ndarray, key: str) -> np.ndarray:
        """sum_k a[m,k]·w[k,n] of the raw uint8 activations; with ``saturate``, each pair (k, k+1) of products is
        clipped to int16 first (vpmaddubsw). Only pairs whose weights could exceed int16 (255·(|w_k|+|w_k+1|) >
        32767) are looked at: the rest can never saturate."""
        raw = q.astype(np.int64) @ w8.astype(np.int64)
        if not self.saturate:
            return raw
        if key not in self._candidates:
            w = np.abs(w8.astype(np.int64))
            self._candidates[key] = np.nonzero(255 * (w[0::2] + w[1::2]) > 32767)
        pj, pn = self._candidates[key]
        if pj.size:
            w64 = w8.astype(np.int64)
            pair = q[:, 2 * pj].astype(np.int64) * w64[2 * pj, pn] + q[:, 2 * pj + 1] * w64[2 * pj + 1, pn]
            excess = pair - np.clip(pair, -32768, 32767)
            np.add.at(raw, (slice(None), pn), -excess)
        return raw

    def _qmatmul(self, x: np.ndarray, p: str, role: str) -> np.ndarray:
        q, s, zp = self._quantise(x)
        w8 = self.w[f"{p}w_{role}"]
        raw = self._int_matmul(q, w8, p + role) - zp * w8.astype(np.int64).sum(axis=0)
        return raw.astype(np.float32) * (s * self.w[f"{p}s_{role}"]) + self.w[f"{p}b_{role}"]

    @staticmethod
    def _layernorm(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        return (x - mu) / np.sqrt(var + np.float32(1e-12)) * g + b

    @staticmethod
    def _gelu(x: np.ndarray) -> np.ndarray:
        try:
            from scipy.special import erf
        except ImportError:  # pragma: no cover - scipy is optional
            import math

            erf = np.vectorize(math.erf, otypes=[np.float32])
        return (np.float32(0.5) * x * (np.float32(1.0) + erf(x / np.float32(np.sqrt(2.0))))).astype(np.float32)

    def _table(self, name: str, rows: np.ndarray) -> np.ndarray:
        q = self.w[f"{name}_q"][rows].astype(np.float32)
        return (q - np.float32(self.w[f"{name}_zp"])) * self.w[f"{name}_scale"]

    def _one(self, text: str) -> np.ndarray:
        ids = np.asarray(self._tokenizer.encode(text).ids)
        n = len(ids)
        x = self._table("word", ids) + self._table("position", np.arange(n)) + self._table("token_type", np.zeros(n, int))
        x = self._layernorm(x, self.w["emb_ln_g"], self.w["emb_ln_b"])
        hd = HIDDEN // HEADS
        for i in range(LAYERS):
            p = f"l{i}_"
            qkv = self._qmatmul(x, p, "qkv")
            q, k, v = (qkv[:, j * HIDDEN : (j + 1) * HIDDEN].reshape(n, HEADS, hd).transpose(1, 0, 2) for j in range(3))
            att = q @ k.transpose(0, 2, 1) / np.float32(np.sqrt(hd))
            att = np.exp(att - att.max(axis=-1, keepdims=True))
            att /= att.sum(axis=-1, keepdims=True)
            ctx = (att @ v).transpose(1, 0, 2).reshape(n, HIDDEN)
            x1 = self._layernorm(self._qmatmul(ctx, p, "o") + x, self.w[p + "ln1_g"], self.w[p + "ln1_b"])
            ffn = self._qmatmul(self._gelu(self._qmatmul(x1, p, "i")), p, "f")
            x = self._layernorm(ffn + x1, self.w[p + "ln2_g"], self.w[p + "ln2_b"])
        return x.mean(axis=0)

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, HIDDEN), dtype=np.float32)
        for t in texts:  # memoised: compare() embeds every prompt twice, and this pass is slow
            if t not in self._memo:
                self._memo[t] = self._one(t)
        return l2_normalise(np.stack([self._memo[t] for t in texts]))


class StaticFloat64:
    """``minilm-static`` with the dequantise-and-average done in float64 (another summation order)."""

    def __init__(self, base) -> None:  # noqa: ANN001 - a StaticMiniLM
        self.base, self.name, self.dim, self.max_tokens = base, base.name, base.dim, base.max_tokens

    def embed(self, texts: list[str]) -> np.ndarray:
        b = self.base
        out = np.zeros((len(texts), self.dim), dtype=np.float64)
        for row, text in enumerate(texts):
            ids = np.asarray(b._tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)  # noqa: SLF001
            ids = ids[b._keep[ids]]  # noqa: SLF001
            if ids.size:
                out[row] = (b._scale[ids].astype(np.float64) @ b._rows[ids].astype(np.float64)) / ids.size  # noqa: SLF001
        norms = np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return (out / norms).astype(np.float32)


def routed(clf: SemanticClassifier, prompts: list[str]) -> tuple[np.ndarray, list[str | None]]:
    scores = np.array([list(clf.scores(p).values()) for p in prompts], dtype=np.float64)
    tiers = []
    for s in scores:
        passing = s >= clf.thresholds
        tiers.append(clf.tiers[int(np.argmax(np.where(passing, s, -np.inf)))] if passing.any() else None)
    return scores, tiers


def compare(ref_clf: SemanticClassifier, clf: SemanticClassifier, prompts: list[str], labels: list) -> dict:
    s0, t0 = routed(ref_clf, prompts)
    s1, t1 = routed(clf, prompts)
    v0, v1 = ref_clf.embedder.embed(prompts), clf.embedder.embed(prompts)
    changed = [i for i, (a, b) in enumerate(zip(t0, t1, strict=True)) if a != b]
    return {"max_score_diff": float(np.abs(s0 - s1).max()), "min_vec_cos": float((v0 * v1).sum(axis=1).min()),
            "changed": len(changed), "acc": float(np.mean([t == y for t, y in zip(t1, labels, strict=True)])),
            "tier_texts_max_diff": float(np.abs(ref_clf._matrix - clf._matrix).max())}  # noqa: SLF001


def latency(session, tokens: int, runs: int = 150) -> float:  # noqa: ANN001
    ids = np.array([[101] + [2000 + i % 500 for i in range(tokens - 2)] + [102]], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    for _ in range(15):
        session.run(None, feed)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feed)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


SPREAD_HEADER = ["| variant | max \\|Δ tier score\\| | min cosine to reference vector | prompts routed differently "
                 "| accuracy (dev + held-out) | max \\|Δ\\| tier-text vector |", "|---|---|---|---|---|---|"]


def spread_rows(cfg, ref: SemanticClassifier, variants: dict, prompts: list[str], labels: list) -> list[str]:  # noqa: ANN001
    out = [f"| reference (ORT on this CPU) | 0 | 1 | 0 | {compare(ref, ref, prompts, labels)['acc']:.3f} | 0 |"]
    for name, emb in variants.items():
        c = compare(ref, SemanticClassifier(cfg, emb), prompts, labels)
        out.append(f"| {name} | {c['max_score_diff']:.4f} | {c['min_vec_cos']:.4f} | {c['changed']} / "
                   f"{len(prompts)} | {c['acc']:.3f} | {c['tier_texts_max_diff']:.4f} |")
        print(out[-1], flush=True)
    return out


def latency_rows(graphs: dict[str, object], passes: int = 5) -> list[str]:
    """p50 ms of one run per graph and token count; every pass visits every (tokens, graph) cell, so a burst of
    outside load hits all cells alike, and each cell keeps its best median over the passes."""
    grid = (32, 64, 96, 128)
    best: dict[str, dict[int, float]] = {k: {} for k in graphs}
    for _ in range(passes):
        for n in grid:
            for k, sess in graphs.items():
                ms = latency(sess, n)
                best[k][n] = min(ms, best[k].get(n, ms))
    return [f"| {k} | " + " | ".join(f"{best[k][n]:.2f}" for n in grid) + " |" for k in graphs]


def op_rows() -> list[str]:
    """One-op graphs at 64x384 (the classifier's shape): ORT's SkipLayerNormalization vs the Add + LayerNormalization
    it fuses, p50 ms of 500 runs."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    shape = [1, 64, HIDDEN]
    rng = np.random.default_rng(0)
    feed = {n: rng.standard_normal(shape).astype(np.float32) for n in ("x", "y")}
    inits = [numpy_helper.from_array(np.ones(HIDDEN, np.float32), "g"),
             numpy_helper.from_array(np.zeros(HIDDEN, np.float32), "b")]
    graphs = {
        "SkipLayerNormalization (com.microsoft)": [helper.make_node(
            "SkipLayerNormalization", ["x", "y", "g", "b"], ["o"], domain="com.microsoft", epsilon=1e-12)],
        "Add + LayerNormalization": [helper.make_node("Add", ["x", "y"], ["s"]), helper.make_node(
            "LayerNormalization", ["s", "g", "b"], ["o"], axis=-1, epsilon=1e-12)],
    }
    out = []
    for name, nodes in graphs.items():
        vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "y")]
        model = helper.make_model(helper.make_graph(nodes, "op", vi, [helper.make_tensor_value_info(
            "o", TensorProto.FLOAT, shape)], inits), opset_imports=[helper.make_opsetid("", 17),
                                                                    helper.make_opsetid("com.microsoft", 1)])
        onnx.checker.check_model(model)
        opts = session_options(ort)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # measure the op as written
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        for _ in range(50):
            sess.run(None, feed)
        ts = []
        for _ in range(500):
            t0 = time.perf_counter()
            sess.run(None, feed)
            ts.append(time.perf_counter() - t0)
        out.append(f"| {name} | {np.median(ts) * 1e3:.3f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "embed_spread.md")
    ap.add_argument("--latency-only", action="store_true",
                    help="re-measure only the latency sections and splice them into the existing --out file")
    args = ap.parse_args()
    fuse = _fuse_module()
    if args.latency_only:
        head = args.out.read_text().split("\n## Latency of one")[0].rstrip("\n").split("\n")
        with tempfile.TemporaryDirectory() as tmp:
            exported = fuse.source_from_git(Path(tmp) / fuse.SOURCE_NAME)
            eight = Path(tmp) / "fused-8bit.onnx"
            fuse.fuse(exported, eight, weight_bits=8)
            lines = head + latency_section(exported, eight, asset_path(MODEL_FILE), fuse.WEIGHT_BITS)
        args.out.write_text("\n".join(lines + footer(f"; latency re-measured at load {os.getloadavg()[0]:.2f}")) + "\n")
        print("\n".join(lines))
        return
    cfg, rows = routing_config(), labelled_rows()
    prompts, labels = [r["prompt"] for r in rows], [r["tier"] for r in rows]
    load0 = os.getloadavg()[0]
    isa = procs.isa_flags()
    import onnxruntime

    shipped = asset_path(MODEL_FILE)
    ref = SemanticClassifier(cfg, get_embedder("minilm-onnx"))
    budget = ref.embedder.max_tokens  # type: ignore[attr-defined]
    lines = ["# Embedder spread across kernel paths (what could differ on another CPU)", "",
             f"Machine: {procs.machine_facts()['cpu_model']}, {os.cpu_count()} cores, ISA flags {', '.join(isa)}; "
             f"onnxruntime {onnxruntime.__version__}; load average {load0:.2f} at start. Generated by "
             "`python bench/embed_spread.py`.", "",
             f"Prompts: the {len(rows)} labelled prompts of `tests/data/semantic_routing.jsonl` (dev + held-out), "
             f"{budget} tokens read, classified with the default thresholds; each variant also embeds the tier texts "
             "itself. \"Routed differently\" counts prompts whose tier (or no-tier) differs from the reference's.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        exported = fuse.source_from_git(Path(tmp) / fuse.SOURCE_NAME)
        eight = Path(tmp) / "fused-8bit.onnx"
        fuse.fuse(exported, eight, weight_bits=8)
        lines += [f"## Shipped model: fused graph, {fuse.WEIGHT_BITS}-bit weights", "", *SPREAD_HEADER]
        lines += spread_rows(cfg, ref, {
            "ORT, graph optimisations off": OnnxMiniLM(session=ort_session(shipped, "ORT_DISABLE_ALL")),
            "ORT, SkipLayerNormFusion on (ORT default)": OnnxMiniLM(session=ort_session(shipped, disabled=[])),
            "ORT, denormals as zero": OnnxMiniLM(session=ort_session(shipped, daz=True)),
            "numpy reference, exact int32 products (other float kernels)": NumpyMiniLM(shipped, budget),
            "numpy reference, vpmaddubsw int16 saturation (emulated CPU without VNNI)": NumpyMiniLM(shipped, budget, True),
        }, prompts, labels)
        ref8 = SemanticClassifier(cfg, OnnxMiniLM(session=ort_session(eight)))
        lines += ["", "## The same graph with the 8-bit weights it was made from (why the shipped weights are 7-bit)", "",
                  *SPREAD_HEADER]
        lines += spread_rows(cfg, ref8, {
            "numpy reference, exact int32 products (other float kernels)": NumpyMiniLM(eight, budget),
            "numpy reference, vpmaddubsw int16 saturation (emulated CPU without VNNI)": NumpyMiniLM(eight, budget, True),
        }, prompts, labels)
        lines += ["", "## Model versions (the vectors a learned router or a cache may hold), against the shipped model",
                  "", *SPREAD_HEADER]
        lines += spread_rows(cfg, ref, {
            "8-bit weights, fused graph": OnnxMiniLM(session=ort_session(eight)),
            "8-bit weights, exported graph (shipped until 2026-12-03)": OnnxMiniLM(session=ort_session(exported, disabled=[])),
        }, prompts, labels)
        static = get_embedder("minilm-static")
        c = compare(SemanticClassifier(cfg, static), SemanticClassifier(cfg, StaticFloat64(static)), prompts, labels)
        lines += ["", "## `minilm-static`: float32 (production) vs the same mean in float64", "",
                  "| max \\|Δ tier score\\| | min cosine | prompts routed differently |", "|---|---|---|",
                  f"| {c['max_score_diff']:.2e} | {c['min_vec_cos']:.6f} | {c['changed']} / {len(rows)} |"]
        lines += latency_section(exported, eight, shipped, fuse.WEIGHT_BITS)
    args.out.write_text("\n".join(lines + footer("")) + "\n")
    print("\n".join(lines))


def latency_section(exported: Path, eight: Path, shipped: Path, bits: int) -> list[str]:
    lines = ["", "## Latency of one `session.run` (ms, one thread, best of 5 interleaved medians of 150)", "",
             "| graph | 32 tokens | 64 | 96 | 128 |", "|---|---|---|---|---|"]
    lines += latency_rows({"exported graph, ORT default fusions (shipped until 2026-12-03)":
                           ort_session(exported, disabled=[]),
                           "exported graph, SkipLayerNormFusion off": ort_session(exported),
                           "fused graph, 8-bit weights": ort_session(eight),
                           "shipped graph, graph optimisations off": ort_session(shipped, "ORT_DISABLE_ALL"),
                           "shipped graph, denormals as zero": ort_session(shipped, daz=True),
                           f"fused graph, {bits}-bit weights (shipped)": ort_session(shipped)})
    return lines + ["", "## One op at 64×384 (ms, p50 of 500, graph optimisations off)", "", "| op | p50 |",
                    "|---|---|", *op_rows()]


def footer(note: str) -> list[str]:
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return ["", f"Load average at end: {os.getloadavg()[0]:.2f}; git {rev.stdout.strip()}{note}.", "",
            "What one machine cannot show: the real AVX2 / AVX-512-without-VNNI / AMX kernels (emulated above from "
            "MLAS's instruction choice, not run), other onnxruntime versions, and ARM (NEON / SVE) kernels. "
            "Tokenisation is deterministic and CPU-independent. With 7-bit weights no pair of u8×s7 products can "
            "reach int16 saturation, so the integer products are the same on every x86 kernel; what remains is "
            "float evaluation order (LayerNorm, softmax, erf, the attention GEMMs), whose size the numpy rows "
            "measure: a decision that close to a tie or to the threshold can still flip on another CPU."]


if __name__ == "__main__":
    main()
