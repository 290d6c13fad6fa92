"""The markdown of ``scale.py``: a summary row per setup, targets, worker scaling, and per-setting detail.

Every cell is the median over rounds with the [min–max] spread (see ``stats.py``); ratios and added latencies are
paired per round (gateway and its reference measured seconds apart in the same block).
"""

from __future__ import annotations

import sys
from pathlib import Path

from report import cell
from stats import added, max_sustained_rps, metric, scalar, spread

TARGET_ADDED_P50_MS = 2.0  # issue 9 item 10, keys + budgets + rate limits on, one client
TARGET_CPU_RATIO = 3.0  # gateway CPU per request at max throughput ÷ the bare proxy's, same run
TARGET_RPS = 2000  # with the ledger on


def _paired(runs: list[dict], key: str, conc: int, fn) -> dict:  # type: ignore[no-untyped-def]
    gw = {r["round"]: r for r in runs if r["target"] == "gateway" and r["concurrency"] == conc}
    bare = {r["round"]: r for r in runs if r["target"] == "bare" and r["concurrency"] == conc}
    return spread([fn(gw[k][key], bare[k][key]) for k in gw if k in bare])


def summary(s: dict, concs: list[int]) -> dict:
    """The numbers of one setup the summary, the targets and the README show."""
    runs = s["runs"]
    best = max_sustained_rps(runs, "gateway", concs)
    c = best.get("concurrency") or max(concs)
    out = {
        "added_p50": added(runs, "gateway", "direct", False, 1, "latency", "p50"),
        "added_p99": added(runs, "gateway", "direct", False, 1, "latency", "p99"),
        "rps": best, "at": c,
        "bare_rps": max_sustained_rps(runs, "bare", concs),
        "cpu": scalar(runs, "gateway", False, c, "server_cpu_us_per_req"),
        "bare_cpu": scalar(runs, "bare", False, c, "server_cpu_us_per_req"),
        "ratio": _paired(runs, "server_cpu_us_per_req", c, lambda g, b: g / b if b else float("nan")),
    }
    if s["shared"]:
        out["redis_1"] = scalar(runs, "gateway", False, 1, "redis_round_trips_per_req")
        out["redis_max"] = scalar(runs, "gateway", False, c, "redis_round_trips_per_req")
        out["redis_cpu"] = scalar(runs, "gateway", False, c, "redis_cpu_us_per_req")
        out["pg_cpu"] = scalar(runs, "gateway", False, c, "postgres_cpu_us_per_req")
    return out


def _ledger(s: dict) -> str:
    lg = s["ledger"]
    return f"{lg['rows']:,} / {lg['requests_sent']:,} {'✓' if lg['pass'] else '✗ FAIL'}"


def summary_table(data: dict) -> list[str]:
    concs = data["meta"]["concurrency"]
    out = ["| setup | gateway processes | added p50, 1 client | added p99, 1 client | max RPS (clients) | "
           "gateway CPU µs/req at max RPS | bare proxy CPU µs/req | **ratio** | Redis round trips/req (1 client; "
           "max RPS) | Redis / PostgreSQL CPU µs/req | ledger rows / requests |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in data["setups"]:
        m = summary(s, concs)
        procs = s["replicas"] * s["workers"]
        redis = (f"{cell(m['redis_1'], '{:.2f}')}; {cell(m['redis_max'], '{:.2f}')}" if s["shared"] else "–")
        servers = (f"{cell(m['redis_cpu'], '{:.0f}')} / {cell(m['pg_cpu'], '{:.0f}')}" if s["shared"] else "–")
        out.append(f"| {s['label']} | {procs} | {cell(m['added_p50'])} ms | {cell(m['added_p99'])} ms | "
                   f"{cell(m['rps'], '{:,.0f}')} ({m['at']}) | {cell(m['cpu'], '{:.0f}')} | "
                   f"{cell(m['bare_cpu'], '{:.0f}')} | **{cell(m['ratio'], '{:.2f}')}×** | {redis} | {servers} | "
                   f"{_ledger(s)} |")
    return out


def _targets(data: dict) -> list[str]:
    concs = data["meta"]["concurrency"]
    out = ["| setup | added p50 ≤ 2 ms (1 client) | CPU ≤ 3× bare proxy (max RPS) | ≥ 2,000 RPS (ledger on) "
           "| Redis round trips ≤ 2 per request |", "|---|---|---|---|---|"]
    for s in data["setups"]:
        m = summary(s, concs)

        def verdict(ok: bool) -> str:
            return "PASS" if ok else "**MISS**"

        out.append(f"| {s['name']} | {verdict(m['added_p50']['median'] <= TARGET_ADDED_P50_MS)} "
                   f"({cell(m['added_p50'])} ms) | {verdict(m['ratio']['median'] <= TARGET_CPU_RATIO)} "
                   f"({cell(m['ratio'], '{:.2f}')}×) | {verdict(m['rps']['median'] >= TARGET_RPS)} "
                   f"({cell(m['rps'], '{:,.0f}')}) | "
                   + (f"{verdict(round(max(m['redis_1']['median'], m['redis_max']['median']), 2) <= 2.0)} "
                      f"({cell(m['redis_1'], '{:.2f}')}; {cell(m['redis_max'], '{:.2f}')}) |" if s["shared"] else "– |"))
    return out


def _scaling(data: dict) -> list[str]:
    concs = data["meta"]["concurrency"]
    by = {s["name"]: summary(s, concs) for s in data["setups"]}
    if "redis-pg-w1" not in by or "redis-pg-w2" not in by:
        return []
    one, two = by["redis-pg-w1"]["rps"]["median"], by["redis-pg-w2"]["rps"]["median"]
    line = (f"`--workers 2` vs `--workers 1` on Redis + PostgreSQL: {two:,.0f} vs {one:,.0f} RPS = "
            f"**{two / one:.2f}×**" if one else "–")
    if "redis-pg-x3" in by:
        line += f"; 3 replicas: {by['redis-pg-x3']['rps']['median']:,.0f} RPS"
    return [line + f". The machine has {data['meta']['machine']['nproc']} cores, shared by the gateway processes, "
            "the mock upstream, the load generator, Redis and PostgreSQL, so more processes than cores add "
            "contention, not throughput."]


def _detail(s: dict, concs: list[int]) -> list[str]:
    runs = s["runs"]
    out = [f"### {s['label']}", "",
           "| clients | direct p50 / p99 | bare p50 / p99 | gateway p50 / p99 | **added p50 / p99** | direct RPS | "
           "bare RPS | gateway RPS | gateway errors | gateway CPU µs/req | bare CPU µs/req | CPU ratio |"
           + (" Redis round trips/req | of which EVALSHA | commands Redis ran/req |" if s["shared"] else ""),
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if s["shared"] else "")]
    for c in concs:
        row = [str(c)]
        for t in ("direct", "bare", "gateway"):
            row.append(f"{cell(metric(runs, t, False, c, 'latency', 'p50'))} / "
                       f"{cell(metric(runs, t, False, c, 'latency', 'p99'))}")
        row.append(f"**{cell(added(runs, 'gateway', 'direct', False, c, 'latency', 'p50'))} / "
                   f"{cell(added(runs, 'gateway', 'direct', False, c, 'latency', 'p99'))}**")
        row += [cell(scalar(runs, t, False, c, "rps"), "{:,.0f}") for t in ("direct", "bare", "gateway")]
        row += [cell(scalar(runs, "gateway", False, c, "errors"), "{:.0f}"),
                cell(scalar(runs, "gateway", False, c, "server_cpu_us_per_req"), "{:.0f}"),
                cell(scalar(runs, "bare", False, c, "server_cpu_us_per_req"), "{:.0f}"),
                cell(_paired(runs, "server_cpu_us_per_req", c, lambda g, b: g / b if b else float("nan")),
                     "{:.2f}")]
        if s["shared"]:
            row += [cell(scalar(runs, "gateway", False, c, key), "{:.2f}")
                    for key in ("redis_round_trips_per_req", "redis_evalsha_per_req", "redis_commands_per_req")]
        out.append("| " + " | ".join(row) + " |")
    ext = spread([r["external_cores"] for r in runs])
    out += ["", f"Start-up of all gateway processes {s['startup_s']:.1f} s; exit codes after SIGTERM "
            f"{s['exit_codes']}; ledger {_ledger(s)} (by status {s['ledger']['by_status']}); CPU other processes "
            f"used during the runs: median {ext['median']:.2f} cores, max {ext['max']:.2f}.", ""]
    return out


def header(data: dict) -> list[str]:
    m = data["meta"]
    mc = m["machine"]
    return [f"Command: `{m['command']}` — {m['started']}, git {m['git']}, {m['elapsed_s']:.0f} s. Machine: "
            f"{mc['nproc']} cores, {mc['cpu_model']}, {mc['mem_total_mb']} MB, Python {mc['python']}, kernel "
            f"{mc['kernel']}; Redis {m.get('redis_version', '–')} ({m.get('redis', 'not used')}), PostgreSQL on "
            f"loopback. Load average before {m['loadavg_before']}, after {m['loadavg_after']}. {m['rounds']} "
            f"round(s); each run {m['warmup_s']:g} s warm-up + {m['duration_s']:g} s measured, closed loop, one "
            "keep-alive connection per client."
            + (f" **The machine was busy** (load average {max(m['loadavg_before'][0], m['loadavg_after'][0]):g} on "
               f"{mc['nproc']} cores: other sessions' work): latency and throughput here measure that contention "
               "more than the gateway; CPU per request and its ratio to the bare proxy's hold up better; re-run on a "
               "quiet machine." if max(m["loadavg_before"][0], m["loadavg_after"][0]) > mc["nproc"] else "")]


def render(data: dict) -> str:
    concs = data["meta"]["concurrency"]
    lines = ["# Gateway overhead at scale: keys + budgets + rate limits on, SQLite default and Redis + PostgreSQL",
             "", *header(data), "",
             "Every setup: virtual key required on every request (made with `tierwise keys create`), a key budget, a "
             "customer cap, a global cap and rate limits (none reached), crash journal on, one model behind a mock "
             "upstream; each request's user message differs (a ticket number), the system prompt is shared. "
             "*Added* = gateway − direct to the mock, paired per round. *CPU µs/req* = CPU time of every gateway "
             "process (replicas, workers) during a run ÷ requests it served; the bare aiohttp proxy "
             "(`bare_proxy.py`) is measured in the same block. *Redis round trips/req* = commands the gateways sent "
             "to the run's private Redis ÷ requests, from `INFO commandstats` deltas less the commands tierwise's "
             "Lua scripts run inside Redis (those are counted too, as *commands Redis ran*); target ≤ 2. "
             "Redis and PostgreSQL CPU are "
             "their server processes' (PostgreSQL: every `postgres` process on the machine).", "",
             "## Summary", "", *summary_table(data), "", "## Targets (issue 9, item 10)", "", *_targets(data), ""]
    scaling = _scaling(data)
    if scaling:
        lines += ["## Scaling with processes", "", *scaling, ""]
    lines += ["## Detail (latencies in ms)", ""]
    for s in data["setups"]:
        lines += _detail(s, concs)
    return "\n".join(lines) + "\n"


def update_readme(path: Path, data: dict, results_file: str) -> None:
    """Replace the block between the README's scale markers with this run's summary table."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/: the README-block helper
    from readme_block import replace_block

    replace_block(path, "scale", ["", *header(data), f"Full report: `{results_file}`.", "", *summary_table(data), "",
                                  *_scaling(data), ""])
