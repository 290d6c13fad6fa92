"""Load ``tierwise.yaml``: interpolate secrets from the environment, validate, cross-check, report every problem.

``check-config`` must list *all* problems in one run, each with its path in the file (and line number), because an
operator fixing one error per restart is an operator who stops using the tool.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tierwise.apis.embeddings_config import embeddings_problems
from tierwise.config.schema import ModelConfig, ProviderConfig, TierConfig, TierwiseConfig
from tierwise.rollout.candidate import candidate_problems

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(slots=True)
class ConfigProblem:
    path: str  # dotted path into the file, e.g. "tiers.chat.models[1]"
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path} (line {self.line})" if self.line else self.path
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """Raised with every problem found, so the caller can print them all."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the configuration:\n{lines}")


@dataclass(slots=True)
class _Doc:
    data: Any
    lines: dict[str, int] = field(default_factory=dict)


def _path_str(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _line_map(node: yaml.Node, prefix: tuple[Any, ...], out: dict[str, int]) -> None:
    """Record the 1-based line of every mapping key / sequence item, keyed by its path string."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, key_node.value)
            out[_path_str(path)] = key_node.start_mark.line + 1
            _line_map(value_node, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = (*prefix, i)
            out[_path_str(path)] = item.start_mark.line + 1
            _line_map(item, path, out)


def _interpolate(value: Any, loc: tuple[Any, ...], env: dict[str, str], problems: list[ConfigProblem]) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string; an unset variable without default is a problem."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(ConfigProblem(_path_str(loc), f"environment variable {name} is not set"))
            return ""

        return _ENV_RE.sub(sub, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, (*loc, k), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*loc, i), env, problems) for i, v in enumerate(value)]
    return value


def _parse(text: str, source: str) -> _Doc:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(source, [ConfigProblem("<file>", f"not valid YAML: {exc}", line)]) from None
    lines: dict[str, int] = {}
    if node is not None:
        _line_map(node, (), lines)
    return _Doc(data if data is not None else {}, lines)


@dataclass(slots=True)
class _Refs:
    """What the cross-reference checks read, from a valid config or from raw data that failed validation.

    Each section maps an entry's name to ``(validated entry or None, raw dict)``: names and references come from the
    raw dicts (so they can be checked even when some entry, or another section, is invalid), deeper checks (prices,
    router artifacts) only run on entries that validate. A section that is not a mapping at all is None, and
    references into it are not checked (its schema error is already reported).
    """

    providers: dict[str, tuple[ProviderConfig | None, dict[str, Any]]] | None
    models: dict[str, tuple[ModelConfig | None, dict[str, Any]]] | None
    tiers: dict[str, tuple[TierConfig | None, dict[str, Any]]] | None
    default_tier: Any
    fallback_model: Any
    classifier_fallback: Any
    budget_scopes: list[Any]


def _section(data: dict[str, Any], key: str, validated: dict[str, Any] | None, cls: Any) -> dict[str, Any] | None:
    raw = data.get(key)
    if not isinstance(raw, dict):
        return None
    out: dict[str, Any] = {}
    for name, entry in raw.items():
        obj = None
        if validated is not None:
            obj = validated.get(name)
        else:
            try:
                obj = cls.model_validate(entry)
            except ValidationError:
                obj = None  # its schema errors are reported by the full validation
        out[str(name)] = (obj, entry if isinstance(entry, dict) else {})
    return out


def _refs(data: dict[str, Any], cfg: TierwiseConfig | None) -> _Refs:
    classifier = data.get("classifier")
    return _Refs(
        providers=_section(data, "providers", cfg.providers if cfg else None, ProviderConfig),
        models=_section(data, "models", cfg.models if cfg else None, ModelConfig),
        tiers=_section(data, "tiers", cfg.tiers if cfg else None, TierConfig),
        default_tier=data.get("default_tier"),
        fallback_model=data.get("fallback_model"),
        classifier_fallback=classifier.get("fallback_tier") if isinstance(classifier, dict) else None,
        budget_scopes=_budget_scopes(data),
    )


def _budget_scopes(data: dict[str, Any]) -> list[Any]:
    budgets = data.get("budgets")
    caps = budgets.get("caps") if isinstance(budgets, dict) else None
    return list(caps) if isinstance(caps, dict) else []


def _cross_check(refs: _Refs) -> list[ConfigProblem]:
    """References between sections: every name used must be defined, every model must have a price."""
    from tierwise.cost import resolve_price  # local import: the cost module pulls in the price catalogue

    problems: list[ConfigProblem] = []

    def unknown_tier(name: Any) -> bool:
        return isinstance(name, str) and refs.tiers is not None and name not in refs.tiers

    def unknown_model(name: Any) -> bool:
        return isinstance(name, str) and refs.models is not None and name not in refs.models

    if unknown_tier(refs.default_tier):
        problems.append(ConfigProblem("default_tier", f"unknown tier '{refs.default_tier}'"))
    if unknown_model(refs.fallback_model):
        problems.append(ConfigProblem("fallback_model", f"unknown model '{refs.fallback_model}'"))
    if unknown_tier(refs.classifier_fallback):
        problems.append(ConfigProblem("classifier.fallback_tier", f"unknown tier '{refs.classifier_fallback}'"))
    for name, (model, raw) in (refs.models or {}).items():
        if refs.tiers is not None and name in refs.tiers:
            problems.append(ConfigProblem(f"models.{name}", f"'{name}' is both a model and a tier name"))
        if name == "auto":
            problems.append(ConfigProblem(f"models.{name}", "'auto' is reserved for automatic routing"))
        pname = raw.get("provider")
        if not isinstance(pname, str) or refs.providers is None:
            continue
        if pname not in refs.providers:
            problems.append(ConfigProblem(f"models.{name}.provider", f"unknown provider '{pname}'"))
            continue
        provider = refs.providers[pname][0]
        if model is None or provider is None:
            continue  # an invalid entry: its schema errors are reported, prices cannot be resolved
        if provider.format == "llamacpp" and not model.gguf:
            problems.append(ConfigProblem(f"models.{name}.gguf", "a llamacpp model needs gguf (path or packaged name)"))
        if resolve_price(name, model, provider) is None:
            problems.append(
                ConfigProblem(
                    f"models.{name}",
                    f"no price known for model '{model.upstream or name}': genai-prices does not list it; "
                    "add a price: block (USD per 1M tokens) or a local: TCO block",
                )
            )
    for scope in refs.budget_scopes:
        if isinstance(scope, str) and scope.startswith("model:") and scope != "model:*" and unknown_model(scope[6:]):
            problems.append(ConfigProblem(f"budgets.caps.{scope}", f"unknown model '{scope[6:]}'"))
    if refs.tiers is not None and "auto" in refs.tiers:
        problems.append(ConfigProblem("tiers.auto", "'auto' is reserved for automatic routing"))
    for tname, (tier, raw) in (refs.tiers or {}).items():
        problems.extend(_tier_references(tname, raw, unknown_model))
        if tier is not None:
            problems.extend(_tier_artifacts(tname, tier))
    return problems


def _tier_references(tname: str, raw: dict[str, Any], unknown_model: Any) -> list[ConfigProblem]:
    """Model names a tier entry uses (read from its raw dict, so an invalid tier is still checked)."""
    problems: list[ConfigProblem] = []
    models = raw.get("models")
    for i, m in enumerate(models if isinstance(models, list) else []):
        if unknown_model(m):
            problems.append(ConfigProblem(f"tiers.{tname}.models[{i}]", f"unknown model '{m}'"))
    if unknown_model(raw.get("fallback")):
        problems.append(ConfigProblem(f"tiers.{tname}.fallback", f"unknown model '{raw['fallback']}'"))
    cascade = raw.get("cascade")
    rungs = cascade.get("rungs") if isinstance(cascade, dict) else None
    for i, rung in enumerate(rungs if isinstance(rungs, list) else []):
        if not isinstance(rung, dict):
            continue
        path = f"tiers.{tname}.cascade.rungs[{i}]"
        if unknown_model(rung.get("model")):
            problems.append(ConfigProblem(f"{path}.model", f"unknown model '{rung['model']}'"))
        gate = rung.get("gate")
        if not isinstance(gate, dict):
            continue
        if gate.get("verifier_model") and unknown_model(gate["verifier_model"]):
            problems.append(ConfigProblem(f"{path}.gate.verifier_model", f"unknown model '{gate['verifier_model']}'"))
        if gate.get("kind") in ("learned", "contextual") and not gate.get("artifact"):
            problems.append(ConfigProblem(f"{path}.gate.artifact", "a learned gate needs its artifact path"))
    return problems


def _tier_artifacts(tname: str, tier: TierConfig) -> list[ConfigProblem]:
    """Router artifacts a valid tier names that cannot serve it."""
    routers = [(f"tiers.{tname}.learned.artifact", tier.learned.artifact, tier.models)] if tier.learned else []
    rung_models = [r.model for r in tier.cascade.rungs] if tier.cascade is not None else []
    if tier.cascade is not None and tier.cascade.start is not None:
        routers.append((f"tiers.{tname}.cascade.start.artifact", tier.cascade.start.artifact, rung_models))
    if tier.cascade is not None and tier.cascade.router is not None:
        routers.append((f"tiers.{tname}.cascade.router", tier.cascade.router, rung_models))
    problems = []
    for path, artifact, pool in routers:
        problem = _router_problem(artifact, pool)
        if problem:
            problems.append(ConfigProblem(path, problem))
    return problems


def _router_problem(artifact: str, pool: list[str] | None) -> str | None:
    """Why a router artifact cannot serve this tier (missing, other version, other models), or None."""
    from tierwise.routing.learned.artifact import RouterArtifactError, load_router

    try:
        router = load_router(artifact, check_embedder=False)
    except (RouterArtifactError, OSError, ValueError) as exc:
        return str(exc)
    if pool is not None and router.models != pool:
        return (f"router {artifact} was trained for models {router.models}; the tier's models are {pool} "
                "(list them in the same order, or retrain)")
    return None


def load_config_text(text: str, source: str = "<config>", env: dict[str, str] | None = None) -> TierwiseConfig:
    """Parse, interpolate and validate a configuration; raise :class:`ConfigError` listing every problem."""
    doc = _parse(text, source)
    problems: list[ConfigProblem] = []
    if not isinstance(doc.data, dict):
        raise ConfigError(source, [ConfigProblem("<root>", "the configuration must be a mapping")])
    data = _interpolate(doc.data, (), dict(os.environ) if env is None else env, problems)
    cfg: TierwiseConfig | None = None
    try:
        cfg = TierwiseConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            path = _path_str(tuple(err["loc"]))
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown option (misspelt?)"
            problems.append(ConfigProblem(path, msg))
    # Cross-references are checked even when the schema is not satisfied (on the raw data then), so one run lists
    # both kinds of problem instead of hiding the second behind the first.
    problems.extend(_cross_check(_refs(data, cfg)))
    problems.extend(ConfigProblem(path, msg) for path, msg in candidate_problems(data))  # shadow:/canary: tiers
    problems.extend(ConfigProblem(path, msg) for path, msg in embeddings_problems(data))
    _add_lines(problems, doc.lines)
    if problems:
        raise ConfigError(source, problems)
    assert cfg is not None
    return cfg


def _add_lines(problems: list[ConfigProblem], lines: dict[str, int]) -> None:
    for p in problems:
        if p.line is None:
            p.line = _nearest_line(lines, p.path)


def config_error(source: str | os.PathLike[str], problems: list[ConfigProblem]) -> ConfigError:
    """A :class:`ConfigError` for problems found after loading (the start-up checks), with the line of each path
    read from the file ``source`` when it can be read."""
    try:
        doc = _parse(Path(source).read_text(encoding="utf-8"), str(source))
    except (OSError, ConfigError):
        pass
    else:
        _add_lines(problems, doc.lines)
    return ConfigError(str(source), problems)


def _nearest_line(lines: dict[str, int], path: str) -> int | None:
    """Line of the path, or of its closest existing parent (a missing key has no line of its own)."""
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        if cut <= 0:
            return lines.get(path)
        path = path[:cut]
    return None


def load_config(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> TierwiseConfig:
    """Read and validate a config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), [ConfigProblem("<file>", f"cannot read: {exc.strerror}")]) from None
    return load_config_text(text, str(p), env)
