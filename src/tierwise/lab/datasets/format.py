"""The outcome format's in-memory types live in :mod:`tierwise.outcomes` (the product's train-router and calibrate
read them, so they are not lab-only); this module keeps the lab's import path."""

from tierwise.outcomes import SPLITS, ModelOutcome, OutcomeSet, PromptOutcomes, Split, model_names_in  # noqa: F401
