"""Config loading: interpolation, every problem at once with its path and line, price resolution refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tierwise.config import ConfigError, load_config, load_config_text

ROOT = Path(__file__).resolve().parents[1]

GOOD = """
providers:
  up: {format: openai, base_url: "${UP_URL:-http://127.0.0.1:9/v1}", api_key_env: UP_KEY}
models:
  small: {provider: up, price: {input: 0.1, output: 0.3}}
  big: {provider: up, price: {input: 3, output: 15, cache_read: 0.3}}
tiers:
  label: {description: "one label", models: [small]}
  chat: {models: [small, big], policy: cheapest}
default_tier: chat
fallback_model: small
"""


def test_good_config_loads_with_env_defaults() -> None:
    cfg = load_config_text(GOOD, env={})
    assert cfg.providers["up"].base_url == "http://127.0.0.1:9/v1"
    assert cfg.tiers["chat"].policy == "cheapest"
    assert cfg.server.max_body_bytes == 4 * 1024 * 1024


def test_env_interpolation_uses_environment() -> None:
    cfg = load_config_text(GOOD, env={"UP_URL": "http://127.0.0.1:1234/v1"})
    assert cfg.providers["up"].base_url == "http://127.0.0.1:1234/v1"


def test_every_problem_reported_at_once_with_paths_and_lines() -> None:
    bad = """
providers:
  up: {format: openai, base_url: "${MISSING_URL}"}
  an: {format: anthropic}
models:
  small: {provider: nope, price: {input: 0.1, output: 0.3}}
  big: {provider: up, price: {input: -1, output: 15}}
  mystery: {provider: up}
tiers:
  chat: {models: [small, ghost], policy: fastest, typo_key: 1}
default_tier: nowhere
fallback_model: ghost2
"""
    with pytest.raises(ConfigError) as ei:
        load_config_text(bad, env={})
    problems = {p.path: p for p in ei.value.problems}
    assert "providers.up.base_url" in problems and "MISSING_URL" in problems["providers.up.base_url"].message
    assert "providers.an" in problems and "base_url" in problems["providers.an"].message
    assert "models.big.price.input" in problems
    assert "tiers.chat.policy" in problems
    assert problems["tiers.chat.typo_key"].message == "unknown option (misspelt?)"
    assert problems["tiers.chat.policy"].line == 10
    assert problems["models.big.price.input"].line == 7


def test_cross_reference_problems_all_listed() -> None:
    bad = """
providers:
  up: {format: openai, base_url: "http://127.0.0.1:9/v1"}
models:
  small: {provider: nope, price: {input: 0.1, output: 0.3}}
  mystery-model-xyz: {provider: up}
tiers:
  chat: {models: [small, ghost]}
classifier: {kind: semantic, fallback_tier: nowhere-too}
default_tier: nowhere
fallback_model: ghost2
"""
    with pytest.raises(ConfigError) as ei:
        load_config_text(bad, env={})
    text = str(ei.value)
    assert "classifier.fallback_tier" in text and "unknown tier 'nowhere-too'" in text
    for needle in (
        "models.small.provider", "unknown provider 'nope'",
        "tiers.chat.models[1]", "unknown model 'ghost'",
        "default_tier", "unknown tier 'nowhere'",
        "fallback_model", "unknown model 'ghost2'",
        "models.mystery-model-xyz", "no price known for model 'mystery-model-xyz'",
    ):
        assert needle in text, needle


def test_catalogue_price_used_when_config_has_none() -> None:
    from tierwise.pricing import PriceBook

    cfg = load_config_text(GOOD.replace("small: {provider: up, price: {input: 0.1, output: 0.3}}",
                                        "small: {provider: up, upstream: gpt-4o-mini}"), env={})
    book = PriceBook(cfg)
    assert book.prices["small"].source == "genai-prices"
    assert book.prices["small"].input > 0


def test_invalid_yaml_names_line() -> None:
    with pytest.raises(ConfigError) as ei:
        load_config_text("providers: [\n  a: b\n", env={})
    assert ei.value.problems[0].line is not None
    assert "not valid YAML" in ei.value.problems[0].message


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/tierwise.yaml")


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("fallback_model: small", "fallback_model: ghost"))
    env = {**os.environ, "UP_KEY": "sk-test"}  # GOOD names UP_KEY as its key: check-config checks it is set
    ok = subprocess.run([sys.executable, "-m", "tierwise.cli", "check-config", str(good)],
                        capture_output=True, text=True, env=env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout and "small" in ok.stdout
    fail = subprocess.run([sys.executable, "-m", "tierwise.cli", "check-config", str(bad)],
                          capture_output=True, text=True)
    assert fail.returncode == 1
    assert "fallback_model" in fail.stderr and "ghost" in fail.stderr
    assert "Traceback" not in fail.stderr


def test_shipped_example_configs_are_valid() -> None:
    for path in (ROOT / "examples").glob("*.yaml"):
        load_config(path, env={"OPENAI_API_KEY": "x", "ANTHROPIC_API_KEY": "y"})


def test_schema_and_cross_reference_problems_reported_together() -> None:
    """A schema error no longer hides the cross-reference errors: both passes are reported in one run."""
    bad = """
providers:
  up: {format: openai, base_url: "http://127.0.0.1:9/v1", timeout_s: -1}
models:
  small: {provider: up, price: {input: 0.1, output: 0.3}}
  odd: {provider: nowhere, price: {input: oops, output: 0.3}}
  nameless-xyz: {provider: up}
tiers:
  chat: {models: [small, ghost], policy: fastest}
  fine: {models: [small], fallback: phantom}
  steps:
    policy: cascade
    cascade: {rungs: [{model: small, gate: {kind: learned}}, {model: vanished}]}
classifier: {kind: semantic, fallback_tier: nowhere-tier}
default_tier: nowhere
fallback_model: ghost2
"""
    with pytest.raises(ConfigError) as ei:
        load_config_text(bad, env={})
    problems = {p.path: p for p in ei.value.problems}
    # schema pass
    assert "providers.up.timeout_s" in problems and problems["providers.up.timeout_s"].line == 3
    assert "models.odd.price.input" in problems
    assert "tiers.chat.policy" in problems
    # cross-reference pass, on the raw data, with lines
    assert problems["models.odd.provider"].message == "unknown provider 'nowhere'"
    assert problems["models.odd.provider"].line == 6
    assert problems["tiers.chat.models[1]"].message == "unknown model 'ghost'"
    assert problems["tiers.chat.models[1]"].line == 9
    assert problems["tiers.fine.fallback"].message == "unknown model 'phantom'"
    assert problems["tiers.steps.cascade.rungs[1].model"].message == "unknown model 'vanished'"
    assert "tiers.steps.cascade.rungs[0].gate.artifact" in problems
    assert problems["default_tier"].message == "unknown tier 'nowhere'" and problems["default_tier"].line == 15
    assert problems["fallback_model"].message == "unknown model 'ghost2'"
    assert problems["classifier.fallback_tier"].message == "unknown tier 'nowhere-tier'"
    # an entry that validates on its own still gets its deeper checks (its provider entry is invalid: no price
    # lookup, so no spurious "no price" for it); an invalid model is not reported as an unknown name
    assert "models.nameless-xyz" not in problems
    assert not any("unknown model 'odd'" in p.message for p in ei.value.problems)


def test_cross_reference_on_raw_data_skips_unusable_sections() -> None:
    """A section that is not a mapping is one schema error, not one 'unknown' per reference into it."""
    bad = """
providers: [up]
models:
  small: {provider: up, price: {input: 0.1, output: 0.3}}
tiers:
  chat: {models: [small, ghost]}
default_tier: chat
fallback_model: small
"""
    with pytest.raises(ConfigError) as ei:
        load_config_text(bad, env={})
    paths = [p.path for p in ei.value.problems]
    assert "providers" in paths and "tiers.chat.models[1]" in paths
    assert "models.small.provider" not in paths


def test_check_config_cli_reports_schema_and_reference_problems_at_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("policy: cheapest", "policy: cheapest, typo: 1").replace(
        "fallback_model: small", "fallback_model: ghost"))
    r = subprocess.run([sys.executable, "-m", "tierwise.cli", "check-config", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "tiers.chat.typo (line 9): unknown option" in r.stderr
    assert "fallback_model (line 11): unknown model 'ghost'" in r.stderr
    assert "Traceback" not in r.stderr
