"""Attribution end to end: principal, key id, customer, department, project and tags on every ledger record, from
static API keys, the X-Tierwise-Tags header and the OpenAI ``metadata`` field, through a real gateway over HTTP,
the in-process Router and the service; rejected requests attributed too; ``metadata`` kept from upstreams that
refuse it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import GatewayServer, config_for
from tests.schemas import validate
from tierwise import APIError, Router
from tierwise.governance import Principal
from tierwise.requests import MAX_TAGS, TAGS_HEADER, take_tags
from tierwise.routing.engine import RouteRequest
from tierwise.service import Tierwise

MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture
def keyed(upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GatewayServer]:
    monkeypatch.setenv("TW_ATTR_KEYS", "team-a:sk-aaa-111,team-b:sk-bbb-222")
    cfg = config_for(upstream.base_url, tmp_path)
    cfg.server.api_keys_env = "TW_ATTR_KEYS"
    gw = GatewayServer(cfg).start()
    yield gw
    gw.stop()


def attribution(row: dict) -> tuple:
    return row["principal"], row["key_id"], row["customer"], row["department"], row["project"], row["tags"]


# -- the gateway --------------------------------------------------------------------------------------------------


def test_every_record_is_attributed_to_its_key_and_tagged(keyed: GatewayServer, upstream: FakeUpstream) -> None:
    a = openai.OpenAI(base_url=keyed.base_url, api_key="sk-aaa-111", max_retries=0, timeout=20)
    b = openai.OpenAI(base_url=keyed.base_url, api_key="sk-bbb-222", max_retries=0, timeout=20)
    a.chat.completions.create(model="chat", messages=MSG,
                              extra_headers={TAGS_HEADER: "team=search, feature=summarise"})
    a.chat.completions.create(model="label", messages=MSG, metadata={"feature": "from-body", "env": "prod"},
                              extra_headers={TAGS_HEADER: "feature=from-header"})
    stream = b.chat.completions.create(model="chat", messages=MSG, stream=True, metadata={"team": "ads"})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    b.chat.completions.create(model="chat", messages=MSG)
    rows = keyed.rows()
    assert [attribution(r) for r in rows] == [
        ("team-a", "team-a", None, None, None, {"team": "search", "feature": "summarise"}),
        ("team-a", "team-a", None, None, None, {"feature": "from-header", "env": "prod"}),  # the header wins
        ("team-b", "team-b", None, None, None, {"team": "ads"}),
        ("team-b", "team-b", None, None, None, {}),
    ]
    assert [r["status"] for r in rows] == ["ok"] * 4 and rows[2]["stream"] is True
    # metadata is an annotation for tierwise here: OpenAI refuses it without store: true, so it is not sent upstream
    assert [("metadata" in r.body) for r in upstream.requests] == [False] * 4
    a.close()
    b.close()


def test_metadata_goes_upstream_untouched_when_the_caller_stores_completions(keyed: GatewayServer,
                                                                             upstream: FakeUpstream) -> None:
    r = httpx.post(keyed.base_url + "/chat/completions", headers={"Authorization": "Bearer sk-aaa-111"},
                   json={"model": "chat", "messages": MSG, "store": True, "metadata": {"run": "eval-7"}})
    assert r.status_code == 200
    assert upstream.last_request.body["metadata"] == {"run": "eval-7"} and upstream.last_request.body["store"] is True
    assert keyed.rows()[-1]["tags"] == {"run": "eval-7"}


@pytest.mark.parametrize(("headers", "body", "param", "words"), [
    ({TAGS_HEADER: "team"}, {}, TAGS_HEADER, "has no '='"),
    ({TAGS_HEADER: "team=a,team=b"}, {}, TAGS_HEADER, "twice"),
    ({TAGS_HEADER: "=x"}, {}, TAGS_HEADER, "empty key"),
    ({TAGS_HEADER: "k" * 65 + "=v"}, {}, TAGS_HEADER, "longer than 64"),
    ({TAGS_HEADER: "k=" + "v" * 513}, {}, TAGS_HEADER, "longer than 512"),
    ({TAGS_HEADER: ",".join(f"k{i}=v" for i in range(MAX_TAGS + 1))}, {}, TAGS_HEADER, "at most 16"),
    ({}, {"metadata": "team=search"}, "metadata", "must be an object"),
    ({}, {"metadata": {"n": 1}}, "metadata", "must be a string, got integer"),
    ({}, {"metadata": {f"k{i}": "v" for i in range(MAX_TAGS + 1)}}, "metadata", "at most 16"),
    ({TAGS_HEADER: "x=1"}, {"metadata": {f"k{i}": "v" for i in range(MAX_TAGS)}}, TAGS_HEADER, "together carry 17"),
])
def test_malformed_tags_are_a_400_naming_the_header_or_field_and_booked(
        keyed: GatewayServer, upstream: FakeUpstream, headers: dict, body: dict, param: str, words: str) -> None:
    r = httpx.post(keyed.base_url + "/chat/completions", json={"model": "chat", "messages": MSG, **body},
                   headers={"Authorization": "Bearer sk-bbb-222", **headers})
    assert r.status_code == 400, r.text
    validate(r.json(), "ErrorResponse")
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"] and err["type"] == "invalid_request_error"
    assert upstream.calls == 0
    (row,) = keyed.rows()
    assert (row["status"], row["http_status"], row["cost_usd"]) == ("rejected", 400, 0)
    assert attribution(row) == ("team-b", "team-b", None, None, None, {})  # whose request it was, still


def test_rejected_requests_are_attributed_and_tagged(keyed: GatewayServer) -> None:
    auth = {"Authorization": "Bearer sk-aaa-111", TAGS_HEADER: "team=search"}
    r = httpx.post(keyed.base_url + "/chat/completions", headers=auth,
                   json={"model": "no-such-model", "messages": MSG, "metadata": {"feature": "x"}})
    assert r.status_code == 404
    r = httpx.post(keyed.base_url + "/chat/completions", headers=auth, json={"model": "chat", "messages": []})
    assert r.status_code == 400
    r = httpx.post(keyed.base_url + "/chat/completions", headers={TAGS_HEADER: "team=search"},
                   json={"model": "chat", "messages": MSG})
    assert r.status_code == 401
    rows = keyed.rows()
    assert [(r["status"], r["http_status"]) for r in rows] == [("rejected", 404), ("rejected", 400), ("rejected", 401)]
    assert [attribution(r) for r in rows] == [
        ("team-a", "team-a", None, None, None, {"team": "search", "feature": "x"}),
        ("team-a", "team-a", None, None, None, {"team": "search"}),
        ("unauthenticated", None, None, None, None, {}),  # no key: nothing the caller says is taken
    ]


def test_tags_are_cleaned_before_they_reach_the_ledger(keyed: GatewayServer) -> None:
    r = httpx.post(keyed.base_url + "/chat/completions",
                   headers={"Authorization": "Bearer sk-aaa-111",
                            TAGS_HEADER: "équipe=recherche,raw=\xff".encode("utf-8", "surrogateescape")
                            .replace(b"\xc3\xbf", b"\xff")},  # UTF-8, and one byte that is not
                   json={"model": "chat", "messages": MSG, "metadata": {"k\u0000": "v\u202e\u0007x"}})
    assert r.status_code == 200, r.text
    assert keyed.rows()[-1]["tags"] == {"équipe": "recherche", "raw": "\ufffd", "k\ufffd": "v\u202e\ufffdx"}


# -- the service and the Router -----------------------------------------------------------------------------------


async def test_the_service_books_the_principals_customer_department_and_project(upstream: FakeUpstream,
                                                                                tmp_path: Path) -> None:
    svc = Tierwise(config_for(upstream.base_url, tmp_path))
    who = Principal("acme-search", key_id="key-7", customer="acme", department="search", project="summarise")
    try:
        route = RouteRequest(tags={"feature": "summarise"})
        call = await svc.begin({"model": "chat", "messages": MSG}, route, who)
        await svc.complete(call)
        svc.reject(APIError(404, "nope"), who, {"model": "x"}, RouteRequest(tags={"team": "t"}))
        svc.reject(APIError(400, "bad"), who, None, None)
        svc.ledger.flush()
        rows = list(svc.ledger.store.iter_rows())
    finally:
        await svc.aclose()
    assert [attribution(r) for r in rows] == [
        ("acme-search", "key-7", "acme", "search", "summarise", {"feature": "summarise"}),
        ("acme-search", "key-7", "acme", "search", "summarise", {"team": "t"}),
        ("acme-search", "key-7", "acme", "search", "summarise", {}),
    ]


def test_the_router_takes_tags_and_metadata(upstream: FakeUpstream, tmp_path: Path) -> None:
    with Router(config_for(upstream.base_url, tmp_path)) as router:
        router.complete(messages=MSG, model="chat", tags={"team": "search"}, metadata={"team": "x", "env": "dev"})
        router.complete(messages=MSG, model="chat", tags="team=ads")
        list(router.stream(messages=MSG, model="chat", metadata={"feature": "s"}))
        with pytest.raises(APIError) as ei:
            router.complete(messages=MSG, model="chat", tags={"team": 3})
        assert ei.value.status == 400 and ei.value.param == "tags"
        router.service.ledger.flush()
        rows = list(router.service.ledger.store.iter_rows())
    assert [(r["status"], r["tags"]) for r in rows] == [
        ("ok", {"team": "search", "env": "dev"}), ("ok", {"team": "ads"}), ("ok", {"feature": "s"}),
        ("rejected", {})]
    assert all("metadata" not in r.body for r in upstream.requests)


# -- take_tags ----------------------------------------------------------------------------------------------------


def test_take_tags_parses_merges_and_strips_metadata() -> None:
    assert take_tags({}) == {} and take_tags({}, "") == {} and take_tags({}, " , ") == {}
    assert take_tags({}, "a=1, b = two words ,c=x=y,") == {"a": "1", "b": "two words", "c": "x=y"}
    assert take_tags({}, "a=") == {"a": ""}
    assert take_tags({}, ["a=1", "b=2"]) == {"a": "1", "b": "2"}  # the header given twice
    body = {"metadata": {"a": "m", "b": "m"}, "messages": []}
    assert take_tags(body, "a=h") == {"a": "h", "b": "m"} and "metadata" not in body
    stored = {"metadata": {"a": "m"}, "store": True}
    assert take_tags(stored) == {"a": "m"} and stored["metadata"] == {"a": "m"}  # upstream stores it: kept
    assert take_tags({"metadata": None}) == {}
    assert take_tags({}, {"k": "v"}, where="tags") == {"k": "v"}
    limits = {"k" * 64: "v" * 512, **{f"k{i}": "" for i in range(MAX_TAGS - 1)}}
    assert take_tags({"metadata": dict(limits)}) == limits  # exactly at OpenAI's limits
    with pytest.raises(APIError) as ei:
        take_tags({}, {1: "v"}, where="tags")  # type: ignore[dict-item]
    assert ei.value.param == "tags"


async def test_revenue_is_booked_on_answered_requests_only_and_spend_shows_the_margin(
        upstream: FakeUpstream, tmp_path: Path) -> None:
    """A principal's revenue per request is on the row of each answered request; a failed or rejected one earns
    nothing; ``spend`` sums revenue and margin (revenue − cost) per customer in SQL."""
    from tierwise.ledger.spend import SpendQuery

    svc = Tierwise(config_for(upstream.base_url, tmp_path))
    paying = Principal("acme-app", key_id="key-1", customer="acme", revenue_per_request_usd=0.02)
    free = Principal("globex-app", key_id="key-2", customer="globex")
    try:
        for _ in range(3):
            await svc.complete(await svc.begin({"model": "label", "messages": MSG}, RouteRequest(), paying))
        await svc.complete(await svc.begin({"model": "label", "messages": MSG}, RouteRequest(), free))
        upstream.push_faults([{"kind": "http_error", "status": 400}])  # the caller's fault: no fallback, an error
        with pytest.raises(APIError):
            await svc.complete(await svc.begin({"model": "label", "messages": MSG}, RouteRequest(), paying))
        svc.reject(APIError(400, "bad"), paying, None, None)
        svc.ledger.flush()
        rows = list(svc.ledger.store.iter_rows())
        report = svc.ledger.store.spend(SpendQuery(("customer",)))
    finally:
        await svc.aclose()
    assert [(r["customer"], r["status"], r["revenue_usd"]) for r in rows] == [
        ("acme", "ok", 0.02), ("acme", "ok", 0.02), ("acme", "ok", 0.02), ("globex", "ok", None),
        ("acme", "error", None), ("acme", "rejected", None)]
    by = {g.group: g for g in report.groups}
    acme_cost = sum(r["cost_usd"] for r in rows if r["customer"] == "acme")
    assert acme_cost > 0
    assert by[("acme",)].revenue_usd == pytest.approx(0.06)
    assert by[("acme",)].margin_usd == pytest.approx(0.06 - acme_cost)
    assert by[("globex",)].revenue_usd == 0 and by[("globex",)].margin_usd == pytest.approx(-rows[3]["cost_usd"])
