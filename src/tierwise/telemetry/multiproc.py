"""``serve --workers N``: the workers' metrics summed into one ``/metrics``, whichever worker a scrape reaches.

The workers share one port (SO_REUSEPORT), so a scrape lands on any one of them and each has its own counters in
memory. prometheus-client's multiprocess mode solves exactly this: with ``PROMETHEUS_MULTIPROC_DIR`` set before a
worker imports it, every metric value lives in a small memory-mapped file per process in that directory, and
:class:`~prometheus_client.multiprocess.MultiProcessCollector` (used by whichever worker answers the scrape) sums
counters and histograms over all of them — a restarted worker's files stay, so counters never go backwards. The
cooldown gauge is ``livemax`` (the highest over live workers); files of a worker that died are removed by the next
worker that starts (:func:`forget_dead_workers`).

The supervisor (:func:`workers_metrics_dir`) empties or creates the directory before the workers start — stale
files from an earlier run would be added to this run's counters — and removes a temporary one when they stop.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tierwise.config.schema import TierwiseConfig

ENV = "PROMETHEUS_MULTIPROC_DIR"
_PID_RE = re.compile(r"_(\d+)\.db$")


def multiprocess_dir() -> str | None:
    """The shared metrics directory when this process is one of several workers, else None."""
    return os.environ.get(ENV) or None


@contextlib.contextmanager
def workers_metrics_dir(cfg: TierwiseConfig) -> Iterator[str | None]:
    """Around ``serve_workers``: set ``PROMETHEUS_MULTIPROC_DIR`` (inherited by the workers) to an empty
    directory — ``telemetry.metrics.multiproc_dir`` (its ``*.db`` files removed) or a new temporary one."""
    if not cfg.telemetry.metrics.enabled:
        yield None
        return
    configured = cfg.telemetry.metrics.multiproc_dir
    if configured:
        path = Path(configured).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        for f in path.glob("*.db"):
            f.unlink()
        made = None
    else:
        made = path = Path(tempfile.mkdtemp(prefix="tierwise-metrics-"))
    previous = os.environ.get(ENV)
    os.environ[ENV] = str(path)
    try:
        yield str(path)
    finally:
        if previous is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = previous
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_workers(path: str) -> list[int]:
    """Remove the live-gauge files of workers that are gone (their counters stay: totals never go backwards)."""
    from prometheus_client import multiprocess

    dead = set()
    for f in Path(path).glob("gauge_live*_*.db"):
        m = _PID_RE.search(f.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            dead.add(int(m.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, path)
    return sorted(dead)
