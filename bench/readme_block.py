"""Rewrite one generated block of README.md, delimited by ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``.

Benches that own a README table (``bench/overhead/scale.py --readme``, ``bench/semantic_gateway_latency.py
--readme``) share this, so the text between the markers is always exactly what the last run wrote.
"""

from __future__ import annotations

import re
from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_block(path: Path, name: str, lines: list[str]) -> None:
    """Replace everything between the ``name`` markers (kept) with ``lines``; exits if the markers are missing."""
    begin, end = markers(name)
    text = path.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path}: no {begin} … {end} block to update")
    block = "\n".join([begin, *lines, end])
    path.write_text(re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S))
