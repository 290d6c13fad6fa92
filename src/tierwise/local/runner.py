"""One loaded llama.cpp model, the single thread it runs on, and the bridge from that thread to asyncio.

Why a thread per model: a ``llama_cpp.Llama`` holds one KV cache and one sampler and is not thread-safe, and its
calls block for seconds. Every call on a model therefore runs in that model's own single-worker executor (so calls
are serialised per model and two models can run side by side), and the event loop only ever awaits futures.

Why a :class:`Trace`: llama-cpp-python's chat API reports neither usage in streams nor log-probs unless the context
keeps logits for *every* position (``logits_all=True``: an ``n_ctx x n_vocab`` float buffer, 1.2 GB for Qwen at 2k
context, and a slower prefill). Instead :class:`TracingLlama` reports each sampled token id, and a logits processor
(the first stage of the sampler chain, so it sees the raw logits) keeps the current row; pairing the two gives exact
per-token log-probs and exact token counts at the cost of one log-softmax per generated token. The same hook stops
generation between two tokens when the caller gives up (timeout, client gone); prompt processing (prefill) cannot be
interrupted, so a cancelled call can still occupy its model for up to one prefill.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import llama_cpp
import numpy as np

from tierwise.local.models import LocalModelError

__all__ = ["LocalModel", "TokenLogprob", "Trace", "TracingLlama"]

T = TypeVar("T")
_POLL_S = 0.05  # how often a blocked producer re-checks for cancellation

# With verbose=False, llama-cpp-python silences native logging during a load by dup2()-ing /dev/null over the
# process's fds 1 and 2 and restoring them afterwards. Two loads overlapping on two threads restore each other's
# /dev/null and leave the whole process without stdout/stderr, so loads take turns.
_LOAD_LOCK = threading.Lock()


@dataclass(slots=True)
class TokenLogprob:
    """One generated token with its log-prob under the model (raw logits, before temperature/top-k/penalties)."""

    token: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, log-prob), best first; empty unless top_logprobs was asked for


@dataclass(slots=True, eq=False)  # identity semantics: a Trace is a live object, kept in sets
class Trace:
    """What one generation call did, filled in by the model thread and read by the caller after it finishes."""

    want_logprobs: bool = False
    top_n: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    prompt_tokens: int = 0
    completion_tokens: int = 0  # sampled tokens, end-of-generation token excluded (what llama-cpp bills)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    pieces: dict[int, bytes] = field(default_factory=dict)  # token id -> bytes, for every id in ``logprobs``
    _row: np.ndarray | None = None

    def observe_logits(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Logits processor: remember the row the next token is sampled from; the scores pass through unchanged."""
        self._row = np.array(scores, dtype=np.float64, copy=True)
        return scores

    def on_token(self, token: int, is_eog: bool) -> None:
        if is_eog:
            return
        self.completion_tokens += 1
        row, self._row = self._row, None
        if not self.want_logprobs or row is None:
            return
        peak = float(row.max())
        lse = peak + math.log(float(np.exp(row - peak).sum()))
        top: list[tuple[int, float]] = []
        if self.top_n > 0:
            n = min(self.top_n, row.shape[0])
            best = np.argpartition(row, -n)[-n:]
            top = sorted(((int(i), float(row[i]) - lse) for i in best), key=lambda t: -t[1])
        self.logprobs.append(TokenLogprob(int(token), float(row[token]) - lse, top))

    def resolve_pieces(self, detokenize: Callable[[list[int]], bytes]) -> None:
        """Look up the bytes of every token mentioned in ``logprobs`` (on the model thread, after generation)."""
        for entry in self.logprobs:
            for tok in (entry.token, *(t for t, _ in entry.top)):
                if tok not in self.pieces:
                    self.pieces[tok] = detokenize([tok])


class TracingLlama(llama_cpp.Llama):
    """``Llama`` whose token generator reports to the current :class:`Trace` and obeys its cancel flag.

    ``_create_completion`` (which every chat handler ends in) drives ``self.generate``; overriding it is the one
    place that sees the prompt length, every sampled id and the gap between two tokens. Pinned to
    llama-cpp-python 0.3.36, where that holds.
    """

    trace: Trace | None = None

    def generate(self, tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:  # type: ignore[override]
        trace = self.trace
        if trace is None:
            yield from super().generate(tokens, *args, **kwargs)
            return
        trace.prompt_tokens = len(tokens)
        vocab = self._model.vocab
        for token in super().generate(tokens, *args, **kwargs):
            if trace.cancelled.is_set():
                return
            trace.on_token(token, bool(llama_cpp.llama_vocab_is_eog(vocab, token)))
            yield token


class LocalModel:
    """One GGUF file, located and loaded on first use (or by :meth:`load`) inside its own thread.

    ``locate`` returns the file's path; it runs on the model thread because it may hash or assemble
    hundreds of megabytes (:func:`tierwise.local.models.resolve_gguf`).
    """

    def __init__(self, name: str, locate: Callable[[], Path], *, n_ctx: int, n_threads: int) -> None:
        self.name = name
        self.path: Path | None = None
        self._locate = locate
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.load_seconds: float | None = None
        self._llama: TracingLlama | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{name}")
        self._active: set[Trace] = set()
        self._closed = False

    # ---- model thread only -------------------------------------------------------------------------------------

    def _loaded(self) -> TracingLlama:
        if self._llama is None:
            self.path = self._locate()
            with _LOAD_LOCK:
                start = time.perf_counter()
                try:
                    self._llama = TracingLlama(
                        model_path=str(self.path),
                        n_ctx=self.n_ctx,
                        n_threads=self.n_threads,
                        n_threads_batch=self.n_threads,  # default is every core: prefill would fight the loop
                        logits_all=False,
                        verbose=False,
                    )
                except (
                    Exception
                ) as exc:  # llama-cpp raises ValueError here, which must not look like a bad request
                    raise LocalModelError(f"llama.cpp cannot load {self.path}: {exc}") from exc
                self.load_seconds = time.perf_counter() - start
        return self._llama

    def _chat(self, kwargs: dict[str, Any], trace: Trace, *, stream: bool) -> Any:
        llama = self._loaded()
        llama.trace = trace
        processors = llama_cpp.LogitsProcessorList([trace.observe_logits]) if trace.want_logprobs else None
        return llama.create_chat_completion(**kwargs, stream=stream, logits_processor=processors)

    def _untrace(self) -> None:
        if self._llama is not None:
            self._llama.trace = None

    # ---- event loop --------------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"local model '{self.name}' is closed")

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on this model's thread (after everything queued before it)."""
        self._check_open()
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def load(self) -> float:
        """Load the weights now instead of on the first request; returns the load time in seconds."""
        await self.run(self._loaded)
        return self.load_seconds or 0.0

    async def complete(self, kwargs: dict[str, Any], trace: Trace, *, timeout_s: float) -> dict[str, Any]:
        """A non-streaming ``create_chat_completion``; raises ``TimeoutError`` after ``timeout_s`` (queueing included).

        On timeout or caller cancellation the trace is cancelled: a queued call never starts and a running one stops
        at its next token; its result is discarded.
        """

        def job() -> dict[str, Any]:
            if trace.cancelled.is_set():
                raise TimeoutError("cancelled before it started")
            try:
                result = self._chat(kwargs, trace, stream=False)
                if trace.want_logprobs:
                    trace.resolve_pieces(self._loaded().detokenize)
                return result
            finally:
                self._untrace()

        self._active.add(trace)
        try:
            return await asyncio.wait_for(self.run(job), timeout_s)
        finally:
            trace.cancelled.set()
            self._active.discard(trace)

    async def stream(
        self, kwargs: dict[str, Any], trace: Trace, *, chunk_timeout_s: float, max_buffered: int = 32
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Yield llama-cpp's stream chunks as the model thread produces them.

        Backpressure: the thread may run at most ``max_buffered`` chunks ahead of the consumer. When the consumer
        stops (``aclose``, cancellation, or ``TimeoutError`` after ``chunk_timeout_s`` without a chunk) generation
        stops at the next token.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        slots = threading.Semaphore(max_buffered)

        def emit(kind: str, payload: Any) -> bool:
            while not slots.acquire(timeout=_POLL_S):
                if trace.cancelled.is_set():
                    return False
            if trace.cancelled.is_set():
                return False
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, payload))
            except RuntimeError:  # the event loop is gone: nobody is listening any more
                trace.cancelled.set()
                return False
            return True

        def job() -> None:
            try:
                if trace.cancelled.is_set():
                    return
                with contextlib.closing(self._chat(kwargs, trace, stream=True)) as chunks:
                    for chunk in chunks:
                        if not emit("chunk", chunk):
                            return  # closing() ends llama-cpp's generator here, on the model thread
                emit("end", None)
            except BaseException as exc:  # handed to the consumer, which maps it
                emit("error", exc)
            finally:
                self._untrace()

        self._check_open()  # fail now rather than after chunk_timeout_s of waiting for a job that never runs
        self._active.add(trace)
        future = asyncio.ensure_future(self.run(job))
        try:
            while True:
                kind, payload = await asyncio.wait_for(queue.get(), chunk_timeout_s)
                slots.release()
                if kind == "chunk":
                    yield payload
                elif kind == "error":
                    raise payload
                else:
                    return
        finally:
            trace.cancelled.set()
            self._active.discard(trace)
            future.cancel()  # only takes effect while still queued; a running job sees the cancel flag and ends

    async def aclose(self) -> None:
        """Stop running generations at their next token, free the model, and end its thread."""
        if self._closed:
            return
        for trace in list(self._active):
            trace.cancelled.set()

        def free() -> None:
            if self._llama is not None:
                self._llama.close()
                self._llama = None

        try:
            await self.run(free)
        finally:
            self._closed = True
            self._executor.shutdown(wait=False, cancel_futures=True)
