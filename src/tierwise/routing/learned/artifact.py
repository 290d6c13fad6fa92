"""Versioned learned-router artifacts and the :class:`LearnedRouter` the gateway serves with.

One file, ``*.npz``: the predictor's arrays plus a ``__header__`` entry holding UTF-8 JSON::

    {"kind": "tierwise-router", "format_version": 1, "router_kind": "knn|logreg|ensemble",
     "embedder": "minilm-onnx", "embedding_dim": 384, "tail_chars": 640,
     "models": [...], "mean_cost_usd": [...],           # per model, mean over the training split
     "params": {...},                                      # hyper-parameters (and how they were chosen)
     "training": {"set": ..., "split": "train", "n_prompts": ..., "ids_sha1": ..., "cv": {...}},
     "calibration": {...} | null, "created": "ISO-8601"}

Loading refuses, with a message that says what to do, an artifact of another format version, one whose embedder is
unknown or cannot run here, and one trained for models other than the configuration's (naming the differences): a
router silently scoring the wrong columns would misroute every request. No pickle anywhere (``allow_pickle=False``).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tierwise.embed import EMBEDDERS, EmbedderUnavailable, get_embedder
from tierwise.routing.learned.choose import Rule, choose
from tierwise.routing.learned.embed_cache import TAIL_CHARS, routing_text
from tierwise.routing.learned.ensemble import EnsemblePredictor
from tierwise.routing.learned.knn import KNNPredictor
from tierwise.routing.learned.logistic import LogisticPredictor

ARTIFACT_KIND = "tierwise-router"
FORMAT_VERSION = 1
_HEADER_KEY = "__header__"


class Predictor(Protocol):
    kind: str

    def predict(self, E: np.ndarray) -> np.ndarray: ...
    def params(self) -> dict[str, Any]: ...
    def arrays(self) -> dict[str, np.ndarray]: ...


PREDICTORS: dict[str, Any] = {"knn": KNNPredictor, "logreg": LogisticPredictor, "ensemble": EnsemblePredictor}


class RouterArtifactError(ValueError):
    """An artifact that this tierwise cannot or must not serve."""


@dataclass
class LearnedRouter:
    """A trained pre-generation router: embeds prompts, predicts per-model quality, applies a choice rule."""

    models: list[str]
    mean_cost: np.ndarray  # (m,) USD per request, training-split means
    embedder_name: str
    predictor: Predictor
    header: dict[str, Any] = field(default_factory=dict)
    tail_chars: int = TAIL_CHARS

    @property
    def kind(self) -> str:
        return self.predictor.kind

    def predict_embeddings(self, E: np.ndarray) -> np.ndarray:
        """(n, m) predicted quality in [0, 1] from routing embeddings (see :func:`routing_text`)."""
        return np.clip(self.predictor.predict(np.asarray(E, dtype=np.float32)), 0.0, 1.0)

    def predict(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` and predict. CPU-bound (a few ms per prompt with the transformer embedder): call it off
        the event loop."""
        E = get_embedder(self.embedder_name).embed([routing_text(t, self.tail_chars) for t in texts])
        return self.predict_embeddings(E)

    def allowed_mask(self, allowed_models: Sequence[str] | None) -> np.ndarray | None:
        if allowed_models is None:
            return None
        unknown = [m for m in allowed_models if m not in self.models]
        if unknown:
            raise ValueError(f"models {unknown} are not in this router (it knows {self.models})")
        return np.array([m in allowed_models for m in self.models])

    def choose(
        self, pred: np.ndarray, rule: Rule, knob: float, allowed_models: Sequence[str] | None = None
    ) -> np.ndarray:
        """Index into :attr:`models` per prompt (see :mod:`tierwise.routing.learned.choose`)."""
        return choose(pred, self.mean_cost, rule, knob, self.allowed_mask(allowed_models))

    def route(self, text: str, rule: Rule, knob: float, allowed_models: Sequence[str] | None = None) -> str:
        """Convenience for one prompt: the chosen model's name."""
        return self.models[int(self.choose(self.predict([text]), rule, knob, allowed_models)[0])]


def save_router(router: LearnedRouter, path: str | os.PathLike[str]) -> Path:
    """Write the artifact atomically; returns its path."""
    path = Path(path)
    header = dict(router.header)
    header.update({
        "kind": ARTIFACT_KIND,
        "format_version": FORMAT_VERSION,
        "router_kind": router.kind,
        "embedder": router.embedder_name,
        "tail_chars": router.tail_chars,
        "models": list(router.models),
        "mean_cost_usd": [float(c) for c in router.mean_cost],
        "params": router.predictor.params(),
    })
    arrays = {k: np.asarray(v) for k, v in router.predictor.arrays().items()}
    arrays[_HEADER_KEY] = np.frombuffer(json.dumps(header, indent=1).encode("utf-8"), dtype=np.uint8)
    buf = io.BytesIO()
    save: Any = np.savez_compressed  # numpy's stub types **kwds as bool (allow_pickle's type): arrays are right
    save(buf, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON header alone (cheap: the arrays are not decompressed)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(bytes(z[_HEADER_KEY]).decode("utf-8"))
    except (OSError, ValueError, KeyError) as exc:
        raise RouterArtifactError(f"{path}: not a readable tierwise router artifact ({exc})") from exc


def _check_header(path: Path, h: dict[str, Any], expected_models: Sequence[str] | None, check_embedder: bool) -> None:
    if h.get("kind") != ARTIFACT_KIND:
        raise RouterArtifactError(f"{path}: kind {h.get('kind')!r} is not {ARTIFACT_KIND!r}")
    if h.get("format_version") != FORMAT_VERSION:
        raise RouterArtifactError(
            f"{path}: router artifact format version {h.get('format_version')!r}, but this tierwise reads version "
            f"{FORMAT_VERSION}; retrain it with `tierwise train-router`"
        )
    if h.get("router_kind") not in PREDICTORS:
        raise RouterArtifactError(f"{path}: unknown router kind {h.get('router_kind')!r}; known: {list(PREDICTORS)}")
    emb = h.get("embedder")
    if emb not in EMBEDDERS:
        raise RouterArtifactError(f"{path}: trained with embedder {emb!r}, not available here (have {EMBEDDERS})")
    if check_embedder:
        try:
            get_embedder(emb)
        except EmbedderUnavailable as exc:
            raise RouterArtifactError(f"{path}: embedder {emb!r} cannot run here: {exc}") from exc
    models = list(h.get("models") or [])
    if expected_models is not None and list(expected_models) != models:
        missing = [m for m in expected_models if m not in models]
        extra = [m for m in models if m not in expected_models]
        detail = []
        if missing:
            detail.append(f"configured but not in the artifact: {missing}")
        if extra:
            detail.append(f"in the artifact but not configured: {extra}")
        if not detail:
            detail.append(f"same models in another order (artifact {models}, config {list(expected_models)})")
        raise RouterArtifactError(
            f"{path}: router was trained for other models ({'; '.join(detail)}); retrain it with "
            f"`tierwise train-router --models {','.join(expected_models)}`"
        )


def load_router(
    path: str | os.PathLike[str], expected_models: Sequence[str] | None = None, *, check_embedder: bool = True
) -> LearnedRouter:
    """Load and validate an artifact. ``expected_models`` (the tier's pool, in order) must equal its models."""
    path = Path(path)
    if not path.is_file():
        raise RouterArtifactError(f"{path}: router artifact not found")
    h = read_header(path)
    _check_header(path, h, expected_models, check_embedder)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != _HEADER_KEY}
    try:
        predictor = PREDICTORS[h["router_kind"]].from_saved(h["params"], arrays)
    except (KeyError, TypeError, ValueError) as exc:
        raise RouterArtifactError(f"{path}: damaged {h['router_kind']} router artifact ({exc!r})") from exc
    mean_cost = np.asarray(h["mean_cost_usd"], dtype=float)
    if mean_cost.shape != (len(h["models"]),):
        raise RouterArtifactError(f"{path}: mean_cost_usd has {mean_cost.size} entries for {len(h['models'])} models")
    return LearnedRouter(list(h["models"]), mean_cost, h["embedder"], predictor, h, int(h.get("tail_chars", TAIL_CHARS)))
