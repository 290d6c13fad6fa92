"""Build the adapter for a provider entry of ``tierwise.yaml`` from its ``format``.

``llamacpp`` runs models in-process through llama-cpp-python, an optional (and heavy) dependency: its module is
imported only when a config actually uses it, so HTTP-only deployments never pay for it or need it installed.
"""

from __future__ import annotations

from tierwise.config.schema import ProviderConfig, TierwiseConfig
from tierwise.providers.base import Provider


def build_provider(name: str, cfg: ProviderConfig, models: dict[str, str] | None = None) -> Provider:
    """A ready-to-use provider (HTTP sessions are created lazily on first use, inside the running loop).

    ``models`` is only used by ``llamacpp``: upstream model name -> GGUF spec (packaged model name or path), i.e.
    which weights this in-process provider serves. :func:`build_providers` derives it from the config.
    """
    if cfg.format == "openai":
        from tierwise.providers.openai import OpenAIProvider

        return OpenAIProvider(name, cfg)
    if cfg.format == "anthropic":
        from tierwise.providers.anthropic import AnthropicProvider

        return AnthropicProvider(name, cfg)
    if cfg.format == "llamacpp":
        try:
            from tierwise.providers.llamacpp import LlamaCppProvider
        except ImportError as exc:
            raise RuntimeError(
                f"provider '{name}' has format 'llamacpp', which needs llama-cpp-python: "
                "pip install 'tierwise[local]' (or serve the model over HTTP and use format 'openai')"
            ) from exc
        return LlamaCppProvider(name, cfg, dict(models or {}))
    raise ValueError(f"provider '{name}': unknown format {cfg.format!r}")


def build_providers(config: TierwiseConfig) -> dict[str, Provider]:
    """Every provider of a validated config, keyed by provider name."""
    out: dict[str, Provider] = {}
    for name, pcfg in config.providers.items():
        served = {
            config.upstream_name(key): (m.gguf or config.upstream_name(key))
            for key, m in config.models.items()
            if m.provider == name
        }
        out[name] = build_provider(name, pcfg, served)
    return out
