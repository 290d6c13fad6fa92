"""Learned pre-generation routers (design §3): predict each model's quality on a prompt from its embedding, then
pick a model with a choice rule ("cheapest clearing a threshold" or "max quality − λ·cost").

Kinds: ``knn`` (baseline), ``logreg`` (per-model logistic probes), ``ensemble`` (CV-weighted blend of both; default).
Train with ``tierwise train-router``; serve with :func:`load_router` → :class:`LearnedRouter`.
"""

from tierwise.routing.learned.artifact import (
    ARTIFACT_KIND,
    FORMAT_VERSION,
    LearnedRouter,
    RouterArtifactError,
    load_router,
    read_header,
    save_router,
)
from tierwise.routing.learned.choose import RULES, choose, choose_lambda, choose_threshold, knob_grid

__all__ = [
    "ARTIFACT_KIND",
    "FORMAT_VERSION",
    "RULES",
    "LearnedRouter",
    "RouterArtifactError",
    "choose",
    "choose_lambda",
    "choose_threshold",
    "knob_grid",
    "load_router",
    "read_header",
    "save_router",
]
