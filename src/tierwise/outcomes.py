"""The outcome data format: "these prompts, these models, these outcomes" (docs/outcome-format.md).

One format for every offline routing dataset, so that routers, gates, calibration and evaluation are written once
and run on any public set that someone converts into it. On disk it is gzip'd JSON Lines (one prompt per line) plus
a sidecar ``<set>.meta.json``; see :mod:`tierwise.lab.datasets.outcome_io` for the reader, writer and validation.

In memory a set is an :class:`OutcomeSet` of :class:`PromptOutcomes`, each holding one :class:`ModelOutcome` per
model. ``None`` always means "the source did not record this" (never zero): a model whose ``cost_usd`` is ``None`` has
no defensible price and must be left out of cost-based metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = ("train", "test")


@dataclass(slots=True)
class ModelOutcome:
    """What one model did on one prompt.

    ``quality`` is in [0, 1] (1 = fully right). ``confidence`` is the model's own confidence signal mapped to [0, 1]
    where the source has one (e.g. exp(log-prob), a surrogate token probability, the majority share of samples);
    ``samples`` are extracted final answers of sampled generations ("" where none could be extracted), for
    self-consistency gates.
    """

    answer: str | None
    quality: float
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    confidence: float | None = None
    samples: list[str] | None = None
    latency_ms: float | None = None  # wall time of the whole answer, as recorded
    ttft_ms: float | None = None  # time to the first streamed token, where the source recorded it

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "answer": self.answer,
            "quality": self.quality,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
        }
        # Optional keys are omitted when absent to keep files small and diffs readable.
        if self.confidence is not None:
            out["confidence"] = self.confidence
        if self.samples is not None:
            out["samples"] = self.samples
        if self.latency_ms is not None:
            out["latency_ms"] = self.latency_ms
        if self.ttft_ms is not None:
            out["ttft_ms"] = self.ttft_ms
        return out


@dataclass(slots=True)
class PromptOutcomes:
    """One prompt with every model's outcome on it."""

    id: str
    split: Split
    prompt: str
    models: dict[str, ModelOutcome]
    system: str | None = None
    reference: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "split": self.split, "prompt": self.prompt}
        if self.system is not None:
            out["system"] = self.system
        if self.reference is not None:
            out["reference"] = self.reference
        out["models"] = {name: mo.to_json() for name, mo in self.models.items()}
        if self.meta:
            out["meta"] = self.meta
        return out


@dataclass(slots=True)
class OutcomeSet:
    """A named set of prompts × models, with set-level ``meta`` (prices, derivations, source, split recipe)."""

    name: str
    models: list[str]
    prompts: list[PromptOutcomes]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    def split(self, which: Split) -> OutcomeSet:
        """The subset of prompts in split ``which`` (same models and meta, name suffixed ``@train``/``@test``)."""
        if which not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {which!r}")
        return OutcomeSet(
            name=f"{self.name}@{which}",
            models=list(self.models),
            prompts=[p for p in self.prompts if p.split == which],
            meta=self.meta,
        )

    def count(self, which: Split) -> int:
        return sum(1 for p in self.prompts if p.split == which)

    def _models(self, models: Sequence[str] | None) -> list[str]:
        chosen = list(self.models if models is None else models)
        unknown = [m for m in chosen if m not in self.models]
        if unknown:
            raise KeyError(f"unknown model(s) {unknown} for set {self.name!r}; known: {self.models}")
        return chosen

    def _matrix(self, models: Sequence[str] | None, attr: str) -> np.ndarray:
        chosen = self._models(models)
        mat = np.full((len(self.prompts), len(chosen)), np.nan, dtype=float)
        for i, p in enumerate(self.prompts):
            for j, m in enumerate(chosen):
                value = getattr(p.models[m], attr)
                if value is not None:
                    mat[i, j] = value
        return mat

    def quality_matrix(self, models: Sequence[str] | None = None) -> np.ndarray:
        """(n_prompts, n_models) qualities, columns in the order of ``models`` (default: the set's order)."""
        return self._matrix(models, "quality")

    def cost_matrix(self, models: Sequence[str] | None = None) -> np.ndarray:
        """(n_prompts, n_models) USD costs; NaN where a cost is unknown."""
        return self._matrix(models, "cost_usd")

    def confidence_matrix(self, models: Sequence[str] | None = None) -> np.ndarray:
        """(n_prompts, n_models) confidences; NaN where the source has none."""
        return self._matrix(models, "confidence")

    def priced_models(self) -> list[str]:
        """Models with a known cost on every prompt: the only ones cost-based metrics may use."""
        return [m for m in self.models if all(p.models[m].cost_usd is not None for p in self.prompts)]

    def mean_quality(self, model: str) -> float:
        return float(np.mean(self.quality_matrix([model]))) if self.prompts else float("nan")

    def mean_cost(self, model: str) -> float | None:
        """Mean USD cost per prompt, or None when any prompt lacks a price for ``model``."""
        col = self.cost_matrix([model])
        if not self.prompts or np.isnan(col).any():
            return None
        return float(np.mean(col))

    def ids(self) -> list[str]:
        return [p.id for p in self.prompts]


def model_names_in(prompts: Iterable[PromptOutcomes]) -> list[str]:
    """Model names in first-seen order (used when building a set from rows)."""
    seen: dict[str, None] = {}
    for p in prompts:
        for m in p.models:
            seen.setdefault(m, None)
    return list(seen)
