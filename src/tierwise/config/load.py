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

from tierwise.config.schema import TierwiseConfig

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


def _cross_check(cfg: TierwiseConfig) -> list[ConfigProblem]:
    """References between sections: every name used must be defined, every model must have a price."""
    from tierwise.cost import resolve_price  # local import: the cost module pulls in the price catalogue

    problems: list[ConfigProblem] = []
    if cfg.default_tier not in cfg.tiers:
        problems.append(ConfigProblem("default_tier", f"unknown tier '{cfg.default_tier}'"))
    if cfg.fallback_model not in cfg.models:
        problems.append(ConfigProblem("fallback_model", f"unknown model '{cfg.fallback_model}'"))
    if cfg.classifier.fallback_tier is not None and cfg.classifier.fallback_tier not in cfg.tiers:
        problems.append(ConfigProblem("classifier.fallback_tier", f"unknown tier '{cfg.classifier.fallback_tier}'"))
    for name, model in cfg.models.items():
        if name in cfg.tiers:
            problems.append(ConfigProblem(f"models.{name}", f"'{name}' is both a model and a tier name"))
        if name == "auto":
            problems.append(ConfigProblem(f"models.{name}", "'auto' is reserved for automatic routing"))
        provider = cfg.providers.get(model.provider)
        if provider is None:
            problems.append(ConfigProblem(f"models.{name}.provider", f"unknown provider '{model.provider}'"))
            continue
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
    if "auto" in cfg.tiers:
        problems.append(ConfigProblem("tiers.auto", "'auto' is reserved for automatic routing"))
    for tname, tier in cfg.tiers.items():
        for i, m in enumerate(tier.models):
            if m not in cfg.models:
                problems.append(ConfigProblem(f"tiers.{tname}.models[{i}]", f"unknown model '{m}'"))
        if tier.fallback is not None and tier.fallback not in cfg.models:
            problems.append(ConfigProblem(f"tiers.{tname}.fallback", f"unknown model '{tier.fallback}'"))
        routers = [(f"tiers.{tname}.learned.artifact", tier.learned.artifact, tier.models)] if tier.learned else []
        rung_models = [r.model for r in tier.cascade.rungs] if tier.cascade is not None else []
        if tier.cascade is not None and tier.cascade.start is not None:
            routers.append((f"tiers.{tname}.cascade.start.artifact", tier.cascade.start.artifact, rung_models))
        if tier.cascade is not None and tier.cascade.router is not None:
            routers.append((f"tiers.{tname}.cascade.router", tier.cascade.router, rung_models))
        for path, artifact, pool in routers:
            problem = _router_problem(artifact, pool)
            if problem:
                problems.append(ConfigProblem(path, problem))
        if tier.cascade is not None:
            for i, rung in enumerate(tier.cascade.rungs):
                path = f"tiers.{tname}.cascade.rungs[{i}]"
                if rung.model not in cfg.models:
                    problems.append(ConfigProblem(f"{path}.model", f"unknown model '{rung.model}'"))
                gate = rung.gate
                if gate is not None and gate.verifier_model and gate.verifier_model not in cfg.models:
                    problems.append(ConfigProblem(f"{path}.gate.verifier_model", f"unknown model '{gate.verifier_model}'"))
                if gate is not None and gate.kind in ("learned", "contextual") and not gate.artifact:
                    problems.append(ConfigProblem(f"{path}.gate.artifact", "a learned gate needs its artifact path"))
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
    if cfg is not None:
        problems.extend(_cross_check(cfg))
    for p in problems:
        if p.line is None:
            p.line = _nearest_line(doc.lines, p.path)
    if problems:
        raise ConfigError(source, problems)
    assert cfg is not None
    return cfg


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
