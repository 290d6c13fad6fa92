"""Test doubles shared by the whole suite: a real loopback OpenAI/Anthropic upstream (:class:`FakeUpstream`).

The server module is imported lazily so ``python -m tests.fakes.upstream`` does not import itself twice.
"""

from typing import Any

from .behaviour import Behaviour, Fault
from .control import RemoteFake

__all__ = ["Behaviour", "FakeUpstream", "Fault", "RecordedRequest", "RemoteFake"]


def __getattr__(name: str) -> Any:
    if name in ("FakeUpstream", "RecordedRequest"):
        from . import upstream

        return getattr(upstream, name)
    raise AttributeError(name)
