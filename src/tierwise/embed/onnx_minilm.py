"""``minilm-onnx``: all-MiniLM-L6-v2 as a per-channel quantised ONNX graph run by onnxruntime on one thread.

The graph is the int8 export of ``scripts/build-embedders.py`` rewritten by ``scripts/fuse-embedder.py`` into fused
onnxruntime kernels (one ``QAttention`` per layer, ``DynamicQuantizeMatMul`` with folded biases, mean pooling and L2
normalisation at the end), its matrix weights narrowed to 7 bits so that CPUs without VNNI compute the same integer
products as those with it (``bench/results/embed_spread.md``). The output is the sentence-transformers embedding up
to quantisation error (cosine to fp32 ≈ 0.99).

Cost grows linearly with tokens (on this project's 2-core AMD EPYC, AVX-512 VNNI, one thread: ≈ 4 ms for 32,
7 ms for 64, 11 ms for 96 tokens; ``bench/results/routing_latency.md``), so inputs are truncated: ``max_tokens`` = 96
by default (learned routers), and the semantic classifier reads fewer (:meth:`OnnxMiniLM.with_max_tokens`, its
budget chosen on the dev split).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tierwise.embed.base import asset_path, l2_normalise, load_tokenizer, require

MODEL_FILE = "minilm-l6-int8-fused.onnx"
# onnxruntime 1.32 fuses Add + LayerNormalization into SkipLayerNormalization, which is slower than the two kernels
# it replaces on this CPU (bench/results/embed_spread.md, "exported graph" rows); the graph keeps them apart.
DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


def session_options(ort: Any) -> Any:
    """One thread, sequential, no spinning: the gateway's event loop and upstream clients share the 2 cores."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # never burn the shared core
    return opts


class OnnxMiniLM:
    """Transformer sentence embedder; ~20x slower than the static table but clearly more accurate."""

    name = "minilm-onnx"
    dim = 384

    def __init__(self, max_tokens: int = 96, batch_size: int = 1, session: Any = None) -> None:
        if session is None:
            ort = require("onnxruntime", "onnxruntime")
            session = ort.InferenceSession(str(asset_path(MODEL_FILE)), session_options(ort),
                                           providers=["CPUExecutionProvider"], disabled_optimizers=DISABLED_OPTIMIZERS)
        self._session = session
        self._tokenizer = load_tokenizer(max_tokens, padding=True)
        self.max_tokens = max_tokens
        self._batch_size = batch_size

    def with_max_tokens(self, max_tokens: int) -> OnnxMiniLM:
        """The same model reading at most ``max_tokens`` WordPiece tokens (special tokens included); shares this
        one's ORT session (``run`` is thread-safe), so a second budget costs a tokenizer, not a model."""
        if max_tokens == self.max_tokens:
            return self
        return OnnxMiniLM(max_tokens, self._batch_size, session=self._session)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed one text per ORT call by default: dynamic int8 quantisation picks activation scales per call, so
        batching (and its padding) would make a text's vector depend on its batch-mates. Routing embeds one
        prompt per decision and tier texts once, so determinism costs nothing that matters."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = [self._run(texts[i : i + self._batch_size]) for i in range(0, len(texts), self._batch_size)]
        # The graph normalises already; re-normalising is cheap and guards against int8 rounding drift.
        return l2_normalise(np.concatenate(out))

    def _run(self, texts: list[str]) -> np.ndarray:
        # encode_batch fans out over a rayon pool; a single prompt (the serving case) stays on this thread.
        encodings = [self._tokenizer.encode(texts[0])] if len(texts) == 1 else self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return self._session.run(None, feed)[0]
