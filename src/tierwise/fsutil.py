"""Writing files so that no reader, and no concurrent writer, ever sees half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(target: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a temp file beside ``target`` and rename it over ``target`` (atomic on POSIX)."""
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
