"""build_provider / build_providers: dispatch on format, key resolution, the optional llama.cpp backend."""

from __future__ import annotations

import importlib.util

import pytest

from tierwise.config.schema import ProviderConfig, TierwiseConfig
from tierwise.providers.anthropic import AnthropicProvider
from tierwise.providers.base import Provider
from tierwise.providers.openai import OpenAIProvider
from tierwise.providers.registry import build_provider, build_providers


def test_dispatch_on_format() -> None:
    openai = build_provider("o", ProviderConfig(format="openai", base_url="http://127.0.0.1:9/v1"))
    anthropic = build_provider("a", ProviderConfig(format="anthropic", base_url="http://127.0.0.1:9/v1"))
    assert isinstance(openai, OpenAIProvider) and isinstance(anthropic, AnthropicProvider)
    assert isinstance(openai, Provider) and isinstance(anthropic, Provider)
    assert (openai.name, anthropic.name) == ("o", "a")


def test_missing_key_variable_fails_at_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TW_ABSENT_KEY", raising=False)
    cfg = ProviderConfig(format="anthropic", base_url="http://127.0.0.1:9/v1", api_key_env="TW_ABSENT_KEY")
    with pytest.raises(ValueError, match="TW_ABSENT_KEY"):
        build_provider("x", cfg)


def test_build_providers_passes_served_models_to_llamacpp() -> None:
    config = TierwiseConfig.model_validate({
        "providers": {"cloud": {"format": "openai", "base_url": "http://127.0.0.1:9/v1"},
                      "local": {"format": "llamacpp"}},
        "models": {"big": {"provider": "cloud", "upstream": "gpt-big"},
                   "tiny": {"provider": "local", "gguf": "smollm2-135m"}},
        "tiers": {"chat": {"models": ["tiny", "big"]}},
        "default_tier": "chat",
        "fallback_model": "tiny",
    })
    if importlib.util.find_spec("llama_cpp") is None:
        with pytest.raises(RuntimeError, match="llama-cpp-python"):
            build_providers(config)
        return
    providers = build_providers(config)
    assert isinstance(providers["cloud"], OpenAIProvider)
    local = providers["local"]
    assert type(local).__name__ == "LlamaCppProvider" and local.name == "local"
    assert set(local._models) == {"tiny"}  # served under its upstream name, nothing loaded yet
