"""Make client-supplied text safe to store, log and serialise.

Anything a client sends (header values, JSON strings) can carry lone surrogates (aiohttp decodes a non-UTF-8
header byte with ``surrogateescape``), control characters or absurd lengths. A lone surrogate cannot be encoded
as UTF-8, so a record holding one can be refused by SQLite, by orjson and by the fallback file alike: one such
request could wedge the whole ledger. Every such value is cleaned here before it reaches a record.
"""

from __future__ import annotations

import re
from typing import Any

# C0 controls but tab/newline, DEL, C1 controls, and lone surrogates (the only str values UTF-8 cannot encode).
_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def clean_text(value: str, max_chars: int | None = None) -> str:
    """``value`` with lone surrogates and control characters replaced by U+FFFD, cut to ``max_chars``.

    Cheap on the common path: a regex search that finds nothing returns the string itself.
    """
    if _BAD.search(value) is not None:
        value = _BAD.sub("\ufffd", value)
    if max_chars is not None and len(value) > max_chars:
        value = value[:max_chars]
    return value


def clean_optional(value: str | None, max_chars: int | None = None) -> str | None:
    return None if value is None else clean_text(value, max_chars)


def clean_json(value: Any) -> Any:
    """A copy of a JSON-like value whose every string (keys included) is cleaned; other leaves are kept,
    non-JSON objects become their ``str()``. Used only on the slow path, after a fast serialisation failed."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return clean_text(str(value))
