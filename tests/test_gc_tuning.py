"""``server.gc``: the collector settings ``tierwise serve`` applies once start-up is done (gateway/gc_tuning.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from tierwise.config.schema import GcConfig, ServerConfig
from tierwise.gateway import gc_tuning


@pytest.fixture
def restored_gc() -> Iterator[None]:
    """The collector is process-wide: put the test process's settings back whatever the test did."""
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_defaults_freeze_start_up_objects_and_raise_the_young_threshold(restored_gc: None) -> None:
    gc.unfreeze()
    made_at_start_up = [[i] for i in range(1000)]  # lists stay tracked: config, price tables, router state
    gc_tuning.apply(ServerConfig().gc)
    assert gc.get_threshold()[0] == 10_000
    assert gc.get_freeze_count() >= len(made_at_start_up)
    assert gc.is_tracked(made_at_start_up[0]) and all(made_at_start_up[0] is not o for o in gc.get_objects())
    # cycles made afterwards are still collected
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1


def test_off_keeps_pythons_collector(restored_gc: None) -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    gc_tuning.apply(GcConfig(freeze=False, young_threshold=0))
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0


@pytest.mark.parametrize("bad", [{"young_threshold": -1}, {"young_threshold": 10**8}, {"freeze": "sometimes"},
                                 {"generations": 3}])
def test_bad_settings_are_refused_by_name(bad: dict) -> None:
    with pytest.raises(ValidationError) as err:
        GcConfig(**bad)
    assert next(iter(bad)) in str(err.value)
