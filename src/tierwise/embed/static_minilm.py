"""``minilm-static``: a model2vec-style static embedding distilled from the same MiniLM.

Each vocabulary token got one vector (its ``[CLS] tok [SEP]`` MiniLM encoding, PCA'd to 256 dims and SIF-weighted so
frequent tokens count less); a text is the mean of its tokens' rows. No attention, no matrix multiply: the cost is
tokenisation plus a gather, ~0.1 ms for a 200-token prompt, at the price of word order and context.
"""

from __future__ import annotations

import numpy as np

from tierwise.embed.base import asset_path, l2_normalise, load_tokenizer

TABLE_FILE = "minilm-static-256.npy"
# [PAD], [UNK], [CLS], [SEP], [MASK]: carry no meaning of the text itself.
_SPECIAL_IDS = np.array([0, 100, 101, 102, 103])


class StaticMiniLM:
    """Static token table embedder: fast enough to run inline, weaker on paraphrase than the transformer."""

    name = "minilm-static"

    def __init__(self, max_tokens: int = 512) -> None:
        table = np.load(asset_path(TABLE_FILE), allow_pickle=False)
        # float16 on disk halves the asset; rows are upcast per lookup, never the whole table (keeps RSS small).
        self._table = table
        self.dim = int(table.shape[1])
        self._keep = np.ones(table.shape[0], dtype=bool)
        self._keep[_SPECIAL_IDS] = False
        self._tokenizer = load_tokenizer(max_tokens, padding=False)
        self.max_tokens = max_tokens

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            ids = np.asarray(self._tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)
            ids = ids[self._keep[ids]]
            if ids.size:
                out[row] = self._table[ids].astype(np.float32).mean(axis=0)
        return l2_normalise(out)
