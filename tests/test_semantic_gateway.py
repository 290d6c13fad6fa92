"""Semantic routing of model="auto" through the real gateway, and check-config's overlap report."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for

SEMANTIC = """
  sentiment: {description: "Emit one sentiment label: positive or negative", utterances: ["Is this review positive or negative?", "Classify the sentiment of this tweet"], models: [small]}
  code: {description: "Write or fix source code", utterances: ["Write a Python function that reverses a list", "Fix this JavaScript bug"], models: [large]}
classifier: {kind: semantic, embedder: minilm-onnx, threshold: 0.35}
"""


@pytest.fixture
def sgw(upstream: FakeUpstream, tmp_path: Path) -> Iterator[GatewayServer]:
    gw = GatewayServer(config_for(upstream.base_url, tmp_path, extra=SEMANTIC)).start()
    yield gw
    gw.stop()


def test_auto_routes_by_meaning_and_unmatched_goes_to_default(sgw: GatewayServer) -> None:
    c = openai.OpenAI(base_url=sgw.base_url, api_key="x", max_retries=0)

    def route(text: str) -> tuple[str, str]:
        raw = c.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": text}])
        return raw.headers["x-tierwise-tier"], raw.headers["x-tierwise-tier-source"]

    assert route("Was this product review positive or negative: 'broke after a day'") == ("sentiment", "classifier")
    assert route("Write a Python function that reverses a string") == ("code", "classifier")
    assert route("zxqv blorp 42") == ("chat", "fallback-tier")
    # explicit tags still beat the classifier
    raw = c.chat.completions.with_raw_response.create(
        model="label", messages=[{"role": "user", "content": "Write a Python function"}])
    assert raw.headers["x-tierwise-tier"] == "label"


def test_check_config_reports_overlapping_tiers(tmp_path: Path) -> None:
    cfg = tmp_path / "t.yaml"
    cfg.write_text("""
providers: {up: {format: openai, base_url: "http://127.0.0.1:9/v1"}}
models: {m: {provider: up, price: {input: 1, output: 1}}}
tiers:
  support: {description: "Answer questions about the product", models: [m]}
  help: {description: "Answer questions about our product", models: [m]}
  code: {description: "Write or fix source code", models: [m]}
classifier: {kind: semantic}
default_tier: support
fallback_model: m
""")
    r = subprocess.run([sys.executable, "-m", "tierwise.cli", "check-config", str(cfg)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    assert "tiers 'support' and 'help' overlap" in r.stderr
    assert "'code'" not in r.stderr


def test_classifier_max_tokens_reads_only_the_head_of_the_prompt(upstream: FakeUpstream, tmp_path: Path) -> None:
    """``classifier.max_tokens`` is how much of the prompt the transformer reads: with 12 tokens only the opening
    question counts, while the same classifier reading 128 tokens is swayed by the long code-laden tail."""
    from tierwise.embed import get_embedder
    from tierwise.routing.signals.semantic import SemanticClassifier

    head = "Is this review positive or negative?"
    tail = " Write a Python function that reverses a list, then fix this JavaScript bug in the sort." * 6
    body = {"model": "auto", "messages": [{"role": "user", "content": head + tail}]}
    cfg = config_for(upstream.base_url, tmp_path, extra=SEMANTIC.replace("threshold: 0.35", "threshold: 0.35, max_tokens: 12"))
    gw = GatewayServer(cfg).start()
    try:
        c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        raw = c.chat.completions.with_raw_response.create(model="auto", messages=body["messages"])
        assert (raw.headers["x-tierwise-tier"], raw.headers["x-tierwise-tier-source"]) == ("sentiment", "classifier")
    finally:
        gw.stop()
    wide = cfg.model_copy(update={"classifier": cfg.classifier.model_copy(update={"max_tokens": 128})})
    clf = SemanticClassifier(wide, get_embedder("minilm-onnx"))
    assert clf.embedder.max_tokens == 128
    routed = clf.classify(body)
    assert routed is not None and routed[0] == "code"
