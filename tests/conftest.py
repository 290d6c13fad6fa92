"""Shared fixtures: a fake upstream (real loopback HTTP server) and a real gateway in front of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def anthropic_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    try:
        yield fake
    finally:
        fake.stop()


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
