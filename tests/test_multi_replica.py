"""Three real `tierwise serve` processes on one Redis and one PostgreSQL, many virtual keys with tight budgets and
rate limits made with `tierwise keys create`, concurrent traffic across all replicas, then a replica SIGKILLed
mid-traffic (see ``tests/multi_replica.py`` for the cluster and how requests, upstream calls and rows are matched).

**The overspend bound, derived from what the gateway reserves.** For a request of tier ``label`` (one model,
``small``, which is also the fallback), the governor reserves ``small``'s price for the prompt tokens by the
tokenizer + the request's ``max_tokens`` (:meth:`tierwise.pricing.RequestEstimator.ceiling`; the test calls it on
each request's body with the replicas' config: :func:`tests.multi_replica.reservation`). Admission is one atomic
Lua script: a request is admitted only while, for every cap that governs it, settled + reserved < cap, and then
reserves against all of them. Take any cap and the last request L it admitted: every request admitted before L was
then either settled (its real cost is in *settled*) or in flight (its reservation is in *reserved*, and it settles
at a real cost ≤ its reservation). So the cap's final spend ≤ settled + reserved (at L's admission) + cost(L) <
cap + reservation(L) ≤ cap + the largest reservation — within the issue's bound "cap + the reservations in flight
when the cap was reached", and tighter. The mock upstream answers with all 300 ``max_tokens`` (and fewer prompt
tokens than the tokenizer counts), so the premise — real cost ≤ reservation, checked on every row — is tight; the
bound is checked on every cap: per key, principal, customer and department. Conversely a cap that refused a request
must have been spent to within one reservation of it (not falsely hit).

**The kill.** The victim principal's traffic goes only to the replica that is killed, so what Redis holds reserved
for it after the kill is exactly what that replica had in flight: at least the estimates of the requests the
journal replay then books ``interrupted`` (a request admitted but killed before its journal line, or ended with its
settlement still queued, also holds a reservation). After the TTL the next admit anywhere releases them all; after
``tierwise ledger recover`` the budgets' spend equals the ledger's again, per principal and customer.
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests import multi_replica as mr
from tests.multi_replica import Answer, Cluster, Traffic

_PROBLEM = mr.problem()
pytestmark = [pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or ""), pytest.mark.slow]

PRINCIPAL_DAILY, KEY_DAILY, CUSTOMER_DAILY, DEPARTMENT_DAILY = 0.0015, 0.0006, 0.004, 0.0035
CAPS = (f'"customer:*": {{daily_usd: {CUSTOMER_DAILY}}}, "department:*": {{daily_usd: {DEPARTMENT_DAILY}}}, '
        '"customer:survivors": {daily_usd: 1}, "customer:victimco": {daily_usd: 1}')  # the last two: kill test
DEPARTMENTS = ("search", "ads", "ml")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with mr.cluster(tmp_path_factory.mktemp("replicas"), CAPS) as c:
        yield c


@pytest.fixture(autouse=True)
def _fresh_upstream(cluster: Cluster) -> None:
    cluster.up.reset()
    cluster.up.set(completion_tokens=300, prompt_tokens=6)  # every answer uses max_tokens (300): cost ≈ reservation


def _ledger_matches(c: Cluster, answers: list[Answer], uids: set[str]) -> list[dict[str, Any]]:
    """Assert rows, answers and upstream calls agree for these requests; return their rows."""
    rows = [r for r in c.rows_for({a.uid for a in answers if a.request_id}) if r["tags"].get("rid") in uids]
    per_uid = Counter(r["tags"]["rid"] for r in rows)
    assert [u for u, n in per_uid.items() if n > 1] == [], "requests with more than one ledger row"
    by_uid = {r["tags"]["rid"]: r for r in rows}
    for a in answers:
        if a.request_id is None:  # no answer: the connection was refused or cut (a killed replica)
            continue
        row = by_uid.get(a.uid)
        assert row is not None, f"{a} has no ledger row"
        assert row["id"] == a.request_id, (a, row)
        if a.status == 200 and not a.complete:  # a stream cut off by a kill: its final line may not be written
            assert row["status"] in ("ok", "interrupted"), (a, row)
            continue
        assert row["http_status"] == a.status, (a, row)
        assert row["status"] == ("ok" if a.status == 200 else "rejected" if a.status in (401, 403, 429) else "error")
    calls = {u for u in mr.upstream_users(c.up) if u in uids}
    assert calls - set(by_uid) == set(), "upstream calls without a ledger row"
    return rows


def test_budgets_attribution_pins_and_ledger_across_three_replicas(cluster: Cluster) -> None:
    c = cluster
    since = time.time() - 1
    # `tierwise keys create`: a principal's first key creates it with its limits; a second key's flags are then
    # that key's own tighter cap (so the second ones wait for the first). Each call is a process: run side by side.
    principals = {f"p{i}": ("--customer", "acme" if i % 2 == 0 else "globex", "--department", DEPARTMENTS[i % 3],
                            "--daily-budget-usd", str(PRINCIPAL_DAILY)) for i in range(8)}
    with ThreadPoolExecutor(4) as pool:
        made = dict(zip([*principals, "sessions"], pool.map(lambda a: c.create_key(*a),
                        [(p, *flags) for p, flags in principals.items()] + [("sessions",)]), strict=True))
        made.update(zip([f"p{i}b" for i in range(4)], pool.map(
            lambda p: c.create_key(p, "--daily-budget-usd", str(KEY_DAILY)), [f"p{i}" for i in range(4)]),
            strict=True))
    _, pin_key = made.pop("sessions")
    keys: dict[str, tuple[str, str]] = made  # key name -> (id, key)

    # Session pins: each session's first request on one replica; a refused first choice pins six of them to small.
    sessions = {f"sess-{i}": ("small" if i < 6 else "large") for i in range(9)}
    first: list[Answer] = []
    for i, (s, want) in enumerate(sessions.items()):
        if want == "small":
            c.up.push_faults([{"kind": "http_error", "status": 401}])  # large refuses: small serves and is pinned
        with mr.httpx.Client(timeout=60) as client:
            first.append(mr.send(client, c, i % 3, pin_key, f"pin-first-{s}", tier="chat", session=s))
    assert [(a.status, a.model) for a in first] == [(200, w) for w in sessions.values()]
    assert c.pins(list(sessions)) == sessions  # shared before each answer left: no wait for a settlement

    c.up.set(latency_s=0.2)  # many requests in flight when a cap is reached
    t = Traffic(c)
    threads = [t.client(k, f"b-{name}", 15, offset=j) for name, (_, k) in keys.items() for j in range(2)]
    threads += [t.client(pin_key, f"pin-{s}", 6, offset=i + 1, tier="chat", session=s)
                for i, s in enumerate(sessions)]
    t.run(threads)
    answers = t.answers + first

    # every request answered, every answer booked once, every upstream call booked
    assert all(a.status is not None for a in answers), [a for a in answers if a.status is None][:3]
    assert Counter(a.status for a in answers).keys() <= {200, 429}, Counter(a.status for a in answers)
    rows = _ledger_matches(c, answers, {a.uid for a in answers})

    # pins honoured on every replica, under concurrent traffic
    for a in t.answers:
        if a.uid.startswith("pin-"):
            s = "-".join(a.uid.split("-")[1:3])
            assert (a.status, a.model) == (200, sessions[s]), a
    assert {a.replica for a in t.answers if a.uid.startswith("pin-")} == {0, 1, 2}

    # every key hit a budget; the 429 names it
    budget_refusals = [a for a in t.answers if a.status == 429]
    assert all(a.code == "budget_exceeded" and "reached" in a.message for a in budget_refusals)
    refused_names = {a.uid.split("-")[1] for a in budget_refusals}
    assert refused_names == set(keys), set(keys) - refused_names

    # the overspend bound on every cap (see the module docstring), and Redis's spend equals the ledger's
    admitted = [r for r in rows if r["status"] != "rejected" and r["principal"] != "sessions"]
    for r in admitted:
        r["reserved"] = mr.reservation(c, r["tags"]["rid"])
        assert r["cost_usd"] <= r["reserved"], r  # the premise: real cost ≤ reservation
    scopes: dict[str, tuple[float, list[dict[str, Any]]]] = defaultdict(lambda: (0.0, []))
    key_names = {kid: name for name, (kid, _) in keys.items()}
    for r in admitted:
        name = key_names[r["key_id"]]
        member = [(f"principal:{r['principal']}", PRINCIPAL_DAILY), (f"customer:{r['customer']}", CUSTOMER_DAILY),
                  (f"department:{r['department']}", DEPARTMENT_DAILY)]
        if name.endswith("b"):
            member.append((f"key:{r['key_id']}", KEY_DAILY))
        for scope, cap in member:
            scopes[scope] = (cap, [*scopes[scope][1], r])
    # 8 principals + 4 keys with caps + 2 customers + 3 departments; a key whose every request met a spent customer
    # budget has no row (its thread started late on a loaded machine), so not all need to appear
    assert len(scopes) >= 12 and {"customer:acme", "customer:globex"} <= set(scopes), sorted(scopes)
    # a budget that refused a request was really spent: not hit falsely (its reservations in flight then settled at
    # a real cost at most their prompt-estimate slack below what they reserved, a few millionths of a dollar)
    refusing = {m.group(1) for a in budget_refusals if (m := re.search(r"budget (\S+) daily", a.message))}
    assert refusing and refusing <= set(scopes), refusing
    for scope, (cap, its) in scopes.items():
        spent = sum(r["cost_usd"] for r in its)
        largest = max(r["reserved"] for r in its)
        assert spent < cap + largest + 1e-12, (scope, spent, cap, largest, len(its))
        if scope in refusing:
            assert spent > cap - largest, (scope, spent, cap, largest, len(its))
    usage = c.usage_once_released(list(scopes), 30)
    for scope, (_, its) in scopes.items():
        assert usage[scope].daily_reserved == 0, scope
        assert abs(usage[scope].daily_spent - sum(r["cost_usd"] for r in its)) <= 1e-9 * len(its), scope

    # attribution: `tierwise spend` (PostgreSQL's GROUP BY) per customer, department, key and principal
    window = [r for r in c.rows() if r["ts"] >= int(since)]
    total = sum(r["cost_usd"] for r in window)
    groupings = (("customer", "customer"), ("department", "department"), ("key", "key_id"), ("principal", "principal"))
    with ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(lambda g: c.spend(g[0], since), groupings))
    for (by, col), report in zip(groupings, reports, strict=True):
        assert report["total"]["requests"] == len(window)
        assert report["total"]["cost_usd"] == pytest.approx(total, abs=1e-12)
        assert sum(g["cost_usd"] for g in report["groups"]) == pytest.approx(total, abs=1e-12)
        assert sum(g["requests"] for g in report["groups"]) == len(window)
        expected: dict[Any, float] = defaultdict(float)
        for r in window:
            expected[r[col] or None] += r["cost_usd"]
        got = {g[by]: g["cost_usd"] for g in report["groups"]}
        assert got.keys() == expected.keys(), (by, got, dict(expected))
        for k, v in expected.items():
            assert got[k] == pytest.approx(v, abs=1e-12), (by, k)


def test_rate_limits_are_shared_by_three_replicas(cluster: Cluster) -> None:
    c = cluster
    _, k1 = c.create_key("limited", "--rpm", "10")
    _, k2 = c.create_key("limited")  # the principal's limit covers both of its keys
    if time.time() % 60 > 40:  # the sliding window counts part of the last minute: stay inside one minute
        time.sleep(61 - time.time() % 60)
    t = Traffic(c)
    t.run([t.client(k, "rl", 8, offset=j) for k in (k1, k2) for j in range(3)])
    statuses = Counter(a.status for a in t.answers)
    assert statuses == {200: 10, 429: 38}, statuses  # rpm 10 across three replicas: 10, not 30
    refused = [a for a in t.answers if a.status == 429]
    assert all(a.code == "rate_limit_exceeded" and "principal:limited: 10 requests per minute" in a.message
               for a in refused), refused[:2]
    _ledger_matches(c, t.answers, {a.uid for a in t.answers})


def test_a_replica_killed_mid_traffic(cluster: Cluster) -> None:
    c = cluster
    args = [(f"k{i}", "--customer", "survivors", "--daily-budget-usd", "0.05") for i in range(4)]
    args += [("victim", "--customer", "victimco", "--daily-budget-usd", "0.05"), ("poke",)]
    with ThreadPoolExecutor(3) as pool:
        made = {a[0]: key for a, (_, key) in zip(args, pool.map(lambda a: c.create_key(*a), args), strict=True)}
    victim = made.pop("victim")  # its traffic goes to the replica that is killed, and only there
    poke = made.pop("poke")  # no budget: its requests only run the admit script (which releases expired ones)
    keys = made
    scopes = [*(f"principal:{p}" for p in [*keys, "victim"]), "customer:survivors", "customer:victimco"]
    c.up.set(latency_s=0.3)
    t = Traffic(c)
    threads = [t.client(k, f"kill-{name}", None, offset=j) for name, k in keys.items() for j in range(2)]
    threads += [t.client(victim, "kill-victim", None, replicas=(2,)) for _ in range(4)]
    for th in threads:
        th.start()
    deadline = time.time() + 60
    while sum(a.complete for a in t.answers if a.replica == 2) < 8 and time.time() < deadline:
        time.sleep(0.1)
    t.down.add(2)  # clients stop choosing replica 2; what it has in flight dies with it
    c.kill(2)
    killed_at = time.time()
    while sum(a.complete and a.sent_at > killed_at for a in t.answers) < 20 and time.time() < deadline + 60:
        time.sleep(0.1)
    t.stop.set()
    for th in threads:
        th.join(120)
    assert not any(th.is_alive() for th in threads)
    after = [a for a in t.answers if a.sent_at > killed_at and a.replica != 2]
    assert len(after) >= 20 and all(a.status == 200 and a.complete for a in after)  # the others go on

    # the killed replica's reservations are held: the victim's (only the killed replica served it) exactly ...
    held = c.usage(scopes)
    victim_held = held["principal:victim"].daily_reserved
    assert victim_held > 0 and held["customer:victimco"].daily_reserved == pytest.approx(victim_held, abs=1e-12)
    assert c.metric(0, "tierwise_budget_reserved_usd", "customer:victimco") == pytest.approx(victim_held, abs=1e-9)
    # ... until their TTL passes; then the next admit anywhere releases them (a request from another key)
    deadline = time.time() + mr.RESERVATION_TTL_S + 60
    with mr.httpx.Client(timeout=60) as client:
        while any(u.daily_reserved for u in c.usage(scopes).values()) and time.time() < deadline:
            assert mr.send(client, c, 0, poke, t.uid("poke")).status == 200
            time.sleep(0.5)
    usage = c.usage(scopes)
    assert {s: u.daily_reserved for s, u in usage.items()} == dict.fromkeys(scopes, 0.0)
    assert c.metric(1, "tierwise_budget_reserved_usd", "customer:victimco") == 0.0

    # the killed replica's journal into the shared ledger, without starting it
    out = c.cli("ledger", "recover", replica=2)
    assert "interrupted request(s) booked at their estimate" in out and "settled on the shared state" in out, out
    rows = _ledger_matches(c, t.answers, {a.uid for a in t.answers})
    interrupted = [r for r in rows if r["status"] == "interrupted"]
    assert interrupted and all(r["cost_usd"] == r["estimated_cost_usd"] > 0 for r in interrupted)
    victim_interrupted = sum(r["estimated_cost_usd"] for r in interrupted if r["principal"] == "victim")
    # what the killed replica held for the victim covers each of its requests that never ended
    assert 0 < victim_interrupted <= victim_held + 1e-9
    assert all(a.replica == 2 for a in t.answers if a.request_id is None)  # only the killed replica's clients lost

    # the budgets charge what the ledger books: what the killed replica never settled reaches the shared state once
    spent: dict[str, float] = defaultdict(float)
    for r in rows:
        spent[f"principal:{r['principal']}"] += r["cost_usd"]
        spent[f"customer:{r['customer']}"] += r["cost_usd"]
    usage = c.usage(scopes)
    for s in scopes:
        assert usage[s].daily_spent == pytest.approx(spent[s], abs=1e-9 * len(rows)), s
    assert c.metric(0, "tierwise_budget_spent_usd", "customer:victimco") == pytest.approx(
        spent["customer:victimco"], abs=1e-9 * len(rows))
    assert "budgets:" not in c.cli("ledger", "recover", replica=2)  # nothing left to replay: no double charge
    again = c.usage(scopes)
    assert {s: u.daily_spent for s, u in again.items()} == {s: u.daily_spent for s, u in usage.items()}

    c.restart(2)  # back in service
    with mr.httpx.Client(timeout=60) as client:
        assert mr.send(client, c, 2, keys["k0"], t.uid("kill-back")).status == 200
    codes = c.stop_all()
    assert codes == {0: 0, 1: 0, 2: 0}
    for i in range(3):
        log = c.log(i).read_text()
        assert "Traceback" not in log and mr.procs.SECRET not in log
        assert all(k not in log for k in [*keys.values(), victim, poke])
