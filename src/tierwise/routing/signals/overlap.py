"""Which tiers are described so alike that the semantic classifier cannot tell them apart?

Used by ``tierwise check-config``. Two tiers overlap when some text of one (description or utterance) is nearly the
same request as some text of the other: the classifier scores a tier by its best-matching texts, so one such pair is
enough to send prompts of that kind to either tier more or less at random. The *worst pair* is reported because it
is what the operator has to rewrite. The pair maximum is used rather than centroid similarity because centroids of
well-separated tiers can still be close (broad tiers average towards the same "generic request" direction), while a
near-duplicate pair is always a real defect.
"""

from __future__ import annotations

from itertools import combinations
from typing import NamedTuple

import numpy as np

from tierwise.config.schema import TierwiseConfig
from tierwise.embed.base import Embedder
from tierwise.routing.signals.semantic import tier_texts

# Static embeddings put every pair of texts closer together than the transformer does (unrelated prompts sit around
# cosine 0.4-0.5 instead of 0.0-0.2), so the same "near duplicate" needs a higher bar there.
DEFAULT_THRESHOLDS = {"minilm-onnx": 0.8, "minilm-static": 0.9}


class TierOverlap(NamedTuple):
    tier_a: str
    tier_b: str
    similarity: float  # max cosine between a text of tier_a and a text of tier_b
    worst_pair: tuple[str, str]  # (text of tier_a, text of tier_b) with that cosine


def tier_overlaps(cfg: TierwiseConfig, embedder: Embedder, threshold: float | None = None) -> list[TierOverlap]:
    """Tier pairs whose closest texts have cosine ≥ ``threshold``, most similar first.

    ``threshold`` defaults per embedder (:data:`DEFAULT_THRESHOLDS`, 0.8 for unknown ones). Tiers without a
    description or utterances are skipped: the classifier never picks them, so they cannot be confused.
    """
    if threshold is None:
        threshold = DEFAULT_THRESHOLDS.get(getattr(embedder, "name", ""), 0.8)
    texts = tier_texts(cfg)
    vectors = {name: embedder.embed(items) for name, items in texts.items()}
    found: list[TierOverlap] = []
    for a, b in combinations(texts, 2):
        sims = vectors[a] @ vectors[b].T
        i, j = np.unravel_index(int(np.argmax(sims)), sims.shape)
        best = float(sims[i, j])
        if best >= threshold:
            found.append(TierOverlap(a, b, round(best, 4), (texts[a][i], texts[b][j])))
    found.sort(key=lambda o: -o.similarity)
    return found
