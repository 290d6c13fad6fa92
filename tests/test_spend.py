"""``tierwise spend``: sums per group from the store's own SQL (SQLite here; PostgreSQL in
tests/test_attribution_postgres.py), equal to the totals and to a plain Python sum over the rows; windows, UTC day and
month buckets, tags, several keys, the three formats, the CLI; and a gateway's attributed traffic summed back."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for
from tests.spend_data import MIDNIGHT, MONTH_END, ledger_rows, reference
from tierwise.cli import main
from tierwise.ledger import LedgerStore, MemoryLedgerStore, SQLiteLedgerStore
from tierwise.ledger.spend import METRICS, SpendQuery, SpendQueryError, SpendReport
from tierwise.ledger.spend_cli import parse_when

ROWS = ledger_rows()

BYS: list[tuple[tuple[str, ...], str | None]] = [
    (("customer",), None), (("department",), None), (("project",), None), (("tier",), None), (("model",), None),
    (("principal",), None), (("key",), None), (("day",), None), (("month",), None), (("tag",), "team"),
    (("tag",), None), (("customer", "model"), None), (("month", "tag", "department"), "feature"),
]


def approx(d: dict) -> dict:
    return {k: pytest.approx(v, rel=1e-9, abs=1e-12) if isinstance(v, float) else v for k, v in d.items()}


def check(report: SpendReport, by: tuple[str, ...], since: float | None, until: float | None,
          tag_key: str | None, rows: list[dict] = ROWS) -> None:
    """The report equals the plain sum over the rows, and its groups add up to its total."""
    groups, total = reference(rows, by, since, until, tag_key)
    got = {g.group: g.metrics() for g in report.groups}
    assert set(got) == set(groups)
    for key, metrics in groups.items():
        assert got[key] == approx(metrics), key
    assert report.total.metrics() == approx(total)
    if by != ("tag",) or tag_key is not None:  # every grouping but 'every tag pair' partitions the rows
        for name in METRICS:
            assert sum(g.metrics()[name] for g in report.groups) == pytest.approx(total[name], rel=1e-9, abs=1e-12)
    assert all(isinstance(v, int) for g in report.groups for k, v in g.metrics().items() if not k.endswith("_usd"))


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerStore]:
    s: LedgerStore = SQLiteLedgerStore(tmp_path / "l.db") if request.param == "sqlite" else MemoryLedgerStore()
    s.write_batch(ROWS)
    yield s
    s.close()


@pytest.mark.parametrize(("by", "tag_key"), BYS)
def test_spend_per_group_equals_the_totals_and_a_python_sum_over_the_rows(store: LedgerStore, by: tuple[str, ...],
                                                                          tag_key: str | None) -> None:
    for since, until in ((None, None), (MIDNIGHT, MONTH_END), (MIDNIGHT - 3600.5, MIDNIGHT + 7 * 3600.25)):
        check(store.spend(SpendQuery(by, since, until, tag_key)), by, since, until, tag_key)


def test_windows_are_half_open_and_day_and_month_buckets_are_utc(store: LedgerStore) -> None:
    edge = [r for r in ROWS if r["ts"] in (MONTH_END - 0.0004, float(MONTH_END))]
    assert len(edge) == 16
    report = store.spend(SpendQuery(("month", "day"), MONTH_END - 0.0004, MONTH_END + 1))
    assert [(g.group, g.requests) for g in report.groups] == [(("2026-11", "2026-11-30"), 8),
                                                              (("2026-12", "2026-12-01"), 8)]
    assert store.spend(SpendQuery(("day",), MONTH_END, MONTH_END)).total.requests == 0  # empty window
    assert store.spend(SpendQuery(("day",), float(MONTH_END), None)).groups[0].group == ("2026-12-01",)
    days = store.spend(SpendQuery(("day",))).groups
    assert [g.group[0] for g in days] == ["2026-11-29", "2026-11-30", "2026-12-01"]  # chronological


def test_groups_are_ordered_by_cost_and_unattributed_rows_form_their_own_group(store: LedgerStore) -> None:
    report = store.spend(SpendQuery(("customer",)))
    costs = [g.cost_usd for g in report.groups]
    assert costs == sorted(costs, reverse=True)
    assert (None,) in {g.group for g in report.groups}
    share = report.total.estimated_share
    assert 0 < share < 1 and share == pytest.approx(report.total.estimated_usd / report.total.cost_usd)


def test_bad_queries_are_refused() -> None:
    for kw in ({"by": ()}, {"by": ("nope",)}, {"by": ("day", "day")}, {"by": ("model",), "tag_key": "team"},
               {"by": ("tag",), "tag_key": ""}, {"by": ("day",), "since": 2.0, "until": 1.0}):
        with pytest.raises(SpendQueryError):
            SpendQuery(**kw)  # type: ignore[arg-type]


def test_times_parse_as_utc() -> None:
    now = 1_800_000_000.0
    assert parse_when("2026-11-30", now) == MIDNIGHT
    assert parse_when("2026-11-30T00:00", now) == parse_when("2026-11-30T01:00+01:00", now) == MIDNIGHT
    assert parse_when("2026-12", now) == MONTH_END
    assert parse_when(str(MIDNIGHT), now) == MIDNIGHT
    assert parse_when("7d", now) == now - 7 * 86400 and parse_when("90m", now) == now - 5400
    assert parse_when("now", now) == now
    with pytest.raises(ValueError, match="not a time"):
        parse_when("last tuesday", now)


# -- the CLI -------------------------------------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    s = SQLiteLedgerStore(path)
    s.write_batch(ROWS)
    s.close()
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["spend", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_json_csv_and_table_agree_with_the_rows(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    window = ["--since", "2026-11-30", "--until", "2026-12-01T12:00"]
    since, until = float(MIDNIGHT), MONTH_END + 12 * 3600.0
    rc, out, _ = run(capsys, "--db", str(db), "--by", "customer", "--by", "model", *window, "--format", "json")
    assert rc == 0
    doc = json.loads(out)
    assert (doc["since"], doc["until"], doc["by"], doc["tag"]) == (
        "2026-11-30T00:00:00Z", "2026-12-01T12:00:00Z", ["customer", "model"], None)
    assert (doc["since_ts"], doc["until_ts"]) == (since, until)
    assert doc["columns"] == ["customer", "model", *METRICS, "estimated_share"]
    groups, total = reference(ROWS, ("customer", "model"), since, until)
    assert {(g["customer"], g["model"]): {k: g[k] for k in METRICS} for g in doc["groups"]} == {
        k: approx(v) for k, v in groups.items()}
    assert {k: doc["total"][k] for k in METRICS} == approx(total)

    rc, out, _ = run(capsys, "--db", str(db), "--by", "customer", *window, "--format", "csv")
    lines = list(csv.reader(io.StringIO(out)))
    assert lines[0] == ["kind", "since", "until", "customer", *METRICS, "estimated_share"]
    assert [line[0] for line in lines[1:]] == ["group"] * (len(lines) - 2) + ["total"]
    assert all(line[1:3] == ["2026-11-30T00:00:00Z", "2026-12-01T12:00:00Z"] for line in lines[1:])
    by_customer, total = reference(ROWS, ("customer",), since, until)
    cost_at = lines[0].index("cost_usd")
    cells = {line[3]: float(line[cost_at]) for line in lines[1:-1]}
    assert cells == approx({("" if k is None else "'" + k if k.startswith("=") else k): v["cost_usd"]
                            for (k,), v in by_customer.items()})  # a formula-like name is made inert
    assert float(lines[-1][cost_at]) == pytest.approx(total["cost_usd"], rel=1e-12)
    assert int(lines[-1][lines[0].index("requests")]) == total["requests"]

    rc, out, _ = run(capsys, "--db", str(db), "--by", "tag", "--tag", "team", *window)
    assert rc == 0 and out.splitlines()[0].startswith("spend 2026-11-30T00:00:00Z .. 2026-12-01T12:00:00Z by tag:team")
    assert "x=y, z" in out and "(none)" in out and out.splitlines()[-1].startswith("TOTAL")
    assert f"{total['requests']:,}" in out.splitlines()[-1]
    rc, out, _ = run(capsys, "--db", str(db), "--by", "tag", *window)
    assert "team=search" in out and "add up to more than the total" in out


def test_cli_writes_a_file_and_refuses_bad_arguments(db: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "november.csv"
    rc, out, _ = run(capsys, "--db", str(db), "--by", "month", "--since", "2026-11", "--until", "2026-12",
                     "--format", "csv", "-o", str(out_file))
    assert rc == 0 and out == ""
    lines = list(csv.DictReader(out_file.open()))
    assert [(r["kind"], r["month"]) for r in lines] == [("group", "2026-11"), ("total", "")]
    assert lines[0]["cost_usd"] == lines[1]["cost_usd"]
    for bad, words in ((["--by", "model", "--tag", "team", "--since", "1d"], "only makes sense"),
                       (["--by", "model", "--since", "yesterday-ish"], "not a time"),
                       (["--by", "model", "--since", "2026-12", "--until", "2026-11"], "ends before it starts")):
        rc, _, err = run(capsys, "--db", str(db), *bad)
        assert rc == 2 and words in err
    with pytest.raises(SystemExit):
        main(["spend", "--db", str(db), "--by", "weekday", "--since", "1d"])
    assert "invalid choice" in capsys.readouterr().err


def test_cli_in_a_subprocess_with_a_config(db: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "tierwise.yaml"
    cfg.write_text(f"""
ledger: {{path: "{db}"}}
providers: {{up: {{format: openai, base_url: "http://127.0.0.1:9/v1", api_key: k}}}}
models: {{m: {{provider: up, price: {{input: 1, output: 1}}}}}}
tiers: {{chat: {{models: [m]}}}}
default_tier: chat
fallback_model: m
""")
    r = subprocess.run([sys.executable, "-m", "tierwise.cli", "spend", "-c", str(cfg), "--by", "day", "--since",
                        "2026-11-29", "--format", "json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [g["day"] for g in doc["groups"]] == ["2026-11-29", "2026-11-30", "2026-12-01"]
    assert doc["total"]["requests"] == len(ROWS)


# -- attribution summed back ---------------------------------------------------------------------------------------


@pytest.fixture
def keyed(upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GatewayServer]:
    monkeypatch.setenv("TW_SPEND_KEYS", "team-a:sk-aaa-111,team-b:sk-bbb-222")
    cfg = config_for(upstream.base_url, tmp_path)
    cfg.server.api_keys_env = "TW_SPEND_KEYS"
    gw = GatewayServer(cfg).start()
    yield gw
    gw.stop()


def test_a_gateways_attributed_traffic_sums_back_per_key_and_tag(keyed: GatewayServer, upstream: FakeUpstream,
                                                                 tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    upstream.set(prompt_tokens=120, completion_tokens=30)
    sent = [("sk-aaa-111", "team=search", "chat"), ("sk-aaa-111", "team=ads", "label"),
            ("sk-bbb-222", "team=search", "chat"), ("sk-bbb-222", "", "nope"), ("sk-aaa-111", "team=ads", "chat")]
    for key, tags, model in sent:
        httpx.post(keyed.base_url + "/chat/completions", json={"model": model, "messages": [
            {"role": "user", "content": "hi"}]}, headers={"Authorization": f"Bearer {key}", "X-Tierwise-Tags": tags})
    rows = keyed.rows()
    rc, out, _ = run(capsys, "--db", str(tmp_path / "ledger.db"), "--by", "key", "--by", "tag", "--tag", "team",
                     "--since", "1h", "--format", "json")
    assert rc == 0
    doc = json.loads(out)
    got = {(g["key"], g["tag"]): (g["requests"], g["rejected"], g["input_tokens"], g["cost_usd"])
           for g in doc["groups"]}
    want: dict = {}
    for r in rows:
        k = (r["key_id"], r["tags"].get("team"))
        n, rej, tok, cost = want.get(k, (0, 0, 0, 0.0))
        want[k] = (n + 1, rej + (r["status"] == "rejected"), tok + r["input_tokens"], cost + r["cost_usd"])
    assert got == {k: (n, rej, tok, pytest.approx(c, rel=1e-12)) for k, (n, rej, tok, c) in want.items()}
    assert got[("team-b", None)][:2] == (1, 1) and got[("team-a", "ads")][0] == 2
    assert doc["total"]["requests"] == 5 and doc["total"]["cost_usd"] == pytest.approx(
        sum(r["cost_usd"] for r in rows), rel=1e-12) and doc["total"]["cost_usd"] > 0
