"""``tierwise report`` and ``tierwise reprice`` through the public CLI, on SQLite and PostgreSQL ledgers."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for
from tests.rollout_data import PRICES, TOKENS, config_file, reference, rows
from tierwise.cli import main
from tierwise.ledger import SQLiteLedgerStore


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    return config_file(config_for("http://127.0.0.1:9/v1", tmp_path), tmp_path / "tierwise.yaml")


def _ledger(tmp_path: Path, n: int, seed: int = 1) -> tuple[Path, list[dict[str, Any]]]:
    rs = list(rows(n, seed))
    store = SQLiteLedgerStore(tmp_path / "ledger.db")
    for k in range(0, len(rs), 5000):
        store.write_batch(rs[k:k + 5000])
    store.close()
    return tmp_path / "ledger.db", rs


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def _check_against_reference(doc: dict[str, Any], rs: list[dict[str, Any]]) -> None:
    ref = reference(rs)
    tiers = {ln["key"] or "(none)": ln for ln in doc["views"]["tier"]}
    assert set(tiers) == set(ref)
    for tier, want in ref.items():
        assert tiers[tier]["requests"] == want["requests"]
        assert tiers[tier]["cost_usd"] == pytest.approx(want["cost_usd"], rel=1e-9, abs=1e-9)
        assert tiers[tier]["flagship_usd"] == pytest.approx(want["flagship_usd"], rel=1e-9, abs=1e-9)
    assert doc["total"]["requests"] == len(rs)
    assert doc["total"]["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rs), rel=1e-9)
    tokens = sum(r[t] for r in rs for t in TOKENS if t != "reasoning_tokens")
    assert doc["total"]["tokens"] == tokens
    assert doc["total"]["cpt_usd"] == pytest.approx(doc["total"]["cost_usd"] / tokens * 1000, rel=1e-6)
    for view in ("model", "principal", "policy"):  # every view partitions the traffic
        assert sum(ln["requests"] for ln in doc["views"][view]) == len(rs)
        assert sum(ln["cost_usd"] for ln in doc["views"][view]) == pytest.approx(doc["total"]["cost_usd"])
    policies = {ln["key"] for ln in doc["views"]["policy"]}
    assert policies == {"priority", "cheapest", "direct"}
    assert doc["total"]["savings_usd"] == pytest.approx(doc["total"]["flagship_usd"] - doc["total"]["cost_usd"])


def test_report_matches_a_plain_reference_and_prices_counterfactuals(tmp_path: Path, cfg_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    db, rs = _ledger(tmp_path, 3000)
    doc = _json(capsys, "report", "-c", str(cfg_path), "--db", str(db), "--format", "json")
    _check_against_reference(doc, rs)
    assert doc["flagship"] == "large"  # the priciest configured model
    assert any("mix shift" in n for n in doc["notes"])
    assert doc["captured"] is None and any("no captured prompts" in c for c in doc["cannot"])

    # a named model and a price table as further counterfactuals
    table = tmp_path / "new.yaml"
    table.write_text("prices:\n  large: {input: 5.0, output: 20.0, cache_read: 2.5}\n")
    doc2 = _json(capsys, "report", "-c", str(cfg_path), "--db", str(db), "--format", "json", "--compare", "small",
                 "--prices", str(table), "--flagship", "thinker")
    assert doc2["flagship"] == "thinker" and doc2["compare"] == ["small", "new.yaml"]
    on_small = doc2["total"]["on_small_usd"]
    assert 0 < on_small < doc2["total"]["cost_usd"]
    chat_large = next(ln for ln in doc2["views"]["model"] if ln["key"] == "large")
    # the price table doubles large's price: its served traffic costs twice the flagship-at-old-price figure
    large_on_large = next(ln for ln in doc["views"]["model"] if ln["key"] == "large")["flagship_usd"]
    est = sum(r["cost_usd"] for r in rs if r["model"] == "large" and r["cost_breakdown"]["estimated"])
    assert est > 0  # booked at estimates: kept as booked in every counterfactual
    assert chat_large["on_new.yaml_usd"] == pytest.approx(2 * (large_on_large - est) + est, rel=1e-9)

    # table and CSV formats, atomically to a file
    out = tmp_path / "report.csv"
    assert main(["report", "-c", str(cfg_path), "--db", str(db), "--format", "csv", "-o", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("view,key,requests") and lines[1].startswith("total,,3000,")
    assert main(["report", "-c", str(cfg_path), "--db", str(db), "--since", str(rs[0]["ts"]), "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "by tier" in text and "realised savings" in text and "(top 3 of 50 by spend)" in text


def test_report_on_an_empty_ledger_says_so(tmp_path: Path, cfg_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    SQLiteLedgerStore(tmp_path / "ledger.db").close()
    doc = _json(capsys, "report", "-c", str(cfg_path), "--db", str(tmp_path / "ledger.db"), "--format", "json")
    assert doc["total"]["requests"] == 0 and doc["total"]["cpt_usd"] is None and doc["views"]["tier"] == []
    assert main(["report", "-c", str(cfg_path), "--db", str(tmp_path / "ledger.db")]) == 0
    assert "(no requests in this window)" in capsys.readouterr().out


def test_bad_input_is_refused_with_a_clear_error_and_no_output_file(tmp_path: Path, cfg_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    db, _ = _ledger(tmp_path, 50)
    out = tmp_path / "out.json"
    bad = tmp_path / "bad.yaml"
    for text, msg in (("large: {input: 2, output: [8}\n", "not valid YAML (line 1"),
                      ("large: {input: -1, output: 8}\n", "model 'large': input"),
                      ("large: {inptu: 1, output: 8}\n", "inptu: Extra inputs are not permitted"),
                      ("- 1\n- 2\n", "expected a mapping")):
        bad.write_text(text)
        for verb in ("report", "reprice"):
            with pytest.raises(SystemExit) as exc:
                main([verb, "-c", str(cfg_path), "--db", str(db), "--prices", str(bad), "-o", str(out)])
            assert exc.value.code == 2
            assert msg in capsys.readouterr().err
            assert not out.exists()
    for argv, msg in ((["--flagship", "nope"], "unknown model 'nope'"), (["--compare", "nope"], "no price for 'nope'"),
                      (["--since", "2026-12-02", "--until", "2026-12-01"], "--until is before --since"),
                      (["--since", "yesterday"], "not a time"), (["--canary", "nope"], "no canary 'nope'")):
        with pytest.raises(SystemExit) as exc:
            main(["report", "-c", str(cfg_path), "--db", str(db), *argv])
        assert exc.value.code == 2 or msg in str(exc.value.code)
        assert msg in capsys.readouterr().err + str(exc.value.code)
    with pytest.raises(SystemExit):
        main(["report", "-c", str(cfg_path), "--db", str(tmp_path / "missing.db")])
    assert "no ledger file" in capsys.readouterr().err


def test_reprice_per_billing_model(tmp_path: Path, cfg_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, rs = _ledger(tmp_path, 2000, seed=3)
    table = tmp_path / "prices.yaml"
    table.write_text("small: {input: 0.2, output: 0.8, cache_read: 0.05}\nlarge: {input: 2.5, output: 10, "
                     "cache_read: 1.25}\n")
    doc = _json(capsys, "reprice", "-c", str(cfg_path), "--db", str(db), "--prices", str(table), "--format", "json")
    lines = {(m["model"], m["price"]): m for m in doc["models"]}
    # small doubles: every small call (escalated rungs included, per attempt) costs exactly twice
    small_booked = sum(a["cost_usd"] for r in rs if r["escalations"] for a in r["attempts"] if a["model"] == "small")
    small_booked += sum(r["cost_usd"] for r in rs if not r["escalations"] and r["model"] == "small"
                        and not r["cost_breakdown"]["estimated"])
    assert lines[("small", "table")]["booked_usd"] == pytest.approx(small_booked, rel=1e-9)
    assert lines[("small", "table")]["new_usd"] == pytest.approx(2 * small_booked, rel=1e-9)
    assert lines[("large", "table")]["change_usd"] == pytest.approx(0, abs=1e-9)  # unchanged price
    assert ("thinker", "unchanged (not in the table)") in lines
    est = sum(r["cost_usd"] for r in rs if r["cost_breakdown"]["estimated"])
    assert sum(m["booked_usd"] for m in doc["models"] if m["price"] == "estimate (kept)") == pytest.approx(est)
    assert doc["booked_usd"] == pytest.approx(sum(r["cost_usd"] for r in rs), rel=1e-9)
    assert main(["reprice", "-c", str(cfg_path), "--db", str(db), "--genai-prices"]) == 0
    assert "genai-prices" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["reprice", "-c", str(cfg_path), "--db", str(db)])
    assert "give one of --prices FILE or --genai-prices" in capsys.readouterr().err


def test_report_over_gateway_traffic(upstream: FakeUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_for(upstream.base_url, tmp_path, extra="rollout: {capture: {enabled: true}}\n")
    g = GatewayServer(cfg).start()
    try:
        c = openai.OpenAI(base_url=g.base_url, api_key="unused", max_retries=0, timeout=20)
        for model in ("chat", "label", "cheap", "small"):
            c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}])
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model="no-such-tier", messages=[{"role": "user", "content": "x"}])
        g.flush_ledger()
        assert g.svc is not None and g.svc.capture is not None and g.svc.capture.flush()
        path = config_file(cfg, tmp_path / "tierwise.yaml")
        doc = _json(capsys, "report", "-c", str(path), "--format", "json")
    finally:
        g.stop()
    assert doc["total"]["requests"] == 5 and doc["total"]["rejected"] == 1
    assert {ln["key"] for ln in doc["views"]["tier"]} == {"chat", "label", "cheap", None}
    assert doc["captured"] == 4 and doc["total"]["cost_usd"] > 0
    assert doc["total"]["flagship_usd"] >= doc["total"]["cost_usd"]
    assert not any("no captured prompts" in c for c in doc["cannot"])


# -- PostgreSQL ------------------------------------------------------------------------------------------------

psycopg = pytest.importorskip("psycopg")
BASE_DSN = os.environ.get("TIERWISE_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")


@pytest.fixture
def pg_schema() -> Iterator[str]:
    schema = f"tw_report_{uuid.uuid4().hex[:10]}"
    yield schema
    with psycopg.connect(BASE_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_postgres_report_and_reprice_equal_sqlite(tmp_path: Path, pg_schema: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from tierwise.ledger.postgres import PostgresLedgerStore

    db, rs = _ledger(tmp_path, 1500, seed=5)
    store = PostgresLedgerStore(BASE_DSN, schema=pg_schema)
    store.write_batch(rs)
    store.close()
    cfg = config_for("http://127.0.0.1:9/v1", tmp_path)
    sqlite_cfg = config_file(cfg, tmp_path / "lite.yaml")
    cfg.ledger.backend, cfg.ledger.dsn, cfg.ledger.pg_schema = "postgres", BASE_DSN, pg_schema
    pg_cfg = config_file(cfg, tmp_path / "pg.yaml")
    table = tmp_path / "p.yaml"
    table.write_text(f"small: {{input: {PRICES['small'][0] * 3}, output: 1.2}}\n")
    for verb, extra in (("report", ["--compare", "small"]), ("reprice", ["--prices", str(table)])):
        a = _json(capsys, verb, "-c", str(sqlite_cfg), "--db", str(db), "--format", "json", *extra)
        b = _json(capsys, verb, "-c", str(pg_cfg), "--format", "json", *extra)
        if verb == "report":
            _check_against_reference(b, rs)
            assert b["captured"] is None and b["feedback"] is None
            with psycopg.connect(BASE_DSN, autocommit=True) as conn:  # a report creates no tables
                assert conn.execute("SELECT to_regclass(%s)", (f"{pg_schema}.tierwise_capture",)).fetchone() == (None,)
            a.pop("captured"), b.pop("captured"), a.pop("feedback"), b.pop("feedback")
            a.pop("cannot"), b.pop("cannot")
        assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) or _close(a, b)


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        key = (lambda x: json.dumps(x.get("key", x.get("model")), default=str)) if a and isinstance(a[0], dict) \
            else None
        if key is not None:
            a, b = sorted(a, key=key), sorted(b, key=key)
        assert len(a) == len(b)
        return all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)
        return True
    assert a == b
    return True


@pytest.mark.slow
def test_report_on_200k_rows_is_fast(tmp_path: Path, cfg_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, rs = _ledger(tmp_path, 200_000, seed=9)
    t = time.perf_counter()
    doc = _json(capsys, "report", "-c", str(cfg_path), "--db", str(db), "--format", "json")
    took = time.perf_counter() - t
    assert doc["total"]["requests"] == 200_000
    _check_against_reference(doc, rs)
    assert took < 20, f"report over 200k rows took {took:.1f}s"


def test_served_tokens_by_id_agree_across_backends(tmp_path: Path, pg_schema: str) -> None:
    from tierwise.config.schema import LedgerConfig
    from tierwise.ledger import MemoryLedgerStore
    from tierwise.ledger.postgres import PostgresLedgerStore
    from tierwise.rollout.aggregate import served_by_ids

    db, rs = _ledger(tmp_path, 1200, seed=11)
    pg = PostgresLedgerStore(BASE_DSN, schema=pg_schema)
    pg.write_batch(rs)
    pg.close()
    mem = MemoryLedgerStore()
    mem.write_batch(rs)
    ids = [r["id"] for r in rs[::3]] + ["missing-id"]
    lite = served_by_ids(LedgerConfig(), None, ids, db)
    post = served_by_ids(LedgerConfig(backend="postgres", dsn=BASE_DSN, pg_schema=pg_schema), None, ids)
    memo = served_by_ids(LedgerConfig(backend="memory"), mem, ids)
    assert lite == post == memo and len(lite) == len(ids) - 1
    escalated = next(r for r in rs[::3] if r["escalations"])
    assert lite[escalated["id"]][0][0] == escalated["attempts"][-1]["usage"]["input_tokens"]
    assert lite[escalated["id"]][0][0] < escalated["input_tokens"]  # not the sum over the rungs
