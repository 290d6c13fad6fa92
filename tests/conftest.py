"""Shared fixtures: a fake upstream (real loopback HTTP server) and a real gateway in front of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for

#: fixtures shared by several test files: ``prefix`` (a cleaned-up Redis key prefix), ``browser`` (chromium)
pytest_plugins = ["tests.redis_env", "tests.chromium_env"]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def module_upstream() -> Iterator[FakeUpstream]:
    """One fake upstream for a whole test module (provider tests make many requests); see :func:`fake`."""
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def fake(module_upstream: FakeUpstream) -> FakeUpstream:
    """The module's fake upstream with its scripted faults, delays and recorded requests cleared for this test."""
    module_upstream.reset()
    return module_upstream


@pytest.fixture
def anthropic_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def gateway(upstream: FakeUpstream, anthropic_upstream: FakeUpstream, tmp_path: Path) -> Iterator[GatewayServer]:
    cfg = config_for(upstream.base_url, tmp_path, anthropic_url=anthropic_upstream.base_url)
    gw = GatewayServer(cfg).start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def client(gateway: GatewayServer) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=20)
    try:
        yield c
    finally:
        c.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With TIERWISE_NO_SKIPS=1 (CI), a skipped test fails the run: what needs Redis, PostgreSQL, the local
    models or ../shared/data must have run."""
    import os

    if os.environ.get("TIERWISE_NO_SKIPS") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        for rep in skipped:
            reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
            print(f"\nTIERWISE_NO_SKIPS: {rep.nodeid} was skipped: {reason}")
        session.exitstatus = 1


@pytest.fixture(autouse=True)
def _reap_serve_processes() -> Iterator[None]:
    """No `tierwise serve` a test started outlives it, even when the test fails half-way."""
    yield
    from tests.procs import reap

    reap()
