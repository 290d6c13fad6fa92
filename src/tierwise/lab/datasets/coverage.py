"""Partially labelled outcome sets (the normal case for tierwise's own traffic) made usable, or refused precisely.

A cascade serves one model per prompt: the dear rung never answers the prompts the cheap rung passed, so ledger
outcomes (:mod:`tierwise.lab.datasets.ledger`) label some models on some prompts only. Calibration and router
training compare models *on the same prompt*, so they use the prompts labelled for every model they consider
(complete cases) and say what they left out; when too little is left they refuse, naming per model and split how
many prompts carry a label. Complete cases over-represent the prompts a cascade escalated — said in the note.
"""

from __future__ import annotations

from collections.abc import Sequence

from tierwise.lab.datasets.format import OutcomeSet


class MissingLabels(ValueError):
    """Too few prompts are labelled for every model a command needs; the message says which labels are missing."""


def missing_models(oset: OutcomeSet) -> bool:
    """Whether some prompt lacks an outcome for some model of the set."""
    return any(m not in p.models for p in oset.prompts for m in oset.models)


def coverage_lines(oset: OutcomeSet, models: Sequence[str]) -> list[str]:
    """Per model: on how many prompts of each split it has an outcome."""
    lines = []
    for m in models:
        parts = []
        for split in ("train", "test"):
            ps = [p for p in oset.prompts if p.split == split]
            parts.append(f"{split} {sum(m in p.models for p in ps)}/{len(ps)}")
        lines.append(f"  {m}: labelled on {', '.join(parts)}")
    return lines


def complete_cases(oset: OutcomeSet, models: Sequence[str] | None = None, *, min_train: int = 2,
                   min_test: int = 0) -> tuple[OutcomeSet, str | None]:
    """``oset`` restricted to ``models`` (default: all) and to the prompts labelled for every one of them.

    Returns (set, note): note is None when nothing was left out, else what was left out and why it matters. Raises
    :class:`MissingLabels` when fewer than ``min_train`` train or ``min_test`` test prompts remain."""
    pool = list(oset.models if models is None else models)
    unknown = [m for m in pool if m not in oset.models]
    if unknown:
        raise MissingLabels(f"{oset.name}: no outcome at all for model(s) {unknown}; models with outcomes: "
                            f"{', '.join(oset.models)}")
    keep = [p for p in oset.prompts if all(m in p.models for m in pool)]
    if len(keep) == len(oset.prompts) and pool == list(oset.models):
        return oset, None
    out = OutcomeSet(oset.name, pool, keep, oset.meta)
    if len(keep) == len(oset.prompts):
        return out, None
    n_train, n_test = out.count("train"), out.count("test")
    detail = "\n".join(coverage_lines(oset, pool))
    if n_train < min_train or n_test < min_test:
        raise MissingLabels(
            f"{oset.name}: only {n_train} train and {n_test} test prompt(s) are labelled for every model of "
            f"{pool} (need at least {min_train} train{f' and {min_test} test' if min_test else ''}):\n{detail}\n"
            "Label every answer a request saw (quality as a mapping {model: q} in the labels file: escalated "
            "rungs' answers included), or name fewer models (--chain / --models).")
    note = (f"{oset.name}: using the {len(keep)} of {len(oset.prompts)} prompts labelled for every model of {pool} "
            f"(train {n_train}, test {n_test}); left out {len(oset.prompts) - len(keep)}:\n{detail}\n"
            "A cascade's dear rung never answers the prompts its cheap rung passed, so the prompts kept "
            "over-represent escalated requests.")
    return out, note
