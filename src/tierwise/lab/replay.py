"""The replay driver: a provider that serves recorded answers, tokens, costs and confidences from an outcome set.

It plugs into the *same* :class:`tierwise.service.Tierwise` (engine, executor, cascade gates, ledger) that serves
live traffic, so evaluation and calibration measure the code that ships. Requests name the recorded prompt in the
body field :data:`REPLAY_KEY`; ``model`` is the dataset's model name.

How recorded signals become what live gates read:
- ``confidence`` → ``Completion.logprobs = [log(confidence)]`` (so the log-prob gate sees exp(mean) = confidence);
- ``samples`` → one choice per sample when the request asks for ``n`` > 1 (the vote gate);
- ``cost_usd`` → ``Completion.billed_usd`` (the recorded spend, not re-priced).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

from tierwise.lab.datasets.format import OutcomeSet, PromptOutcomes
from tierwise.types import JSON, Completion, ErrorKind, StreamChunk, UpstreamError, Usage

REPLAY_KEY = "tierwise_replay_id"


class ReplayProvider:
    def __init__(self, name: str, oset: OutcomeSet) -> None:
        self.name = name
        self.oset = oset
        self._by_id: dict[str, PromptOutcomes] = {p.id: p for p in oset.prompts}

    def prompt(self, prompt_id: str) -> PromptOutcomes:
        return self._by_id[prompt_id]

    async def complete(self, body: JSON, *, timeout_s: float) -> Completion:
        pid = body.get(REPLAY_KEY)
        p = self._by_id.get(pid) if isinstance(pid, str) else None
        if p is None:
            raise UpstreamError(ErrorKind.CLIENT, f"replay: unknown prompt id {pid!r}", status=404)
        model = body.get("model")
        out = p.models.get(model) if isinstance(model, str) else None
        if out is None:
            raise UpstreamError(ErrorKind.CLIENT, f"replay: no recorded outcome of model {model!r} for {pid}", status=404)
        n = body.get("n") or 1
        if n > 1 and out.samples:
            texts = list(out.samples[:n])  # a sample with no extracted answer stays empty: it is a lost vote
        else:
            # The recorded answer stands for "an answer was given": the hard empty-answer rule must not fire on
            # a dataset that simply did not store the text.
            texts = [out.answer if out.answer and out.answer.strip() else "<recorded answer>"]
        logprobs = None
        if out.confidence is not None and not math.isnan(out.confidence):
            logprobs = [math.log(max(out.confidence, 1e-12))]
        usage = Usage(input_tokens=out.input_tokens or 0, output_tokens=out.output_tokens or 0)
        completion_body: JSON = {
            "id": f"replay-{pid}",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop", "logprobs": None}
                for i, t in enumerate(texts)
            ],
            "usage": usage.to_openai(),
        }
        return Completion(completion_body, usage, "stop", texts[0], logprobs, billed_usd=out.cost_usd or 0.0)

    def stream(self, body: JSON, *, timeout_s: float) -> AsyncIterator[StreamChunk]:
        raise UpstreamError(ErrorKind.CLIENT, "replay serves non-streaming requests only")

    async def aclose(self) -> None:
        return None
