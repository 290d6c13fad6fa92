"""tierwise sample and tierwise trial through the public CLI, on traffic captured by a real gateway; the candidate
models and the LLM judge are a mock upstream speaking the OpenAI wire format."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer
from tierwise.cli import main
from tierwise.config import load_config
from tierwise.lab.datasets import read_outcome_set

N = 12  # prompts per tier


def reply(body: dict) -> str:
    """large (the incumbent) always answers 'Answer <k>.'; small gets the odd k wrong; the judge (fb) says TIE."""
    msgs = body["messages"]
    if msgs[0]["role"] == "system" and "VERDICT" in msgs[0]["content"]:
        return "The two answers agree.\nVERDICT: TIE"
    k = int(re.search(r"question (\d+)", msgs[-1]["content"]).group(1))
    if body["model"] == "small-up" and k % 2:
        return f"answer {k + 100}"
    return f"Answer {k}." if body["model"] == "large-up" else f"answer {k}"


def write_config(tmp: Path, url: str) -> Path:
    doc = {
        "ledger": {"backend": "sqlite", "path": str(tmp / "ledger.db"), "flush_interval_ms": 20},
        "retry": {"max_retries": 0},
        "providers": {"fake": {"format": "openai", "base_url": url, "api_key": "sk-test", "timeout_s": 2}},
        "models": {
            "small": {"provider": "fake", "upstream": "small-up", "price": {"input": 0.1, "output": 0.4}},
            "large": {"provider": "fake", "upstream": "large-up", "price": {"input": 2.5, "output": 10}},
            "fb": {"provider": "fake", "upstream": "fb-up", "price": {"input": 0.05, "output": 0.2}},
        },
        "tiers": {"chat": {"models": ["large"]}, "label": {"models": ["large"]}},
        "default_tier": "chat",
        "fallback_model": "large",
        "rollout": {"capture": {"enabled": True}},
    }
    path = tmp / "tierwise.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def captured(upstream: FakeUpstream, tmp_path: Path) -> Iterator[Path]:
    """A config whose ledger and rollout store hold 2 x N answered, captured requests (tiers chat and label)."""
    upstream.set(reply=reply)
    path = write_config(tmp_path, upstream.base_url)
    gw = GatewayServer(load_config(path)).start()
    client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=20)
    try:
        for tier in ("chat", "label"):
            for k in range(N):
                client.chat.completions.create(model=tier, messages=[{"role": "user", "content": f"question {k}"}])
        gw.flush_ledger()
        assert gw.svc is not None and gw.svc.capture is not None and gw.svc.capture.flush()
    finally:
        client.close()
        gw.stop()
    yield path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        return (exc.code if isinstance(exc.code, int) else 2), str(exc.code)
    return code, capsys.readouterr().out


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_sample_is_stratified_per_tier_reproducible_and_carries_the_incumbent(captured: Path, capsys) -> None:
    out = captured.parent / "labels.jsonl"
    code, text = run(capsys, "sample", "-c", str(captured), "--out", str(out), "--per-tier", "5")
    assert code == 0 and "chat: 5 prompts" in text and "label: 5 prompts" in text
    rows = lines(out)
    assert sorted(r["tier"] for r in rows) == ["chat"] * 5 + ["label"] * 5
    for r in rows:
        k = int(r["prompt"].split()[-1])
        assert r["incumbent"]["model"] == "large" and r["incumbent"]["answer"] == f"Answer {k}."
        assert r["incumbent"]["cost_usd"] > 0 and r["incumbent"]["latency_ms"] > 0
        assert r["messages"] == [{"role": "user", "content": f"question {k}"}] and r["labels"] == {}
    again = captured.parent / "again.jsonl"
    run(capsys, "sample", "-c", str(captured), "--out", str(again), "--per-tier", "5")
    assert again.read_bytes() == out.read_bytes()  # same seed, same captures: same sample
    bigger = captured.parent / "bigger.jsonl"
    run(capsys, "sample", "-c", str(captured), "--out", str(bigger), "--per-tier", "8")
    assert {r["id"] for r in rows} <= {r["id"] for r in lines(bigger)}  # a larger sample contains the smaller


def test_trial_judges_candidates_writes_an_outcome_set_and_resumes(
        captured: Path, upstream: FakeUpstream, capsys) -> None:
    labels = captured.parent / "labels.jsonl"
    run(capsys, "sample", "-c", str(captured), "--out", str(labels), "--per-tier", str(N))
    out = captured.parent / "trial"
    before = upstream.calls
    code, text = run(capsys, "trial", "-c", str(captured), "--labels", str(labels), "--tier-models", "chat=small",
                     "--judge", "normalised", "--budget-usd", "1", "--out", str(out), "--quiet")
    assert code == 0, text
    assert upstream.calls - before == N  # chat only: one call per prompt
    doc = json.loads((out / "trial.json").read_text())
    c = doc["tiers"]["chat"]["candidates"]["small"]
    assert c["n"] == N and c["quality"] == pytest.approx(0.5)  # the odd questions are wrong
    assert c["ci_low"] < 0.5 < c["ci_high"] and c["cost_usd"] < c["incumbent_cost_usd"] and c["errors"] == 0
    assert doc["tiers"]["chat"]["incumbent_quality"] == 1.0 and doc["tiers"]["label"]["candidates"] == {}
    assert "tier chat" in text and "small" in text
    oset = read_outcome_set(out / "trial-chat.jsonl.gz")
    assert oset.models == ["small", "large"] and len(oset) == N
    assert {p.models["small"].quality for p in oset.prompts} == {0.0, 1.0}
    assert all(p.models["large"].quality == 1.0 and p.models["large"].cost_usd > 0 for p in oset.prompts)
    code, text = run(capsys, "trial", "-c", str(captured), "--labels", str(labels), "--tier-models", "chat=small",
                     "--budget-usd", "1", "--out", str(out), "--quiet")
    assert code == 0 and upstream.calls - before == N  # resumed: nothing called again
    # the lab commands read the outcome set as they read the public sets
    code, text = run(capsys, "eval", "--data", str(out / "trial-chat.jsonl.gz"), "--router", "cascade:logprob")
    assert code == 0, text


def test_llm_judge_is_position_swapped_and_its_cost_booked(captured: Path, upstream: FakeUpstream, capsys) -> None:
    labels = captured.parent / "labels.jsonl"
    run(capsys, "sample", "-c", str(captured), "--out", str(labels), "--per-tier", "4", "--tiers", "label")
    out = captured.parent / "trial-llm"
    before = upstream.calls
    code, text = run(capsys, "trial", "-c", str(captured), "--labels", str(labels), "--models", "small",
                     "--judge", "llm:fb", "--budget-usd", "1", "--out", str(out), "--quiet")
    assert code == 0, text
    judged = lines(out / "judgements.jsonl")
    assert len(judged) == 4 and all(j["verdicts"] == ["TIE", "TIE"] and j["quality"] == 1.0 for j in judged)
    assert all(j["judge_cost_usd"] > 0 for j in judged)
    assert upstream.calls - before == 4 * 3  # a candidate call and two judge calls (both orders) per prompt
    judge_requests = [r for r in upstream.requests[-12:] if r.body["model"] == "fb-up"]
    firsts = {r.body["messages"][1]["content"].split("ANSWER A:\n")[1].split("\n")[0] for r in judge_requests}
    assert any(a.startswith("Answer") for a in firsts) and any(a.startswith("answer") for a in firsts)  # swapped
    doc = json.loads((out / "trial.json").read_text())
    assert doc["spent_usd"] == pytest.approx(sum(float(a["cost_usd"]) for a in lines(out / "answers.jsonl"))
                                             + sum(j["judge_cost_usd"] for j in judged))


def test_trial_stops_at_its_budget_and_resumes_with_a_larger_one(captured: Path, upstream: FakeUpstream,
                                                                capsys) -> None:
    labels = captured.parent / "labels.jsonl"
    run(capsys, "sample", "-c", str(captured), "--out", str(labels), "--per-tier", str(N), "--tiers", "chat")
    out = captured.parent / "trial-budget"
    upstream.set(completion_tokens=1000)  # each call: 1000 x 0.4 USD/M = 0.0004 (its estimate assumes 256 tokens)
    code, text = run(capsys, "trial", "-c", str(captured), "--labels", str(labels), "--models", "small",
                     "--budget-usd", "0.001", "--concurrency", "1", "--out", str(out), "--quiet")
    assert code == 3 and "STOPPED by its budget" in text
    done = len(lines(out / "answers.jsonl"))
    assert done == 3  # started while spent + estimate <= budget: 0, 0.0004, 0.0008 (the third overshoots)
    assert json.loads((out / "trial.json").read_text())["spent_usd"] == pytest.approx(0.0012, rel=0.01)  # + input
    code, text = run(capsys, "trial", "-c", str(captured), "--labels", str(labels), "--models", "small",
                     "--budget-usd", "1", "--out", str(out), "--quiet")
    assert code == 0 and len(lines(out / "answers.jsonl")) == N


def test_bad_labelling_files_and_options_are_clear_errors(captured: Path, capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "tier": "chat", "incumbent": {"model": "large", "answer": "x"}}) + "\n")
    code, msg = run(capsys, "trial", "-c", str(captured), "--labels", str(bad), "--models", "small",
                    "--budget-usd", "1", "--out", str(tmp_path / "o"))
    assert code != 0 and f"{bad}:1: missing column 'messages'" in msg
    bad.write_text("{not json\n")
    assert "bad.jsonl:1: not valid JSON" in run(capsys, "trial", "-c", str(captured), "--labels", str(bad),
                                                "--models", "small", "--budget-usd", "1", "--out", "o")[1]
    labels = tmp_path / "labels.jsonl"
    run(capsys, "sample", "-c", str(captured), "--out", str(labels), "--per-tier", "2")
    assert "model(s) ['nope']" in run(capsys, "trial", "-c", str(captured), "--labels", str(labels), "--models",
                                      "nope", "--budget-usd", "1", "--out", "o")[1]
    assert "--judge 'fuzzy'" in run(capsys, "trial", "-c", str(captured), "--labels", str(labels), "--models",
                                    "small", "--judge", "fuzzy", "--budget-usd", "1", "--out", "o")[1]
    assert not (tmp_path / "o").exists()


def test_failed_calls_score_zero_and_are_retried_on_resume(captured: Path, upstream: FakeUpstream, capsys) -> None:
    labels = captured.parent / "labels.jsonl"
    run(capsys, "sample", "-c", str(captured), "--out", str(labels), "--per-tier", "4", "--tiers", "chat")
    out = captured.parent / "trial-errors"
    upstream.push_faults([{"kind": "http_error", "status": 500}] * 3)
    before = upstream.calls
    code, _ = run(capsys, "trial", "-c", str(captured), "--labels", str(labels), "--models", "small",
                  "--budget-usd", "1", "--concurrency", "1", "--out", str(out), "--quiet")
    assert code == 0 and upstream.calls - before == 4
    c = json.loads((out / "trial.json").read_text())["tiers"]["chat"]["candidates"]["small"]
    assert c["errors"] == 3 and c["n"] == 4 and c["quality"] <= 0.25  # a failed call is a failed answer
    code, _ = run(capsys, "trial", "-c", str(captured), "--labels", str(labels), "--models", "small",
                  "--budget-usd", "1", "--out", str(out), "--quiet")
    assert code == 0 and upstream.calls - before == 7  # only the three failures again
    c = json.loads((out / "trial.json").read_text())["tiers"]["chat"]["candidates"]["small"]
    even = sum(int(r["prompt"].split()[-1]) % 2 == 0 for r in lines(labels))  # small is right on even questions
    assert c["errors"] == 0 and c["n"] == 4 and c["quality"] == even / 4


def judge_reply(body: dict) -> str:
    """The fb judge grades 'Answer k.' (the incumbent's form) 9/10; one answer it cannot grade; else the base reply."""
    msgs = body["messages"]
    if msgs[0]["role"] == "system" and "SCORE" in msgs[0]["content"]:
        if "question 3\n" in msgs[1]["content"]:
            return "I cannot tell."
        return "Looks right.\nSCORE: 9"
    return reply(body)


def test_judge_labels_a_reproducible_sample_of_live_answers_as_feedback(captured: Path, upstream: FakeUpstream,
                                                                        capsys) -> None:
    """tierwise judge: a seeded sample of the answered captures, graded by the judge model through the real
    provider path, stored as feedback from 'judge:<model>' (what calibrate --from-ledger and canary reports read),
    each call's cost on record; a re-run pays for nothing already judged; bad options are one line."""
    from tierwise.rollout.capture import feedback_scores
    from tierwise.rollout.judge_live import sampled

    upstream.set(reply=judge_reply)
    cfg = load_config(captured)
    out = captured.parent / "judge-run"
    before = upstream.calls
    code, text = run(capsys, "judge", "-c", str(captured), "--model", "fb", "--rate", "0.5", "--seed", "s1",
                     "--tiers", "label", "--budget-usd", "1", "--out", str(out))
    assert code == 0, text
    ids = lines(out / "judge-labels.jsonl")
    assert ids and upstream.calls - before == len(ids) <= N
    assert all(sampled(c["id"], 0.5, "s1") and c["tier"] == "label" and c["cost_usd"] > 0 for c in ids)
    graded = [c for c in ids if "SCORE" in (c["answer"] or "")]
    scores = feedback_scores(cfg, sources=["judge:fb"])
    assert set(scores) == {c["id"] for c in graded} and all(v == pytest.approx(0.9) for v in scores.values())
    assert f"{len(graded)} labelled now" in text and f"{len(ids) - len(graded)} without a grade" in text
    spent = sum(c["cost_usd"] for c in ids)
    assert f"${spent:.6f}" in text
    code, text = run(capsys, "judge", "-c", str(captured), "--model", "fb", "--rate", "0.5", "--seed", "s1",
                     "--tiers", "label", "--budget-usd", "1", "--out", str(out))
    assert code == 0 and f"{len(graded)} already labelled" in text  # graded ones are not paid for twice
    assert upstream.calls - before == len(ids) + (len(ids) - len(graded))  # only the ungraded are asked again
    for argv, words in ((["--model", "nope"], "not in the config's models"), (["--model", "fb", "--rate", "0"],
                        "--rate"), (["--model", "fb", "--budget-usd", "0"], "--budget-usd")):
        args = ["judge", "-c", str(captured), "--out", str(out), *argv]
        if "--budget-usd" not in argv:
            args += ["--budget-usd", "1"]
        code, text = run(capsys, *args)
        assert code == 2 and words in text
