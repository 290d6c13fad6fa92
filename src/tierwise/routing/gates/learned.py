"""Learned gate: a logistic model over cheap answer features, trained on recorded outcomes, predicts
P(answer is right). Features are computed by :func:`gate_features`, shared by training and serving."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson

from tierwise.config.schema import GateConfig
from tierwise.routing.gates.base import GateContext, GateError

GATE_ARTIFACT_VERSION = 1
FEATURES = ("conf", "logit_conf", "min_token_prob", "log_chars", "has_number", "bias")


def gate_features(confidence: float | None, min_token_prob: float | None, text: str) -> np.ndarray:
    """Feature vector for one answer (missing log-probs count as neutral 0.5)."""
    conf = 0.5 if confidence is None or math.isnan(confidence) else min(max(confidence, 1e-6), 1 - 1e-6)
    mtp = conf if min_token_prob is None else min(max(min_token_prob, 1e-6), 1.0)
    return np.array(
        [conf, math.log(conf / (1 - conf)), mtp, math.log1p(len(text)), float(any(ch.isdigit() for ch in text)), 1.0]
    )


def load_gate_artifact(path: str | Path) -> np.ndarray:
    data = orjson.loads(Path(path).read_bytes())
    if data.get("kind") != "tierwise-gate" or data.get("version") != GATE_ARTIFACT_VERSION:
        raise ValueError(
            f"{path}: not a tierwise gate artifact of version {GATE_ARTIFACT_VERSION} "
            f"(kind={data.get('kind')!r}, version={data.get('version')!r}); retrain it with this tierwise"
        )
    if tuple(data.get("features", ())) != FEATURES:
        raise ValueError(f"{path}: gate features {data.get('features')} differ from this version's {list(FEATURES)}")
    return np.asarray(data["weights"], dtype=float)


class LearnedGate:
    def __init__(self, cfg: GateConfig) -> None:
        assert cfg.artifact is not None
        self.threshold = cfg.threshold
        self.weights = load_gate_artifact(cfg.artifact)

    def prepare(self, body: dict) -> None:
        body["logprobs"] = True

    async def confidence(self, ctx: GateContext) -> float:
        lps = ctx.completion.logprobs
        if lps is None:
            raise GateError(f"learned gate needs logprobs; model '{ctx.model}' returned none")
        conf = math.exp(min(0.0, sum(lps) / len(lps))) if lps else None
        mtp = math.exp(min(lps)) if lps else None
        z = float(gate_features(conf, mtp, ctx.completion.text) @ self.weights)
        return 1.0 / (1.0 + math.exp(-z))
