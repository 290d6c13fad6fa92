"""Prompt embeddings for learned routing, with an on-disk cache keyed by (embedder name, sha1 of the text).

Why a cache: training and benchmarking embed tens of thousands of dataset prompts, minutes of one core with the
transformer embedder, and the same prompts recur across sets (one benchmark, several model chains) and across runs.

Layout: ``<root>/<embedder>-<fingerprint>/shard-*.npz``, each shard holding ``keys`` (n×20 uint8 sha1 digests) and ``vecs``
(n×dim float32). New vectors are flushed as a shard after every batch (so an interrupted run keeps its progress) and
written atomically (temp file + rename), so a crashed writer never leaves a half shard. Shards are merged when there
are many of them. The root is ``$TIERWISE_CACHE_DIR/embeddings`` (default ``~/.cache/tierwise/lab/embeddings``).

:func:`routing_text` is the one text transform shared by training and serving: the embedders truncate from the start
(96 tokens for the transformer), while few-shot prompts put the actual question at the end, so a long prompt is
represented by its tail.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tierwise.embed import fingerprint, get_embedder

TAIL_CHARS = 640  # ≈ 128–160 WordPiece tokens of English: what the transformer embedder actually reads
_MERGE_AT = 32  # shards before a merge into one


def routing_text(text: str, tail_chars: int = TAIL_CHARS) -> str:
    """The part of a prompt the router embeds: the whole prompt, or its last ``tail_chars`` characters cut at a
    word boundary (few-shot prompts end with the question being asked)."""
    if len(text) <= tail_chars:
        return text
    tail = text[-tail_chars:]
    cut = tail.find(" ")
    return tail[cut + 1 :] if 0 <= cut < 40 else tail


def cache_root() -> Path:
    env = os.environ.get("TIERWISE_CACHE_DIR")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "tierwise" / "lab"
    return base / "embeddings"


def _digest(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()


class EmbeddingCache:
    """The cached vectors of one embedder; ``get`` embeds and stores whatever is missing."""

    def __init__(self, embedder_name: str, root: Path | None = None) -> None:
        self.embedder_name = embedder_name
        # Keyed by the model's fingerprint too: vectors of a rebuilt or rewritten model never mix with the old ones.
        self.folder = (root or cache_root()) / f"{embedder_name}-{fingerprint(embedder_name)}"
        self._index: dict[bytes, int] = {}
        self._vecs: list[np.ndarray] = []
        self._load()

    def _load(self) -> None:
        if not self.folder.is_dir():
            return
        for shard in sorted(self.folder.glob("shard-*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as z:
                    keys, vecs = z["keys"], z["vecs"].astype(np.float32)
            except (OSError, ValueError, KeyError):
                continue  # a damaged shard is ignored; its texts are simply embedded again
            self._add(keys, vecs)

    def _add(self, keys: np.ndarray, vecs: np.ndarray) -> None:
        offset = sum(len(v) for v in self._vecs)
        self._vecs.append(vecs)
        for i, k in enumerate(keys):
            self._index.setdefault(bytes(k), offset + i)

    def _table(self) -> np.ndarray:
        if len(self._vecs) > 1:  # concatenated lazily: one copy per read, not one per added batch
            self._vecs = [np.concatenate(self._vecs)]
        return self._vecs[0]

    def __len__(self) -> int:
        return len(self._index)

    def _write_shard(self, keys: np.ndarray, vecs: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, keys=keys, vecs=vecs)
            name = f"shard-{time.time_ns()}-{hashlib.sha1(keys.tobytes()).hexdigest()[:8]}.npz"
            os.replace(tmp, self.folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _maybe_merge(self) -> None:
        shards = sorted(self.folder.glob("shard-*.npz"))
        if len(shards) < _MERGE_AT or not self._vecs:
            return
        keys = np.zeros((len(self._index), 20), dtype=np.uint8)
        rows = np.zeros(len(self._index), dtype=np.int64)
        for j, (k, row) in enumerate(self._index.items()):
            keys[j] = np.frombuffer(k, dtype=np.uint8)
            rows[j] = row
        self._write_shard(keys, self._table()[rows])
        newest = max(self.folder.glob("shard-*.npz"), key=lambda p: p.stat().st_mtime_ns)
        for s in shards:
            if s != newest:
                s.unlink(missing_ok=True)

    def get(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 256,
        progress: Callable[[int, int], None] | None = None,
        persist: bool = True,
    ) -> np.ndarray:
        """Embeddings of ``texts`` (n × dim float32, L2-normalised), embedding only the uncached ones."""
        digests = [_digest(t) for t in texts]
        missing: dict[bytes, str] = {}
        for d, t in zip(digests, texts, strict=True):
            if d not in self._index:
                missing.setdefault(d, t)
        todo = list(missing.items())
        if todo:
            embedder = get_embedder(self.embedder_name)
            done = 0
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                vecs = np.asarray(embedder.embed([t for _, t in chunk]), dtype=np.float32)
                keys = np.stack([np.frombuffer(d, dtype=np.uint8) for d, _ in chunk])
                self._add(keys, vecs)
                if persist:
                    self._write_shard(keys, vecs)
                done += len(chunk)
                if progress is not None:
                    progress(done, len(todo))
            if persist:
                self._maybe_merge()
        if not texts:
            dim = self._vecs[0].shape[1] if self._vecs else 0
            return np.zeros((0, dim), dtype=np.float32)
        table = self._table()
        return table[np.fromiter((self._index[d] for d in digests), dtype=np.int64, count=len(digests))]


def stderr_progress(label: str) -> Callable[[int, int], None]:
    """A one-line progress reporter (rewritten in place) with the embedding rate."""
    start = time.perf_counter()

    def report(done: int, total: int) -> None:
        rate = done / max(time.perf_counter() - start, 1e-9)
        eta = (total - done) / max(rate, 1e-9)
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{label}: embedded {done}/{total} prompts ({rate:.0f}/s, eta {eta:.0f}s)   {end}")
        sys.stderr.flush()

    return report


def embed_prompts(
    embedder_name: str,
    texts: Sequence[str],
    *,
    tail_chars: int = TAIL_CHARS,
    progress: bool = False,
    label: str = "",
) -> np.ndarray:
    """Routing embeddings of raw prompts (after :func:`routing_text`), through the on-disk cache."""
    prepared = [routing_text(t, tail_chars) for t in texts]
    reporter = stderr_progress(label or embedder_name) if progress else None
    return EmbeddingCache(embedder_name).get(prepared, progress=reporter)
