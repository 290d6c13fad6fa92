"""Cascades behind the Messages and Responses APIs: the gate judges the internal answer, the escalated answer is
what the client gets (streamed too), its usage is the served rung's, and the ledger books every rung."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for

CASCADE = """
  casc_json:
    policy: cascade
    cascade:
      rungs:
        - {model: small, gate: {kind: validator, json_schema: {type: object, required: [label]}}}
        - {model: large}
"""


def _reply(body: dict) -> str:
    return "not json at all" if body.get("model") == "small-up" else '{"label": "spam"}'


@pytest.fixture
def cgw(upstream: FakeUpstream, tmp_path: Path) -> Iterator[GatewayServer]:
    upstream.set(reply=_reply, prompt_tokens=100, completion_tokens=10)
    gw = GatewayServer(config_for(upstream.base_url, tmp_path, extra=CASCADE)).start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_messages_through_a_cascade(cgw: GatewayServer, stream: bool) -> None:
    c = anthropic.Anthropic(base_url=cgw.url, api_key="x", max_retries=0)
    args = {"model": "casc_json", "max_tokens": 50, "messages": [{"role": "user", "content": "label this"}]}
    if stream:
        with c.messages.stream(**args) as s:  # type: ignore[arg-type]
            msg = s.get_final_message()
    else:
        msg = c.messages.create(**args)  # type: ignore[arg-type]
    assert msg.content[0].text == '{"label": "spam"}' and msg.model == "large"  # type: ignore[union-attr]
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (100, 10)  # the served rung's, not the sum
    [row] = cgw.rows()
    assert row["escalations"] == 1 and row["model"] == "large" and row["stream"] is stream
    assert row["input_tokens"] == 200 and row["cost_usd"] == pytest.approx((100 * 0.1 + 10 * 0.4 + 100 * 2.5
                                                                           + 10 * 10) / 1e6)


@pytest.mark.parametrize("stream", [False, True])
def test_responses_through_a_cascade(cgw: GatewayServer, stream: bool) -> None:
    c = openai.OpenAI(base_url=cgw.base_url, api_key="x", max_retries=0)
    if stream:
        with c.responses.stream(model="casc_json", input="label this") as s:
            resp = s.get_final_response()
    else:
        resp = c.responses.create(model="casc_json", input="label this")
    assert resp.output_text == '{"label": "spam"}' and resp.model == "large"
    assert resp.usage is not None and resp.usage.input_tokens == 100
    [row] = cgw.rows()
    assert row["escalations"] == 1 and row["input_tokens"] == 200
