"""Garbage-collector settings of a serving process, applied once start-up is done.

Why: a gateway process makes most of its long-lived objects at start-up (the validated config, price tables,
tokenizer and router state, aiohttp's routes, imported modules) and then, per request, a few hundred short-lived
ones that reference counting frees when the request ends. With Python's defaults the cyclic collector runs a
young-generation pass every 700 net allocations — while requests are in flight, so it walks their objects and
promotes the survivors — and every few seconds a full pass that walks every start-up object again. Measured on the
governed gateway (``python bench/overhead/gc_cost.py``, every collection timed with ``gc.callbacks``): 15–25 µs of
CPU per request in the collector, most of it in full passes of 30–50 ms each, which also stall every request in
flight for that long; with these settings, under 1 µs and a longest pause of ~5 ms (``bench/results/gc_cost.md``).

What: ``gc.freeze()`` after a collection moves everything alive at the end of start-up into a permanent
generation that no pass walks (the objects still live and are freed normally at exit; CPython's documentation
recommends it for exactly this: long-lived state made before serving). A young threshold of 10,000 lets a request's
objects die before a pass would walk them. Cycles are still collected — every 10,000 net allocations — so memory
stays bounded; ``server.gc`` sets both (``freeze: false`` and ``young_threshold: 0`` keep Python's behaviour).

Only ``tierwise serve`` calls :func:`apply`: the collector is process-wide, and an embedding application (the
``Router`` library, tests) keeps its own settings.
"""

from __future__ import annotations

import gc
import logging

from tierwise.config.schema import GcConfig

log = logging.getLogger(__name__)


def apply(cfg: GcConfig) -> None:
    """Set the collector for a serving process; call once, after start-up and before the first request."""
    if cfg.young_threshold:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(cfg.young_threshold, older, oldest)
    if cfg.freeze:
        gc.collect()  # start-up's own garbage goes first: only what is alive is frozen
        gc.freeze()
    log.debug("gc: threshold %s, %d objects frozen", gc.get_threshold(), gc.get_freeze_count())
