"""A dependency-free one-line progress bar on stderr, for every CLI step that can take more than a couple of seconds
(training, calibration, evaluation sweeps). Redraws only on a terminal; elsewhere (CI logs, pipes) it prints one
final line per step with its total time, so logs show where the time went without a line per tick."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def progress_bar(label: str) -> Callable[[int, int], None]:
    """``report(done, total)``: redraw the bar (terminal) and finish the line when ``done >= total``."""
    start = time.perf_counter()
    tty = sys.stderr.isatty()

    def report(done: int, total: int) -> None:
        if not tty and done < total:
            return
        frac = done / max(1, total)
        bar = "#" * int(30 * frac)
        sys.stderr.write(f"\r{label} [{bar:<30}] {done}/{total} {time.perf_counter() - start:5.1f}s")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return report
