"""Registry of the offline outcome sets: stable names → loaders, with an on-disk cache in the outcome format.

Names are ``<source>/<benchmark>[/<chain>]`` (``zellinger/mmlu/llama``, ``mot/date``, ``fanconi/arc_easy/qwen``,
``routellm/mmlu``, ``routerbench/arc_c``, ``routerdc/gsm8k``); :func:`list_sets` gives them all.

Not loadable, on purpose: ``frugalgpt_summaries`` and ``automix_aggregate_results`` hold aggregate numbers only (their
per-query data are release assets / Git-LFS objects that are not in the snapshot), see :data:`AGGREGATE_ONLY`.

Cache: a parsed set is written in the outcome format under ``cache_root()/v<LOADER_VERSION>/`` with a key made of the
set name and a fingerprint (path, size, mtime) of every file in its source folder; a changed source or a bumped
``LOADER_VERSION`` (bump it whenever a loader's output changes) simply misses the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from types import ModuleType

from tierwise.lab.datasets import fanconi, mot, routellm, routerbench, routerdc, zellinger
from tierwise.lab.datasets.format import OutcomeSet
from tierwise.lab.datasets.outcome_io import (
    OutcomeFormatError,
    read_outcome_set,
    safe_stem,
    write_outcome_set,
)
from tierwise.lab.datasets.paths import cache_root, dataset_dir

LOADER_VERSION = 1
_MODULES: dict[str, ModuleType] = {
    "zellinger": zellinger,
    "mot": mot,
    "fanconi": fanconi,
    "routellm": routellm,
    "routerbench": routerbench,
    "routerdc": routerdc,
}
AGGREGATE_ONLY: dict[str, str] = {
    "frugalgpt_summaries": "per-query generations are GitHub release assets, absent from the snapshot",
    "automix_aggregate_results": "per-query data is a 694 MB Git-LFS object, absent from the snapshot",
}


def list_sets() -> list[str]:
    """Every loadable set name, grouped by source."""
    return [name for module in _MODULES.values() for name in module.set_names()]


def _module_for(name: str) -> ModuleType:
    module = _MODULES.get(name.split("/", 1)[0])
    if module is None or name not in module.set_names():
        raise KeyError(f"unknown outcome set {name!r}; known: {', '.join(list_sets())}")
    return module


def _fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        st = path.stat()
        h.update(f"{path.relative_to(folder)}\x00{st.st_size}\x00{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def cache_path(name: str, root: Path | None = None) -> Path:
    """Where ``name`` is (or would be) cached; the stem changes whenever its source files change."""
    module = _module_for(name)
    fp = _fingerprint(dataset_dir(module.FOLDER, root))
    return cache_root() / f"v{LOADER_VERSION}" / f"{safe_stem(name)}--{fp}.jsonl.gz"


def load_set(name: str, root: Path | None = None, *, use_cache: bool = True) -> OutcomeSet:
    """Load the set ``name`` from the shared data (``root`` overrides ``$TIERWISE_SHARED_DATA``).

    Raises ``KeyError`` for an unknown name and ``SharedDataMissing`` when the dataset folder is absent.
    """
    module = _module_for(name)
    if not use_cache:
        return module.load(name, root)
    path = cache_path(name, root)
    if path.exists():
        try:
            return read_outcome_set(path)
        except OutcomeFormatError:
            pass  # a damaged cache entry is rebuilt below, never trusted
    oset = module.load(name, root)
    with contextlib.suppress(OSError):  # a read-only cache must not stop evaluation
        write_outcome_set(oset, path.parent, stem=path.name.removesuffix(".jsonl.gz"))
    return oset


def clear_cache() -> int:
    """Delete every cached set of this loader version; returns the number of files removed."""
    folder = cache_root() / f"v{LOADER_VERSION}"
    removed = 0
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file():
                os.unlink(p)
                removed += 1
    return removed
