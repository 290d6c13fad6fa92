"""A real cascade over the gateway with the two local llama.cpp models: the log-prob gate decides on real logprobs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.harness import GatewayServer
from tierwise.config import load_config_text

pytestmark = [pytest.mark.slow, pytest.mark.local_model]

try:
    import llama_cpp  # noqa: F401

    from tierwise.local.models import LocalModelError, resolve_gguf

    resolve_gguf("smollm2-135m")
    resolve_gguf("qwen2.5-coder-0.5b")
except (ImportError, LocalModelError) as exc:  # pragma: no cover - CI installs them (scripts/install-local-models.sh)
    pytest.skip(f"local models not installed ({exc}); run scripts/install-local-models.sh", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    text = (ROOT / "examples" / "local.yaml").read_text()
    text = text.split("tiers:", 1)[0].replace("${TIERWISE_LEDGER:-tierwise-ledger.db}",
                                              str(tmp_path_factory.mktemp("l") / "ledger.db"))
    text += """
tiers:
  never_escalate:
    policy: cascade
    cascade: {rungs: [{model: smollm2-135m, gate: {kind: logprob, threshold: 0.0}}, {model: qwen2.5-coder-0.5b}]}
  always_escalate:
    policy: cascade
    cascade: {rungs: [{model: smollm2-135m, gate: {kind: logprob, threshold: 1.0}}, {model: qwen2.5-coder-0.5b}]}
default_tier: never_escalate
fallback_model: smollm2-135m
"""
    gw = GatewayServer(load_config_text(text, env={})).start()
    yield gw
    gw.stop()


def test_logprob_gate_decides_on_real_model_logprobs(local_gw: GatewayServer) -> None:
    c = openai.OpenAI(base_url=local_gw.base_url, api_key="x", max_retries=0, timeout=300)
    msg = [{"role": "system", "content": "Reply with the final answer only."},
           {"role": "user", "content": "What is 17*3? Answer with the number only."}]
    kept = c.chat.completions.with_raw_response.create(model="never_escalate", messages=msg, max_tokens=48,
                                                       temperature=0)
    assert kept.headers["x-tierwise-model"] == "smollm2-135m" and kept.headers["x-tierwise-escalations"] == "0"
    up = c.chat.completions.with_raw_response.create(model="always_escalate", messages=msg, max_tokens=48,
                                                     temperature=0)
    assert up.headers["x-tierwise-model"] == "qwen2.5-coder-0.5b" and up.headers["x-tierwise-escalations"] == "1"
    assert "51" in up.parse().choices[0].message.content
    rows = local_gw.rows()
    assert not any("finish_reason=length" in n for n in rows[-1]["notes"]), rows[-1]["notes"]
    conf = rows[-1]["attempts"][0]["confidence"]
    assert 0.0 < conf < 1.0  # a real mean token probability from the small model's logprobs
    assert rows[-1]["cost_usd"] == pytest.approx(sum(a["cost_usd"] for a in rows[-1]["attempts"]), rel=1e-12)
