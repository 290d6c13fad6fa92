"""Semantic tier classifier: embed the prompt, compare it with each tier's description and utterances.

Each tier is represented by the embeddings of its ``description`` and every ``utterances`` entry, computed once at
construction. A prompt's score for a tier is, by default, the **mean of its two best cosines** over those texts
(``aggregate="top2"``). Nearest-example matching is the right shape (utterances are distinct *kinds* of request and a
prompt only has to resemble one kind), but a single best cosine lets one stray utterance capture prompts; requiring two
agreeing examples measured better for both embedders on the bundled routing set (MiniLM-int8: 88%/87% vs 84%/77% on
dev/held-out, HumanEval code prompts 81% vs 68%; see ``bench/results/routing_latency.md``). ``aggregate="max"``
(nearest text only) remains available. A tier described by a single text scores that text's cosine.

The winner is the highest-scoring tier among those that clear their own threshold (``tier.threshold``, else
``classifier.threshold``); when none does, ``classify`` returns None and the engine uses the fallback tier. Cosine
scales differ by embedder (static embeddings put unrelated texts at 0.3-0.5, MiniLM at 0.0-0.2), so when the config
does not set ``classifier.threshold`` explicitly the embedder's own default from :data:`DEFAULT_THRESHOLDS` applies.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from tierwise.config.schema import TierwiseConfig
from tierwise.embed.base import Embedder
from tierwise.requests import prompt_text
from tierwise.types import JSON

Aggregate = Literal["max", "top2"]

# Fitted on the dev split of the bundled routing set only (bench/routing_latency.py: grid 0.00-0.80 step 0.025, best
# dev accuracy, the smallest threshold on ties, aggregate top2); the held-out split is only reported. MiniLM's
# in-tier scores are low (median ~0.3) and do not separate gibberish at any threshold, so on dev no threshold beats
# none; the static embedder's best dev threshold also rejects 90 % of gibberish. (The defaults before 2026-12-03,
# 0.10 and 0.40, were read off a sweep that included the held-out split.)
DEFAULT_THRESHOLDS = {"minilm-onnx": 0.0, "minilm-static": 0.475}

# How much of the prompt's head the transformer reads when classifying: its cost is linear in tokens (≈ 7 ms at 64,
# 11 ms at 96 on one AVX-512 core of this project's machine) against a 10 ms end-to-end budget. Chosen on the dev
# split only (bench/routing_latency.py: the smallest of 32/48/64/96/128 whose dev accuracy equals the best; 48
# loses a dev prompt, 64/96/128 tie); the held-out split and the external sets are only reported. The static
# embedder's cost barely depends on length, so it keeps its own 512.
DEFAULT_MAX_TOKENS = {"minilm-onnx": 64}


def classifier_embedder(cfg: TierwiseConfig, embedder: Embedder) -> Embedder:
    """``embedder`` reading ``classifier.max_tokens`` tokens if set, else the embedder's classification default;
    an embedder without a token budget (no ``with_max_tokens``) is used as it is."""
    budget = cfg.classifier.max_tokens or DEFAULT_MAX_TOKENS.get(getattr(embedder, "name", ""))
    with_max_tokens = getattr(embedder, "with_max_tokens", None)
    return with_max_tokens(budget) if budget and with_max_tokens is not None else embedder


def default_threshold(cfg: TierwiseConfig, embedder: Embedder) -> float:
    """``classifier.threshold`` if the config sets it, else the embedder's measured default."""
    thr = cfg.classifier.threshold
    if "threshold" in cfg.classifier.model_fields_set and thr is not None:
        return float(thr)
    return DEFAULT_THRESHOLDS.get(getattr(embedder, "name", ""), float(cfg.classifier.threshold or 0.0))


def tier_texts(cfg: TierwiseConfig) -> dict[str, list[str]]:
    """The texts that describe each tier (description first); tiers with none cannot be chosen semantically."""
    out: dict[str, list[str]] = {}
    for name, tier in cfg.tiers.items():
        texts = [t.strip() for t in [tier.description, *tier.utterances] if t and t.strip()]
        if texts:
            out[name] = texts
    return out


class SemanticClassifier:
    """Implements the engine's ``TierClassifier`` protocol. Immutable after construction, so safe to call from
    the service's dedicated classifier thread (or any single thread)."""

    def __init__(self, cfg: TierwiseConfig, embedder: Embedder, aggregate: Aggregate = "top2") -> None:
        if aggregate not in ("max", "top2"):
            raise ValueError(f"aggregate must be 'max' or 'top2', not {aggregate!r}")
        embedder = classifier_embedder(cfg, embedder)
        self.embedder = embedder
        self.aggregate = aggregate
        self.max_chars = cfg.classifier.max_prompt_chars
        texts = tier_texts(cfg)
        self.tiers: list[str] = list(texts)
        default = default_threshold(cfg, embedder)
        self.thresholds = np.array(
            [t if (t := cfg.tiers[name].threshold) is not None else default for name in self.tiers],
            dtype=np.float32,
        )
        flat = [text for name in self.tiers for text in texts[name]]
        self._matrix = embedder.embed(flat) if flat else np.zeros((0, embedder.dim), dtype=np.float32)
        bounds = np.cumsum([0] + [len(texts[name]) for name in self.tiers])
        self._slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        self._starts = bounds[:-1].astype(np.intp)

    def scores(self, text: str) -> dict[str, float]:
        """Score of every describable tier for ``text`` (cosine, higher is closer); for diagnostics and tests."""
        return dict(zip(self.tiers, self._score_vector(text).tolist(), strict=True))

    def classify(self, body: JSON) -> tuple[str, float] | None:
        """(tier, score) of the best tier clearing its threshold, or None when nothing matches confidently."""
        if not self.tiers:
            return None
        text = prompt_text(body, self.max_chars)
        if not text:
            return None
        scores = self._score_vector(text)
        passing = scores >= self.thresholds
        if not passing.any():
            return None
        best = int(np.argmax(np.where(passing, scores, -np.inf)))  # first max wins: config order breaks ties
        return self.tiers[best], float(scores[best])

    def _score_vector(self, text: str) -> np.ndarray:
        sims = self._matrix @ self.embedder.embed([text])[0]
        if self.aggregate == "max":
            return np.maximum.reduceat(sims, self._starts)
        out = np.empty(len(self._slices), dtype=np.float32)
        for i, s in enumerate(self._slices):
            part = sims[s]
            out[i] = part[0] if part.size == 1 else np.partition(part, part.size - 2)[-2:].mean()
        return out
