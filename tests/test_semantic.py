"""Semantic tier classifier and tier-overlap detection, on the shipped embedders (no fakes: the real models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tierwise.config.schema import TierwiseConfig
from tierwise.embed import EMBEDDERS, get_embedder
from tierwise.routing.engine import RouteRequest, RoutingEngine, TierClassifier
from tierwise.routing.signals.overlap import TierOverlap, tier_overlaps
from tierwise.routing.signals.semantic import DEFAULT_THRESHOLDS, SemanticClassifier, prompt_text

DATA = Path(__file__).parent / "data"
TIERS = yaml.safe_load((DATA / "semantic_routing_tiers.yaml").read_text())


def make_config(tiers: dict | None = None, threshold: float | None = 0.0, **classifier) -> TierwiseConfig:
    tiers = TIERS if tiers is None else tiers
    if threshold is not None:
        classifier["threshold"] = threshold
    return TierwiseConfig.model_validate({
        "providers": {"p": {"format": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"m": {"provider": "p"}},
        "tiers": {name: {**spec, "models": ["m"]} for name, spec in tiers.items()},
        "default_tier": next(iter(tiers)),
        "fallback_model": "m",
        "classifier": {"kind": "semantic", **classifier},
    })


def ask(text: str) -> dict:
    return {"model": "auto", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]}


@pytest.fixture(scope="module", params=EMBEDDERS)
def classifier(request) -> SemanticClassifier:
    return SemanticClassifier(make_config(), get_embedder(request.param))


# -- what text is routed ---------------------------------------------------------------------------------------------
def test_prompt_text_takes_last_user_message_and_text_parts() -> None:
    body = {"messages": [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "fix"}, {"type": "image_url", "image_url": {}},
                                     {"type": "text", "text": "this bug"}]},
        {"role": "assistant", "content": "partial"},
    ]}
    assert prompt_text(body, 100) == "fix\nthis bug"
    assert prompt_text(body, 5) == "fix\nt"


def test_prompt_text_edge_cases() -> None:
    assert prompt_text({"prompt": "complete me"}, 100) == "complete me"
    assert prompt_text({"prompt": ["a", "b"]}, 100) == "b"
    assert prompt_text({"messages": [{"role": "system", "content": "only system"}]}, 100) == ""
    assert prompt_text({"messages": [{"role": "user", "content": None}]}, 100) == ""
    assert prompt_text({}, 100) == ""


# -- classification --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "tier"), [
    ("Is this message spam? Reply spam or ham. 'WIN a FREE cruise, click now!!!'", "label"),
    ("Write a Python function that returns the n-th Fibonacci number.", "code"),
    ("Prove that the square root of 2 is irrational.", "analysis"),
    ("Hi! Can you recommend a good podcast for my commute?", "chat"),
])
def test_clear_prompts_go_to_their_tier(classifier: SemanticClassifier, text: str, tier: str) -> None:
    result = classifier.classify(ask(text))
    assert result is not None and result[0] == tier, (result, classifier.scores(text))
    assert -1.0 <= result[1] <= 1.0


def test_below_threshold_returns_none() -> None:
    clf = SemanticClassifier(make_config(threshold=0.95), get_embedder("minilm-onnx"))
    assert clf.classify(ask("Write a Python function that returns the n-th Fibonacci number.")) is None


def test_per_tier_threshold_overrides_default() -> None:
    text = "Write a Python function that returns the n-th Fibonacci number."
    strict = {name: {**spec, "threshold": 0.99} if name == "code" else spec for name, spec in TIERS.items()}
    clf = SemanticClassifier(make_config(strict, threshold=-1.0), get_embedder("minilm-onnx"))
    result = clf.classify(ask(text))
    scores = clf.scores(text)
    assert result is not None and result[0] != "code"
    assert result[0] == max((t for t in scores if t != "code"), key=scores.get)  # best of the tiers that pass


@pytest.mark.parametrize("name", EMBEDDERS)
def test_unset_threshold_uses_the_embedders_default(name: str) -> None:
    emb = get_embedder(name)
    implicit = SemanticClassifier(make_config(threshold=None), emb)
    assert implicit.thresholds.tolist() == pytest.approx([DEFAULT_THRESHOLDS[name]] * 4)
    explicit = SemanticClassifier(make_config(threshold=0.35), emb)
    assert explicit.thresholds.tolist() == pytest.approx([0.35] * 4)


def test_gibberish_falls_below_the_fitted_static_threshold() -> None:
    # 0.475: the threshold fitted on the dev split by bench/routing_latency.py for minilm-static
    clf = SemanticClassifier(make_config(threshold=0.475), get_embedder("minilm-static"))
    assert clf.classify(ask("zxcvbnm qwpoeiru 4f9a2c7e1b8d")) is None
    assert clf.classify(ask("hmm ok")) is None
    assert clf.classify(ask("Write a SQL query that lists all orders placed in 2024."))[0] == "code"


def test_no_text_or_no_describable_tier_gives_none() -> None:
    clf = SemanticClassifier(make_config(), get_embedder("minilm-static"))
    assert clf.classify({"model": "auto", "messages": []}) is None
    bare = SemanticClassifier(make_config({"only": {}}), get_embedder("minilm-static"))
    assert bare.tiers == []
    assert bare.classify(ask("anything")) is None


def test_aggregate_is_validated_and_top2_never_exceeds_max() -> None:
    emb = get_embedder("minilm-static")
    with pytest.raises(ValueError, match="aggregate"):
        SemanticClassifier(make_config(), emb, aggregate="mean")  # type: ignore[arg-type]
    top2 = SemanticClassifier(make_config(), emb, aggregate="top2").scores("sort a list in Go")
    best = SemanticClassifier(make_config(), emb, aggregate="max").scores("sort a list in Go")
    assert all(top2[t] <= best[t] + 1e-6 for t in top2)


@pytest.mark.parametrize(("name", "floor"), [("minilm-onnx", 0.82), ("minilm-static", 0.75)])
def test_accuracy_on_labelled_set(name: str, floor: float) -> None:
    """Regression floor a few points under the measured argmax accuracy (bench/results/routing_latency.md)."""
    rows = [json.loads(line) for line in (DATA / "semantic_routing.jsonl").read_text().splitlines() if line]
    rows = [r for r in rows if r["tier"] is not None]
    clf = SemanticClassifier(make_config(threshold=-1.0), get_embedder(name))
    hits = [clf.classify(ask(r["prompt"]))[0] == r["tier"] for r in rows]
    assert np.mean(hits) >= floor


def test_plugs_into_the_engine() -> None:
    clf: TierClassifier = SemanticClassifier(make_config(), get_embedder("minilm-static"))
    cfg = make_config()
    engine = RoutingEngine(cfg, pins=None, health=None, classifier=clf)  # type: ignore[arg-type]
    body = ask("Write a bash script that deletes files older than 7 days.")
    req = RouteRequest(requested_model="auto")
    assert engine.needs_classifier(req)
    req.classified, req.classifier_ran = clf.classify(body), True
    assert engine.choose_tier(req, body) == ("code", "classifier")


# -- overlap ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", EMBEDDERS)
def test_overlap_flags_near_duplicate_tiers_only(name: str) -> None:
    tiers = dict(TIERS)
    tiers["coding"] = {
        "description": "Write, debug or refactor program source code, including SQL and regular expressions.",
        "utterances": ["Write a Python function to check if a string is a palindrome.",
                       "Fix my JavaScript error: undefined is not a function."],
    }
    found = tier_overlaps(make_config(tiers), get_embedder(name))
    assert [(o.tier_a, o.tier_b) for o in found] == [("code", "coding")]
    (overlap,) = found
    assert isinstance(overlap, TierOverlap) and overlap.similarity >= 0.9
    assert "palindrome" in overlap.worst_pair[0] and "palindrome" in overlap.worst_pair[1]
    assert tier_overlaps(make_config(), get_embedder(name)) == []


def test_overlap_explicit_threshold() -> None:
    found = tier_overlaps(make_config(), get_embedder("minilm-onnx"), threshold=0.0)
    assert len(found) == 6  # every pair of the 4 tiers
    assert [o.similarity for o in found] == sorted((o.similarity for o in found), reverse=True)


@pytest.mark.parametrize("name", EMBEDDERS)
def test_token_budget_is_the_dev_chosen_default_or_the_configured_one(name: str) -> None:
    """The classifier reads ``DEFAULT_MAX_TOKENS`` of a prompt (64 for the transformer, chosen on the dev split),
    ``classifier.max_tokens`` when the config sets it; the shared embedder itself keeps its own budget."""
    from tierwise.routing.signals.semantic import DEFAULT_MAX_TOKENS

    base = get_embedder(name)
    default = SemanticClassifier(make_config(), base)
    assert default.embedder.max_tokens == DEFAULT_MAX_TOKENS.get(name, base.max_tokens)  # type: ignore[attr-defined]
    assert SemanticClassifier(make_config(max_tokens=24), base).embedder.max_tokens == 24  # type: ignore[attr-defined]
    assert get_embedder(name) is base and base.max_tokens in (96, 512)  # type: ignore[attr-defined]


def test_max_tokens_is_validated() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        make_config(max_tokens=0)
    with pytest.raises(ValueError, match="max_tokens"):
        make_config(max_tokens=4096)
