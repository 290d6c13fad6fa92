"""Offline outcome datasets: one documented format, loaders for the shared public sets, and a registry.

Typical use::

    from tierwise.lab.datasets import list_sets, load_set
    s = load_set("zellinger/mmlu/llama")
    test = s.split("test")
    q, c = test.quality_matrix(), test.cost_matrix()
"""

from tierwise.lab.datasets.format import SPLITS, ModelOutcome, OutcomeSet, PromptOutcomes, Split
from tierwise.lab.datasets.outcome_io import (
    FORMAT_VERSION,
    OutcomeFormatError,
    paths_for,
    read_outcome_set,
    write_outcome_set,
)
from tierwise.lab.datasets.paths import SharedDataMissing, shared_data_root
from tierwise.lab.datasets.registry import AGGREGATE_ONLY, clear_cache, list_sets, load_set

__all__ = [
    "AGGREGATE_ONLY",
    "FORMAT_VERSION",
    "SPLITS",
    "ModelOutcome",
    "OutcomeFormatError",
    "OutcomeSet",
    "PromptOutcomes",
    "SharedDataMissing",
    "Split",
    "clear_cache",
    "list_sets",
    "load_set",
    "paths_for",
    "read_outcome_set",
    "shared_data_root",
    "write_outcome_set",
]
