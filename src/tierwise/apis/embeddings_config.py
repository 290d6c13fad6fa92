"""The ``embeddings:`` section of ``tierwise.yaml``: which models serve ``POST /v1/embeddings``.

An embeddings model is an ordinary entry of ``models:`` (provider, upstream name, price: its ``input`` price is
what each input token costs; ``output`` is never charged), listed here instead of in a tier::

    models:
      embed-small: {provider: openai, upstream: text-embedding-3-small, price: {input: 0.02, output: 0}}
    embeddings:
      models: [embed-small]
      default: embed-small        # what "auto" (or no model) means; default: the first listed

There are no tiers or fallbacks for embeddings: vectors of two models live in different spaces, so answering
with another model than the one asked for would corrupt the caller's index. Retries and cooldowns still apply.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class EmbeddingsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(min_length=1, description="models (from models:) that serve /v1/embeddings; their "
                              "provider must have format openai")
    default: str | None = Field(default=None, description="model for 'auto' or no model; default: the first listed")
    max_inputs: PositiveInt = Field(default=2048, le=100_000, description="most inputs one request may embed "
                                    "(OpenAI's own limit is 2048)")

    @property
    def default_model(self) -> str:
        return self.default or self.models[0]


def _mapping(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def embeddings_problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, message) for references of the raw ``embeddings:`` section that point nowhere or to the wrong
    kind of model (read from the raw data, so it reports alongside the schema's own errors)."""
    section = data.get("embeddings")
    if not isinstance(section, dict) or not isinstance(section.get("models"), list):
        return []
    models = _mapping(data, "models")
    providers = _mapping(data, "providers")
    tiers = _mapping(data, "tiers")
    in_tiers = {m for t in tiers.values() if isinstance(t, dict) for m in (t.get("models") or [])
                if isinstance(m, str)}
    out: list[tuple[str, str]] = []
    for i, name in enumerate(section["models"]):
        path = f"embeddings.models[{i}]"
        if not isinstance(name, str):
            continue
        entry = models.get(name)
        if not isinstance(entry, dict):
            out.append((path, f"unknown model '{name}'"))
            continue
        provider = providers.get(str(entry.get("provider")))
        if isinstance(provider, dict) and provider.get("format") != "openai":
            out.append((path, f"model '{name}' is on provider '{entry.get('provider')}' of format "
                              f"{provider.get('format')!r}; embeddings are served from format 'openai' providers"))
        if name in in_tiers:
            out.append((path, f"model '{name}' is also in a tier: an embeddings model cannot answer chat requests"))
    default = section.get("default")
    if isinstance(default, str) and default not in section["models"]:
        out.append(("embeddings.default", f"'{default}' is not one of embeddings.models"))
    return out
