"""Where the shared third-party data and the parsed-set cache live.

The shared data is never copied into the repository: it is read from ``$TIERWISE_SHARED_DATA`` or, by default,
``<repo>/../shared/data`` (the layout of this project's machines and CI). Parsed sets are cached in the outcome
format under ``$TIERWISE_CACHE_DIR`` (default ``~/.cache/tierwise/lab``) because some native formats are slow to
parse (tokenising, CSV with long responses).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_SHARED_DATA = "TIERWISE_SHARED_DATA"
ENV_CACHE_DIR = "TIERWISE_CACHE_DIR"


class SharedDataMissing(FileNotFoundError):
    """The shared data folder (or one dataset inside it) is not on this machine."""


def repo_root() -> Path:
    """The source checkout's root (``src/tierwise/lab/datasets/paths.py`` → four levels up)."""
    return Path(__file__).resolve().parents[4]


def shared_data_root() -> Path:
    """The folder holding the third-party datasets (it may not exist; callers check)."""
    env = os.environ.get(ENV_SHARED_DATA)
    if env:
        return Path(env).expanduser()
    return repo_root().parent / "shared" / "data"


def dataset_dir(folder: str, root: Path | None = None) -> Path:
    path = (root or shared_data_root()) / folder
    if not path.is_dir():
        raise SharedDataMissing(
            f"dataset folder {path} not found; set ${ENV_SHARED_DATA} to the folder that holds {folder!r}"
        )
    return path


def cache_root() -> Path:
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "tierwise" / "lab"
