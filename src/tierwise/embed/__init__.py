"""Offline sentence embedders for semantic routing (torch-free at run time).

``get_embedder(name)`` is the entry point. Backends import onnxruntime/tokenizers only when first built, so importing
tierwise never pays for them, and each backend is built once per process (the assets are read-only and the objects
are used from the single classifier thread).
"""

from __future__ import annotations

import json
import threading

from tierwise.embed.base import Embedder, EmbedderUnavailable, asset_path, l2_normalise

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


# The shipped file whose bytes decide each embedder's vectors.
_ASSETS = {"minilm-onnx": "minilm-l6-int8-fused.onnx", "minilm-static": "minilm-static-256.npz"}


def fingerprint(name: str) -> str:
    """Short id of the vectors embedder ``name`` gives with this package's assets (sha256 prefix of its model file,
    from ``MANIFEST.json``). Stores of vectors key on it, so vectors of a rebuilt or rewritten model never mix with
    the old model's."""
    if name not in _ASSETS:
        raise ValueError(f"unknown embedder '{name}'; choose one of {', '.join(EMBEDDERS)}")
    manifest = json.loads(asset_path("MANIFEST.json").read_text())
    return str(manifest["files"][_ASSETS[name]]["sha256"])[:12]


def _build(name: str) -> Embedder:
    if name == "minilm-onnx":
        from tierwise.embed.onnx_minilm import OnnxMiniLM

        return OnnxMiniLM()
    if name == "minilm-static":
        from tierwise.embed.static_minilm import StaticMiniLM

        return StaticMiniLM()
    raise ValueError(f"unknown embedder '{name}'; choose one of {', '.join(EMBEDDERS)}")


__all__ = ["EMBEDDERS", "Embedder", "EmbedderUnavailable", "fingerprint", "get_embedder", "l2_normalise"]
