"""The one protocol every upstream speaks to the executor.

Adapters take an OpenAI-shaped chat request (``model`` already replaced by the upstream name) and return
OpenAI-shaped results. Whatever a provider's wire format, its quirks stop here: the executor, the gateway and the
replay driver only ever see :class:`Completion`, :class:`StreamChunk` and :class:`UpstreamError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from tierwise.types import JSON, Completion, StreamChunk


@runtime_checkable
class Provider(Protocol):
    """An upstream. Implementations must raise :class:`tierwise.types.UpstreamError` for every failure."""

    name: str

    async def complete(self, body: JSON, *, timeout_s: float) -> Completion:
        """One non-streaming chat completion. ``timeout_s`` bounds the whole call."""
        ...

    def stream(self, body: JSON, *, timeout_s: float) -> AsyncIterator[StreamChunk]:
        """Stream chunks of one chat completion.

        The iterator yields OpenAI ``chat.completion.chunk`` dicts; the last chunk carries ``usage`` (adapters ask
        the upstream for it, or count it themselves when the upstream cannot report it). Errors before the first
        chunk and mid-stream are both :class:`UpstreamError`. ``timeout_s`` bounds the wait for each chunk.
        """
        ...

    async def aclose(self) -> None:
        """Release pooled connections / model memory."""
        ...
