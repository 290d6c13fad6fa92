"""tierwise's own traffic as an outcome set: the ledger joined with operator quality labels."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from tests.harness import GatewayServer
from tierwise.lab.datasets import OutcomeFormatError
from tierwise.lab.datasets.ledger import ledger_outcomes, load_data
from tierwise.ledger import SQLiteLedgerStore


def test_join_labels_with_ledger(client: openai.OpenAI, gateway: GatewayServer, tmp_path: Path) -> None:
    prompts = ["What is 2+2?", "Capital of France?", "Sentiment of 'great'?"]
    ids = []
    for p in prompts:
        raw = client.chat.completions.with_raw_response.create(model="chat", messages=[{"role": "user", "content": p}])
        ids.append(raw.headers["x-tierwise-request-id"])
    gateway.flush_ledger()
    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join(json.dumps({"id": i, "prompt": p, "quality": q, "split": s})
                                for i, p, q, s in zip(ids, prompts, [1, 0, 1], ["train", "train", "test"],
                                                      strict=True)) + "\n")
    store = SQLiteLedgerStore(tmp_path / "ledger.db")
    oset = ledger_outcomes(store, labels)
    store.close()
    assert oset.models == ["large"] and [p.id for p in oset.prompts] == ids
    first = oset.prompts[0].models["large"]
    assert first.quality == 1.0 and first.cost_usd > 0 and first.output_tokens > 0
    assert oset.split("test").prompts[0].prompt == prompts[2]
    same = load_data(f"ledger:{tmp_path / 'ledger.db'}:{labels}")
    assert [p.id for p in same.prompts] == ids


def test_bad_labels_name_file_line_and_field(gateway: GatewayServer, client: openai.OpenAI, tmp_path: Path) -> None:
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=[{"role": "user", "content": "x"}])
    rid = raw.headers["x-tierwise-request-id"]
    gateway.flush_ledger()
    store = SQLiteLedgerStore(tmp_path / "ledger.db")
    cases = [
        ({"id": rid, "prompt": "x", "quality": 1.5}, "quality"),
        ({"id": "nope", "prompt": "x", "quality": 1}, "no ledger record"),
        ({"id": rid, "quality": 1}, "prompt"),
        ({"id": rid, "prompt": "x", "quality": {"small": 1}}, "got no answer from small"),
    ]
    for row, needle in cases:
        labels = tmp_path / "l.jsonl"
        labels.write_text(json.dumps(row) + "\n")
        with pytest.raises(OutcomeFormatError) as ei:
            ledger_outcomes(store, labels)
        assert "l.jsonl" in str(ei.value) and ":1" in str(ei.value) and needle in str(ei.value)
    store.close()
