"""Contextual gate: a calibrated P(serving this rung's answer loses nothing | what the cascade knows so far).

A plain log-prob gate looks at one number. By the time rung *i* has answered, the cascade also knows what the
earlier rungs answered (two cheap models agreeing on an MCQ letter is strong evidence), how confident they were,
and — when the cascade names a router (``cascade.router`` or a start router) — a learned prior per model for this
very prompt (a prior that says "the strong model is no likelier to be right" makes escalating pointless). One
logistic model per (chain, rung), trained on recorded outcomes to predict that serving here is as good as the top
rung's answer, turns these into a probability; thresholds on it are fitted by :mod:`tierwise.lab.calibrate`.
Training lives in :mod:`tierwise.lab.contextual` and uses :func:`features` below, so training and serving compute
the same numbers.

Features (all from :class:`GateContext`; :data:`FEATURES` is the full list, an artifact keeps a subset per rung):

- ``conf`` / ``conf_logit``: the rung's own exp(mean token log-prob), and its logit — input ``logprobs``;
- ``vote_share``: share of the rung's k samples agreeing with the majority — input ``samples`` (gate ``samples: k``);
- ``prior`` / ``prior_gap``: the router's predicted quality for this model, and it minus the best prediction among
  the stronger rungs — input ``prior``;
- ``agree_prev`` / ``agree_frac``: the normalised final answer equals the previous rung's / share of earlier rungs
  it equals; ``prev_conf_agree``: the previous rung's confidence logit when it agrees (0 otherwise);
  ``has_history``: 0 when this is the first rung run (a start router skipped the earlier ones);
- ``log_len``: log(1 + answer characters); ``bias``.

Missing inputs: a rung's artifact lists the inputs it was trained with (``requires``); if one of them is absent at
serve time (no logprobs returned, no router prior, fewer than 2 samples) the gate raises :class:`GateError` and the
cascade escalates. Inputs not required fall back to neutral values that carry no evidence: confidence 0.5 (logit
0), prior 0.5 (gap 0), vote share 1 (a single answer agrees with itself), earlier rungs without logprobs
contribute logit 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from tierwise.config.schema import GateConfig
from tierwise.routing.gates.base import GateContext, GateError, RungAnswer
from tierwise.routing.gates.vote import agreement, extract_answer, keep_majority
from tierwise.types import JSON

ARTIFACT_KIND = "tierwise-cascade-gate"
ARTIFACT_VERSION = 1
FEATURES = ("conf", "conf_logit", "vote_share", "prior", "prior_gap", "agree_prev", "agree_frac", "prev_conf_agree",
            "has_history", "log_len", "bias")
INPUTS = ("logprobs", "samples", "prior")
_CONF_CLIP = 1e-4


def _logit(p: float, clip: float) -> float:
    p = min(max(p, clip), 1.0 - clip)
    return math.log(p / (1.0 - p))


def lp_confidence(logprobs: Sequence[float] | None) -> float | None:
    """exp(mean token log-prob), as the cascade records it for history (None without logprobs)."""
    return math.exp(min(0.0, sum(logprobs) / len(logprobs))) if logprobs else None


def normalise_answer(text: str) -> str | None:
    """The final answer used for agreement between rungs (MCQ letter, last number, or normalised last line)."""
    return extract_answer(text, "auto")


def features(
    rung: int,
    chain: Sequence[str],
    text: str,
    confidence: float | None,
    vote_share: float | None,
    prior: Mapping[str, float] | None,
    history: Sequence[RungAnswer],
) -> list[float]:
    """The :data:`FEATURES` vector of rung ``rung``'s answer ``text`` (neutral values for absent inputs)."""
    conf = 0.5 if confidence is None else min(max(float(confidence), 0.0), 1.0)
    share = 1.0 if vote_share is None else float(vote_share)
    p_own, p_gap = 0.5, 0.0
    if prior is not None:
        p_own = min(max(float(prior.get(chain[rung], 0.5)), 0.0), 1.0)
        stronger = [float(prior[m]) for m in chain[rung + 1 :] if m in prior]
        p_gap = p_own - max(stronger) if stronger else 0.0
    mine = normalise_answer(text)
    earlier = [normalise_answer(h.text) for h in history]
    agree_prev = float(bool(earlier) and mine is not None and earlier[-1] == mine)
    agree_frac = sum(e is not None and e == mine for e in earlier) / len(earlier) if earlier else 0.0
    prev_conf = history[-1].logprob_confidence if history else None
    prev_agree = agree_prev * (0.0 if prev_conf is None else _logit(prev_conf, _CONF_CLIP))
    return [conf, _logit(conf, _CONF_CLIP), share, p_own, p_gap, agree_prev, agree_frac, prev_agree,
            float(bool(history)), math.log1p(len(text)), 1.0]


class ContextualArtifactError(ValueError):
    """A contextual gate artifact this tierwise cannot or must not use."""


def load_artifact(path: str | Path, chain: Sequence[str] | None = None) -> dict[str, Any]:
    """Read and validate an artifact; with ``chain``, refuse one trained for another chain."""
    path = Path(path)
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ContextualArtifactError(f"{path}: not a readable contextual gate artifact ({exc})") from exc
    if not isinstance(data, dict) or data.get("kind") != ARTIFACT_KIND:
        raise ContextualArtifactError(f"{path}: kind {data.get('kind') if isinstance(data, dict) else None!r} is not "
                                      f"{ARTIFACT_KIND!r}")
    if data.get("version") != ARTIFACT_VERSION:
        raise ContextualArtifactError(
            f"{path}: contextual gate artifact version {data.get('version')!r}, but this tierwise reads version "
            f"{ARTIFACT_VERSION}; retrain it (tierwise calibrate --kind contextual)")
    rungs = data.get("rungs")
    if not isinstance(rungs, list) or len(rungs) != len(data.get("chain", [])) - 1:
        raise ContextualArtifactError(f"{path}: needs one weight set per gated rung of chain {data.get('chain')}")
    for i, r in enumerate(rungs):
        unknown = [f for f in r.get("features", []) if f not in FEATURES]
        bad_in = [x for x in r.get("requires", []) if x not in INPUTS]
        if unknown or bad_in or len(r.get("weights", [])) != len(r.get("features", [])):
            raise ContextualArtifactError(f"{path}: rung {i}: unknown features {unknown} / inputs {bad_in}, or "
                                          "weights and features differ in length")
    if chain is not None and list(chain) != list(data["chain"]):
        raise ContextualArtifactError(
            f"{path}: gate trained for chain {data['chain']}, but this cascade is {list(chain)}; retrain it for "
            "this chain")
    return data


def score(rung_spec: Mapping[str, Any], x: Sequence[float]) -> float:
    """σ(w · x[selected features]) for one rung's weights."""
    z = 0.0
    for name, w in zip(rung_spec["features"], rung_spec["weights"], strict=True):
        z += float(w) * x[FEATURES.index(name)]
    z = min(max(z, -50.0), 50.0)
    return 1.0 / (1.0 + math.exp(-z))


class ContextualGate:
    """Cascade gate over :func:`features`; the artifact is loaded once, the chain checked on every judgement."""

    def __init__(self, cfg: GateConfig) -> None:
        if not cfg.artifact:
            raise ContextualArtifactError("a contextual gate needs `artifact:` (a trained tierwise-cascade-gate)")
        self.threshold = cfg.threshold
        self.art = load_artifact(cfg.artifact)
        self.path = cfg.artifact
        # A rung trained with the ``samples`` input is configured with ``samples: k`` (and ``extract``) like a vote
        # gate; other rungs ask for one answer.
        self.samples = cfg.samples if "samples" in cfg.model_fields_set else 1
        self.extract = cfg.extract

    def prepare(self, body: JSON) -> None:
        body["logprobs"] = True
        if self.samples > 1:
            body["n"] = self.samples

    async def confidence(self, ctx: GateContext) -> float:
        if list(ctx.chain) != list(self.art["chain"]):
            raise GateError(f"{self.path}: gate trained for chain {self.art['chain']}, cascade is {list(ctx.chain)}")
        spec = self.art["rungs"][ctx.rung]
        need = set(spec.get("requires", []))
        conf = lp_confidence(ctx.completion.logprobs)
        if "logprobs" in need and conf is None:
            raise GateError(f"contextual gate needs logprobs; model '{ctx.model}' returned none")
        if "prior" in need and ctx.prior is None:
            raise GateError("contextual gate needs the cascade router's prior (cascade.router), and there is none")
        share = None
        if "samples" in need:
            choices = ctx.completion.body.get("choices") or []
            texts = [((c.get("message") or {}).get("content") or "") for c in choices]
            if len(texts) < 2:
                raise GateError(f"contextual gate needs several samples (gate `samples:`); '{ctx.model}' returned "
                               f"{len(texts)}")
            answers = [extract_answer(t, self.extract) for t in texts]
            share, majority = agreement(answers)
            keep_majority(ctx.completion, answers, majority)
        x = features(ctx.rung, ctx.chain, ctx.completion.text, conf, share, ctx.prior, ctx.history)
        return score(spec, x)
