"""Fixed, documented train/test splits for sets that ship without one.

A split must never change between runs, machines or Python versions (``hash()`` is salted per process), and
duplicate prompts must land on the same side or a router would be tested on its own training data. So the side is a
pure function of the *prompt text*: ``sha256(salt + "\\x00" + key)`` read as a fraction in [0, 1); below
``test_fraction`` means test.
"""

from __future__ import annotations

import hashlib
from typing import Any

from tierwise.lab.datasets.format import Split

SPLIT_SALT = "tierwise-split-v1"
DEFAULT_TEST_FRACTION = 0.5


def hash_fraction(key: str, salt: str = SPLIT_SALT) -> float:
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def hash_split(key: str, test_fraction: float = DEFAULT_TEST_FRACTION, salt: str = SPLIT_SALT) -> Split:
    """Deterministic side for ``key`` (use the prompt text so duplicates stay together)."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    return "test" if hash_fraction(key, salt) < test_fraction else "train"


def hash_split_meta(test_fraction: float = DEFAULT_TEST_FRACTION, key: str = "prompt text") -> dict[str, Any]:
    """The recipe, recorded in a set's meta so anyone can recompute the split."""
    return {
        "method": "hash",
        "recipe": "test iff int(sha256(salt + '\\x00' + key)[:8], big-endian) / 2**64 < test_fraction",
        "salt": SPLIT_SALT,
        "key": key,
        "test_fraction": test_fraction,
    }


def native_split_meta(detail: str) -> dict[str, Any]:
    return {"method": "native", "detail": detail}
