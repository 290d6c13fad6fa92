"""Ledger traffic labels some models on some prompts only (a cascade serves one model per prompt): ``calibrate``,
``eval``, ``train-router`` and ``train-gate`` use the prompts labelled for every model they need and say what they
left out, or refuse naming per model how many prompts carry a label — never a KeyError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer
from tests.test_offline_live_parity import ask_all, config_text, logprob_of, reply_of, small_right
from tierwise.cli import main
from tierwise.config.load import load_config


def record(upstream: FakeUpstream, tmp: Path, mapping: bool) -> str:
    """Serve 48 prompts through a cascade that passes the small model's confident answers; label what was seen."""
    upstream.set(reply=reply_of, logprob=logprob_of)
    cfg = tmp / "tierwise.yaml"
    cfg.write_text(config_text(upstream.base_url, tmp / "rec.db", 0.8))
    gw = GatewayServer(load_config(cfg)).start()
    try:
        ids = ask_all(gw)
        rows = {r["id"]: r for r in gw.rows()}
    finally:
        gw.stop()
    labels = tmp / ("map.jsonl" if mapping else "served.jsonl")
    with labels.open("w") as fh:
        for n, (rid, prompt) in enumerate(ids.items()):
            i = int(prompt.split("#")[1].split(":")[0])
            seen = {a["model"] for a in rows[rid]["attempts"]}
            q = {m: (float(small_right(i)) if m == "small" else 1.0) for m in seen}
            fh.write(json.dumps({"id": rid, "prompt": prompt, "split": "train" if n % 3 else "test",
                                 "quality": q if mapping else q[rows[rid]["model"]]}) + "\n")
    passed = sum(rows[r]["model"] == "small" for r in ids)
    assert 0 < passed < len(ids)  # some prompts never reached the large model
    return f"ledger:{tmp / 'rec.db'}:{labels}"


def test_partial_labels_use_complete_cases_and_say_so(upstream: FakeUpstream, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    data = record(upstream, tmp_path, mapping=True)
    assert main(["calibrate", "--data", data, "--gate", "logprob", "--z", "0", "--cv-folds", "0"]) == 0
    err = capsys.readouterr().err
    assert "of 48 prompts labelled for every model of [" in err and "left out" in err
    assert "large: labelled on train" in err and "over-represent escalated requests" in err
    assert main(["eval", "--data", data, "--router", "cascade:logprob", "--bootstrap", "0", "--cv-folds", "0"]) == 0
    assert "using the" in capsys.readouterr().err
    out = tmp_path / "r.npz"
    assert main(["train-router", "--data", data, "--kind", "knn", "--embedder", "minilm-static", "--folds", "2",
                 "--out", str(out)]) == 0
    assert out.exists() and "using the" in capsys.readouterr().err
    assert main(["train-gate", "--data", data, "--model", "small", "--folds", "2",
                 "--out", str(tmp_path / "g.json")]) == 0


def test_served_only_labels_are_refused_precisely(upstream: FakeUpstream, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    data = record(upstream, tmp_path, mapping=False)
    assert main(["calibrate", "--data", data, "--gate", "logprob"]) == 2
    err = capsys.readouterr().err
    assert "only 0 train and 0 test prompt(s) are labelled for every model of" in err
    assert "small: labelled on train" in err and "quality as a mapping" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        main(["train-router", "--data", data, "--kind", "knn", "--embedder", "minilm-static", "--out",
              str(tmp_path / "r.npz")])
    assert exc.value.code == 2 and "labelled for every model" in capsys.readouterr().err
