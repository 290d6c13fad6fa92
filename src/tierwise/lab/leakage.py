"""Train/test leakage: test prompts that also appear in the train split.

A learned router (kNN above all) that saw a test prompt in train has memorised its answer; on one held-back set, 119
of 500 test prompts appeared verbatim in train and a router's AUC fell from 0.39 to 0.17 without them. ``tierwise
eval`` therefore looks for them, warns, and reports the table with and without them.

Two levels: **exact** (the same prompt text, surrounding whitespace aside) and **near-exact** (the same after
lower-casing, dropping punctuation and collapsing whitespace: the copies that differ by a trailing "?" or a double
space). Anything looser (paraphrases) is a research question, not a check.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from tierwise.lab.datasets.format import OutcomeSet

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")


def near_key(text: str) -> str:
    """The text as near-exact duplicates share it: NFKC, lower case, no punctuation, single spaces."""
    t = unicodedata.normalize("NFKC", text).lower()
    return _SPACE.sub(" ", _PUNCT.sub(" ", t)).strip()


@dataclass(frozen=True)
class Leakage:
    """Test prompt ids that also occur in train."""

    exact: frozenset[str]
    near: frozenset[str]  # near-exact but not exact
    n_test: int

    @property
    def ids(self) -> frozenset[str]:
        return self.exact | self.near

    def summary(self) -> str:
        return (f"{len(self.ids)} of {self.n_test} test prompts also appear in train ({len(self.exact)} exact, "
                f"{len(self.near)} near-exact: same text after lower-casing, dropping punctuation and collapsing "
                "whitespace)")


def find_leakage(oset: OutcomeSet) -> Leakage:
    """Exact and near-exact duplicates of train prompts in the test split (empty prompts are ignored)."""
    train = [p.prompt or "" for p in oset.prompts if p.split == "train"]
    exact_keys = {t.strip() for t in train if t.strip()}
    near_keys = {near_key(t) for t in train if near_key(t)}
    exact, near, n_test = set(), set(), 0
    for p in oset.prompts:
        if p.split != "test":
            continue
        n_test += 1
        text = (p.prompt or "").strip()
        if not text:
            continue
        if text in exact_keys:
            exact.add(p.id)
        elif near_key(text) in near_keys:
            near.add(p.id)
    return Leakage(frozenset(exact), frozenset(near), n_test)


def without(oset: OutcomeSet, ids: frozenset[str]) -> OutcomeSet:
    """``oset`` with the test prompts ``ids`` removed (train untouched)."""
    return OutcomeSet(oset.name, list(oset.models),
                      [p for p in oset.prompts if not (p.split == "test" and p.id in ids)], oset.meta)
