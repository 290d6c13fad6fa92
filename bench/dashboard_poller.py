"""One open dashboard tab, as a process (stdlib only: starts in milliseconds and takes no CPU from the run).

    python bench/dashboard_poller.py BASE_URL SECONDS [LIVE_S] [SUMMARY_S]

Reads ``/dashboard/api/config`` once, prints ``ready``, then polls ``/dashboard/api/recent`` every ``LIVE_S`` (1 s)
and ``/dashboard/api/summary?window=1h`` every ``SUMMARY_S`` (5 s), the page's defaults, for ``SECONDS``; prints
``<answered> <failed>`` at the end. Used by bench/dashboard_overhead.py.
"""

from __future__ import annotations

import sys
import time
import urllib.request


def main() -> None:
    base, seconds = sys.argv[1], float(sys.argv[2])
    live_s = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    summary_s = float(sys.argv[4]) if len(sys.argv) > 4 else 5.0
    urllib.request.urlopen(base + "/dashboard/api/config", timeout=30).read()  # loopback only
    print("ready", flush=True)
    end = time.monotonic() + seconds
    due = {"/dashboard/api/recent?window=1h&limit=25": time.monotonic(),
           "/dashboard/api/summary?window=1h": time.monotonic()}
    every = {"/dashboard/api/recent?window=1h&limit=25": live_s, "/dashboard/api/summary?window=1h": summary_s}
    ok = failed = 0
    while time.monotonic() < end:
        for path, at in list(due.items()):
            if time.monotonic() >= at:
                try:
                    urllib.request.urlopen(base + path, timeout=30).read()  # loopback only
                    ok += 1
                except OSError:
                    failed += 1
                due[path] = at + every[path]
        time.sleep(max(0.0, min(min(due.values()), end) - time.monotonic()))
    print(f"{ok} {failed}", flush=True)


if __name__ == "__main__":
    main()
