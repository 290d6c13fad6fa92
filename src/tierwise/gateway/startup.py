"""Start-up checks: everything ``serve`` depends on, checked without starting anything.

``tierwise check-config`` runs exactly these checks, so a config it passes is one ``serve`` accepts; ``serve`` runs
them before it opens the ledger or binds the port, so a bad config is one clear line and exit 2, never a traceback
after "serving on". Builds providers, price book, classifier, learned routers and cascade gates; checks API key
variables, and that the ledger's files (database, crash journal, fallback file) can be created.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.request import pathname2url

from tierwise.config.load import ConfigProblem
from tierwise.config.schema import LedgerConfig, TierwiseConfig

if TYPE_CHECKING:
    from tierwise.providers.base import Provider
    from tierwise.routing.engine import TierClassifier


class StartupError(Exception):
    """``serve`` cannot start; the message says what, where and what to do (the CLI prints it and exits 2)."""


# -- start-up checks (shared with check-config) -------------------------------------------------------------------


@dataclass(slots=True)
class Startup:
    """What :func:`check_startup` found and built; ``serve`` reuses the built pieces instead of building them twice."""

    problems: list[ConfigProblem] = field(default_factory=list)
    providers: dict[str, Provider] | None = None  # every provider, when all of them could be built
    classifier: TierClassifier | None = None


def check_startup(cfg: TierwiseConfig, env: dict[str, str] | None = None) -> Startup:
    """Every check ``serve`` depends on at start-up, without starting anything: no port, no ledger file written,
    no model weights loaded. Returns the problems (config paths and messages) and the pieces it built."""
    env = dict(os.environ) if env is None else env
    out = Startup()
    out.providers = _check_providers(cfg, env, out.problems)
    _check_api_keys(cfg, env, out.problems)
    _check_governance(cfg, env, out.problems)
    try:
        from tierwise.pricing import PriceBook

        PriceBook(cfg)
    except Exception as exc:
        out.problems.append(ConfigProblem("models", f"cannot build the price book: {_why(exc)}"))
    if cfg.classifier.kind == "semantic":
        try:
            from tierwise.service import build_semantic_classifier

            out.classifier = build_semantic_classifier(cfg)
        except Exception as exc:
            out.problems.append(ConfigProblem(
                "classifier.embedder", f"cannot build the semantic classifier with '{cfg.classifier.embedder}': "
                f"{_why(exc)} (install the embedder's extra, or use classifier.kind: none)"))
    _check_routers_and_gates(cfg, out.problems)
    from tierwise.telemetry.endpoint import telemetry_problems

    out.problems.extend(ConfigProblem(*p) for p in telemetry_problems(cfg, env))
    from tierwise.rollout.capture import rollout_problems

    out.problems.extend(ConfigProblem(*p) for p in rollout_problems(cfg))
    problem = ledger_problem(cfg.ledger)
    if problem is not None:
        out.problems.append(ConfigProblem("ledger.path", problem))
    if cfg.state.backend == "redis" and (problem := state_problem(cfg.state.url or "")) is not None:
        out.problems.append(ConfigProblem("state.url", problem))
    return out


def state_problem(url: str) -> str | None:
    """Why the Redis state backend cannot be reached (connect + PING), or None; never the URL's password."""
    try:
        import redis  # noqa: F401  (the client is an extra)

        from tierwise.state.redis_backend import connection_problem
    except ImportError:
        return "state.backend 'redis' needs the redis extra: pip install 'tierwise[redis]'"
    return connection_problem(url)


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"cannot use {exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def _check_providers(cfg: TierwiseConfig, env: dict[str, str], problems: list[ConfigProblem]) -> dict[str, Provider] | None:
    from tierwise.providers.registry import build_provider

    built: dict[str, Provider] = {}
    for name, pcfg in cfg.providers.items():
        if pcfg.format in ("openai", "anthropic") and not pcfg.api_key and pcfg.api_key_env \
                and not env.get(pcfg.api_key_env):
            problems.append(ConfigProblem(
                f"providers.{name}.api_key_env",
                f"environment variable {pcfg.api_key_env} is not set (or empty): export it before starting "
                "tierwise, or give the key another way"))
            continue
        served = {cfg.upstream_name(k): (m.gguf or cfg.upstream_name(k)) for k, m in cfg.models.items()
                  if m.provider == name}
        try:
            built[name] = build_provider(name, pcfg, served)
        except Exception as exc:
            problems.append(ConfigProblem(f"providers.{name}", _why(exc)))
            continue
        if pcfg.format == "llamacpp":
            for key, m in cfg.models.items():
                if m.provider == name and m.gguf:
                    problem = _gguf_problem(m.gguf)
                    if problem:
                        problems.append(ConfigProblem(f"models.{key}.gguf", problem))
    return built if len(built) == len(cfg.providers) else None


def _gguf_problem(spec: str) -> str | None:
    """Whether the weights a llamacpp model names are there, without assembling or loading them (serve does)."""
    from tierwise.local.models import REGISTRY, LocalModelError, _part_paths, resolve_gguf

    try:
        if spec in REGISTRY:
            _part_paths(REGISTRY[spec])  # installed? (assembly and hashing happen when serve loads the model)
        else:
            resolve_gguf(spec)  # a path: exists and is a GGUF file
    except (LocalModelError, OSError) as exc:
        return _why(exc)
    return None


def _check_api_keys(cfg: TierwiseConfig, env: dict[str, str], problems: list[ConfigProblem]) -> None:
    name = cfg.server.api_keys_env
    if not name:
        return
    from tierwise.gateway.app import load_static_keys

    try:
        load_static_keys(name, env)
    except ValueError as exc:
        problems.append(ConfigProblem("server.api_keys_env", f"{exc} (set it to 'id:key,id:key')"))


def _check_governance(cfg: TierwiseConfig, env: dict[str, str], problems: list[ConfigProblem]) -> None:
    """Virtual keys and the admin API: the admin key is set, the admin listener is not the public one, and the
    governance store can be opened (checked without creating anything)."""
    admin = cfg.admin if cfg.admin is not None and cfg.admin.enabled else None
    if cfg.governance.keys == "off" and admin is None:
        return
    if admin is not None:
        from tierwise.gateway.admin import admin_key_problem

        if problem := admin_key_problem(cfg, env):
            problems.append(ConfigProblem("admin.api_key_env", problem))
        if not admin.same_listener and admin.port == cfg.server.port and admin.port != 0:
            problems.append(ConfigProblem(
                "admin.port", f"the admin API cannot share the public port {admin.port}: give it its own port, or "
                "set admin.same_listener: true to mount it under /admin on the public listener"))
    from tierwise.governance.store import store_problem

    if found := store_problem(cfg):
        problems.append(ConfigProblem(*found))


def _check_routers_and_gates(cfg: TierwiseConfig, problems: list[ConfigProblem]) -> None:
    """Learned router artifacts as the service loads them (embedder included), and every cascade gate built as the
    executor builds it (a gate that cannot be built would fail each request of its tier)."""
    from tierwise.routing.gates import build_gate
    from tierwise.service import load_routers

    for tname, tier in cfg.tiers.items():
        try:
            load_routers(cfg.model_copy(update={"tiers": {tname: tier}}))  # the service's own choice of artifact
        except Exception as exc:
            problems.append(ConfigProblem(f"tiers.{tname}", f"learned router: {_why(exc)}"))
        if tier.cascade is None:
            continue
        for i, rung in enumerate(tier.cascade.rungs):
            if rung.gate is None:
                continue
            try:
                build_gate(rung.gate)
            except Exception as exc:
                problems.append(ConfigProblem(f"tiers.{tname}.cascade.rungs[{i}].gate",
                                              f"{rung.gate.kind} gate: {_why(exc)}"))


_LEDGER_FIX = "point ledger.path at a file in a writable directory (or use ledger.backend: memory for a throwaway)"


def ledger_problem(cfg: LedgerConfig) -> str | None:
    """Why the ledger at ``cfg.path`` cannot be opened for writing, or None; changes nothing on disk.

    Every directory the ledger writes to must take new files (the database and its WAL, the crash journal's
    segments, the fallback file) — checked by creating and removing a temporary file, which holds for root too
    (where permission bits do not stop writes); an existing file must open for writing and be a tierwise ledger of a
    schema this version reads.
    """
    from tierwise.ledger import journal_dir

    jdir = journal_dir(cfg)
    if jdir is not None:
        if jdir.exists() and not jdir.is_dir():
            return f"ledger journal {jdir} is not a directory; point ledger.journal_dir at a directory"
        if problem := _creatable(jdir / "segment", "the crash journal (ledger.journal_dir)"):
            return problem
    if cfg.fallback_path and (problem := _creatable(Path(cfg.fallback_path).expanduser(),
                                                    "the fallback file (ledger.fallback_path)")):
        return problem
    if cfg.backend == "postgres":
        try:
            from tierwise.ledger.postgres import connection_problem
        except ImportError:
            return "ledger.backend 'postgres' needs the postgres extra: pip install 'tierwise[postgres]'"
        return connection_problem(cfg.dsn or "")
    if cfg.backend != "sqlite":
        return None
    path = Path(cfg.path).expanduser()
    if path.is_dir():
        return f"ledger {path} is a directory, not a file; {_LEDGER_FIX}"
    if problem := _creatable(path, f"ledger {path} (its database, WAL and fallback file)"):
        return f"{problem}; {_LEDGER_FIX}"
    if not path.exists():
        return None
    try:
        with open(path, "r+b"):
            pass
    except OSError as exc:
        return f"cannot open ledger {path} for writing ({exc.strerror}); make it writable or {_LEDGER_FIX}"
    return _ledger_schema_problem(path)


def _creatable(path: Path, what: str) -> str | None:
    """Why a file at ``path`` could not be created (the missing directories on the way are created at start-up)."""
    probe = path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"cannot create {path}: {probe} is not a directory"
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".tierwise-check-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        return f"cannot create files in {probe} ({exc.strerror}), which {what} needs; make it writable"
    return None


def _ledger_schema_problem(path: Path) -> str | None:
    """Refusals of :class:`~tierwise.ledger.store.SQLiteLedgerStore`, read from the file header without opening it
    with SQLite (even a read-only connection leaves WAL files behind next to a WAL database)."""
    from tierwise.ledger.store import APPLICATION_ID, SCHEMA_VERSION

    with open(path, "rb") as f:
        head = f.read(100)
    if not head:
        return None  # an empty file becomes a new ledger
    if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
        return f"{path} is not a tierwise ledger (not an SQLite database); {_LEDGER_FIX}"
    version = int.from_bytes(head[60:64], "big", signed=True)  # PRAGMA user_version
    app_id = int.from_bytes(head[68:72], "big", signed=True)  # PRAGMA application_id
    if app_id not in (0, APPLICATION_ID):
        return f"{path} is an SQLite file of another application, not a tierwise ledger; {_LEDGER_FIX}"
    if version > SCHEMA_VERSION:
        return (f"ledger {path} has schema version {version}, but this tierwise only knows up to version "
                f"{SCHEMA_VERSION}: upgrade tierwise, or point ledger.path at a new file")
    if version == 0:  # not stamped by tierwise: refused if it already has a 'requests' table of its own
        try:
            conn = sqlite3.connect(f"file:{pathname2url(str(path.resolve()))}?mode=ro&immutable=1", uri=True)
            try:
                table = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'requests'").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            return f"{path} is not a tierwise ledger ({exc}); {_LEDGER_FIX}"
        if table is not None:
            return f"{path} has a 'requests' table that tierwise did not create; {_LEDGER_FIX}"
    return None


def build_failure(cfg: TierwiseConfig, exc: BaseException) -> str:
    """One line for a failure while building the service (the checks passed, so this is rare: a race, a disk)."""
    from tierwise.ledger import LedgerSchemaError

    if isinstance(exc, sqlite3.Error | LedgerSchemaError) or (
            isinstance(exc, OSError) and exc.filename and "ledger" in str(exc.filename)):
        return f"cannot open the ledger {cfg.ledger.path} ({_why(exc)}); {_LEDGER_FIX}"
    return f"{type(exc).__name__}: {_why(exc)}"
