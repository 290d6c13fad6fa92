"""The fake upstream itself: wire details other tests rely on, and control over HTTP from another process."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from fakes import FakeUpstream, RemoteFake
from schemas import errors as schema_errors

ROOT = Path(__file__).resolve().parents[1]


def post(url: str, body: dict, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_models_list_conforms() -> None:
    with FakeUpstream() as fake, urllib.request.urlopen(fake.base_url + "/models", timeout=10) as resp:
        body = json.loads(resp.read())
    assert not schema_errors(body, "ListModelsResponse")
    assert [m["id"] for m in body["data"]] == ["fake-model", "fake-model-large"]


def test_openai_stream_framing_and_usage_chunk() -> None:
    with FakeUpstream() as fake:
        fake.set(reply="x y", prompt_tokens=5, cached_tokens=2)
        status, headers, raw = post(fake.base_url + "/chat/completions",
                                    {**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = [e.removeprefix("data: ") for e in raw.decode().split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" in c for c in chunks)  # null on all but the last, as OpenAI does
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 2


def test_anthropic_validation_matches_the_real_api() -> None:
    with FakeUpstream() as fake:
        url = fake.base_url + "/messages"
        assert post(url, {**CHAT, "max_tokens": 5})[0] == 400  # no anthropic-version header
        status, _, raw = post(url, CHAT, {"anthropic-version": "2023-06-01"})
        assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"
        bad_role = {**CHAT, "max_tokens": 5, "messages": [{"role": "system", "content": "s"}]}
        assert post(url, bad_role, {"anthropic-version": "2023-06-01"})[0] == 400
        assert fake.calls == 2  # the version check happens before the request is counted


def test_faults_are_fifo_and_one_shot() -> None:
    with FakeUpstream() as fake:
        fake.http_error(503)
        fake.http_error(429, retry_after=2)
        url = fake.base_url + "/chat/completions"
        assert post(url, CHAT)[0] == 503
        status, headers, _ = post(url, CHAT)
        assert status == 429 and headers["Retry-After"] == "2"
        assert post(url, CHAT)[0] == 200
        assert fake.calls == 3 and fake.pending_faults == 0


def test_controls_are_thread_safe_under_concurrent_requests() -> None:
    with FakeUpstream() as fake:
        url = fake.base_url + "/chat/completions"
        statuses: list[int] = []
        for _ in range(20):
            fake.http_error(500)

        def worker() -> None:
            for _ in range(10):
                statuses.append(post(url, CHAT)[0])

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses.count(500) == 20 and statuses.count(200) == 20
        assert len(fake.requests) == 40


def test_separate_process_driven_over_http() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.upstream", "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY "), line
        remote = RemoteFake(f"http://127.0.0.1:{int(line.split()[1])}")
        remote.reset()
        remote.set(reply="from afar", prompt_tokens=3)
        remote.http_error(502)
        url = remote.base_url + "/chat/completions"
        assert post(url, CHAT)[0] == 502
        status, _, raw = post(url, {**CHAT, "x_extra": 1})
        body = json.loads(raw)
        assert status == 200 and body["choices"][0]["message"]["content"] == "from afar"
        assert not schema_errors(body, "CreateChatCompletionResponse")
        assert remote.stats()["calls"]["/v1/chat/completions"] == 2
        assert remote.requests()[-1]["body"]["x_extra"] == 1
    finally:
        proc.terminate()
        proc.wait(10)


def test_official_openai_sdk_reads_the_fake() -> None:
    openai = pytest.importorskip("openai")
    with FakeUpstream() as fake:
        fake.set(reply="sdk ok", prompt_tokens=10, cached_tokens=4, reasoning_tokens=2,
                 tool_calls=[{"name": "f", "arguments": {"a": 1}}])
        client = openai.OpenAI(base_url=fake.base_url, api_key="sk-fake", max_retries=0)
        done = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], logprobs=True)
        assert done.choices[0].message.content == "sdk ok"
        assert done.choices[0].message.tool_calls[0].function.name == "f"
        assert done.usage.prompt_tokens_details.cached_tokens == 4
        assert done.usage.completion_tokens_details.reasoning_tokens == 2
        assert [t.logprob for t in done.choices[0].logprobs.content] == [-0.25, -0.25]
        stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
                                                stream_options={"include_usage": True})
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "sdk ok"
        assert chunks[-1].usage.prompt_tokens == 10
        models = client.models.list()
        assert [m.id for m in models.data] == ["fake-model", "fake-model-large"]
