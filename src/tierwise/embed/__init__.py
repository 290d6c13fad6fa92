"""Offline sentence embedders for semantic routing (torch-free at run time).

``get_embedder(name)`` is the entry point. Backends import onnxruntime/tokenizers only when first built, so importing
tierwise never pays for them, and each backend is built once per process (the assets are read-only and the objects
are used from the single classifier thread).
"""

from __future__ import annotations

import threading

from tierwise.embed.base import Embedder, EmbedderUnavailable, l2_normalise

EMBEDDERS = ("minilm-onnx", "minilm-static")

_cache: dict[str, Embedder] = {}
_lock = threading.Lock()


def get_embedder(name: str) -> Embedder:
    """Return the shared embedder called ``name`` (one of :data:`EMBEDDERS`), building it on first use.

    Raises :class:`EmbedderUnavailable` naming the pip command when a runtime package is missing.
    """
    with _lock:
        if name not in _cache:
            _cache[name] = _build(name)
        return _cache[name]


def _build(name: str) -> Embedder:
    if name == "minilm-onnx":
        from tierwise.embed.onnx_minilm import OnnxMiniLM

        return OnnxMiniLM()
    if name == "minilm-static":
        from tierwise.embed.static_minilm import StaticMiniLM

        return StaticMiniLM()
    raise ValueError(f"unknown embedder '{name}'; choose one of {', '.join(EMBEDDERS)}")


__all__ = ["EMBEDDERS", "Embedder", "EmbedderUnavailable", "get_embedder", "l2_normalise"]
