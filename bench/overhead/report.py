"""The markdown report: every cell is the median over rounds, with the [min–max] spread when there are several."""

from __future__ import annotations

from collections.abc import Sequence

from stats import added, max_sustained_rps, metric, scalar, spread

# Item 14 targets (without a local model loaded).
TARGET_ADDED_P50_MS = 1.0
TARGET_ADDED_P99_MS = 5.0
TARGET_RPS = 2000
TARGET_RSS_MB = 150


def cell(s: dict, fmt: str = "{:.3f}") -> str:
    if not s.get("n"):
        return "–"
    if s["n"] == 1 or s["min"] == s["max"]:
        return fmt.format(s["median"])
    return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}–{fmt.format(s['max'])}]"


def _latency_table(runs: list[dict], concs: Sequence[int]) -> list[str]:
    out = ["| clients | direct p50 | direct p99 | bare proxy p50 | bare proxy p99 | gateway p50 | gateway p99 "
           "| **added p50** (gw−direct) | **added p99** | bare added p50 | gw−bare p50 |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in concs:
        row = [str(c)]
        for t in ("direct", "bare", "gateway"):
            row += [cell(metric(runs, t, False, c, "latency", "p50")), cell(metric(runs, t, False, c, "latency", "p99"))]
        row += [f"**{cell(added(runs, 'gateway', 'direct', False, c, 'latency', 'p50'))}**",
                f"**{cell(added(runs, 'gateway', 'direct', False, c, 'latency', 'p99'))}**",
                cell(added(runs, "bare", "direct", False, c, "latency", "p50")),
                cell(added(runs, "gateway", "bare", False, c, "latency", "p50"))]
        out.append("| " + " | ".join(row) + " |")
    return out


def _ladder_table(runs: list[dict], concs: Sequence[int], stream: bool, key: str) -> list[str]:
    stats = ("min", "p10", "p50", "p90", "p99", "p99.9", "max")
    out = ["| target | clients | n | " + " | ".join(stats) + " |", "|---|---:|---:|" + "---:|" * len(stats)]
    for c in concs:
        for t in ("direct", "bare", "gateway"):
            n = scalar(runs, t, stream, c, "measured")
            out.append(f"| {t} | {c} | {cell(n, '{:.0f}')} | "
                       + " | ".join(cell(metric(runs, t, stream, c, key, s)) for s in stats) + " |")
    return out


def _throughput_table(runs: list[dict], concs: Sequence[int]) -> list[str]:
    out = ["| clients | direct RPS | bare proxy RPS | gateway RPS | gateway errors | gateway CPU µs/request "
           "| bare proxy CPU µs/request |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for c in concs:
        row = [str(c)] + [cell(scalar(runs, t, False, c, "rps"), "{:.0f}") for t in ("direct", "bare", "gateway")]
        row += [cell(scalar(runs, "gateway", False, c, "errors"), "{:.0f}"),
                cell(scalar(runs, "gateway", False, c, "server_cpu_us_per_req"), "{:.0f}"),
                cell(scalar(runs, "bare", False, c, "server_cpu_us_per_req"), "{:.0f}")]
        out.append("| " + " | ".join(row) + " |")
    return out


def _stream_table(runs: list[dict], concs: Sequence[int]) -> list[str]:
    out = ["| clients | direct TTFT p50 | bare TTFT p50 | gateway TTFT p50 | gateway TTFT p99 | **added TTFT p50** "
           "| **added TTFT p99** | added full-stream p50 | gateway streams/s | gateway errors |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in concs:
        row = [str(c), cell(metric(runs, "direct", True, c, "ttft", "p50")),
               cell(metric(runs, "bare", True, c, "ttft", "p50")),
               cell(metric(runs, "gateway", True, c, "ttft", "p50")),
               cell(metric(runs, "gateway", True, c, "ttft", "p99")),
               f"**{cell(added(runs, 'gateway', 'direct', True, c, 'ttft', 'p50'))}**",
               f"**{cell(added(runs, 'gateway', 'direct', True, c, 'ttft', 'p99'))}**",
               cell(added(runs, "gateway", "direct", True, c, "latency", "p50")),
               cell(scalar(runs, "gateway", True, c, "rps"), "{:.0f}"),
               cell(scalar(runs, "gateway", True, c, "errors"), "{:.0f}")]
        out.append("| " + " | ".join(row) + " |")
    return out


def _verdicts(runs: list[dict], meta: dict, concs: Sequence[int]) -> list[str]:
    a50 = added(runs, "gateway", "direct", False, 1, "latency", "p50")
    a99 = added(runs, "gateway", "direct", False, 1, "latency", "p99")
    rps = max_sustained_rps(runs, "gateway", concs)
    rss_mb = meta["rss_idle_kb"]["gateway"] / 1024
    rows = [
        ("added p50, 1 client", f"≤ {TARGET_ADDED_P50_MS} ms", cell(a50) + " ms", a50["median"] <= TARGET_ADDED_P50_MS),
        ("added p99, 1 client", f"≤ {TARGET_ADDED_P99_MS} ms", cell(a99) + " ms", a99["median"] <= TARGET_ADDED_P99_MS),
        ("max sustained RPS (ledger on, 0 errors)", f"≥ {TARGET_RPS}",
         f"{cell(rps, '{:.0f}')} at {rps['concurrency']} clients", rps["median"] >= TARGET_RPS),
        ("gateway RSS idle (after 1 request)", f"≤ {TARGET_RSS_MB} MB", f"{rss_mb:.0f} MB", rss_mb <= TARGET_RSS_MB),
        ("ledger: one row per request", "rows = requests", f"{meta['ledger']['rows']} rows / "
         f"{meta['ledger']['requests_sent']} requests", meta["ledger"]["pass"]),
    ]
    out = ["| target | goal | measured | |", "|---|---|---|---|"]
    out += [f"| {name} | {goal} | {got} | {'PASS' if ok else '**MISS**'} |" for name, goal, got, ok in rows]
    return out


def render(results: dict, concs: Sequence[int], stream_concs: Sequence[int]) -> str:
    meta, runs = results["meta"], results["runs"]
    m = meta["machine"]
    ext = spread([r["external_cores"] for r in runs])
    mb = {k: {n: v / 1024 for n, v in meta[k].items()} for k in ("rss_cold_kb", "rss_idle_kb", "rss_after_load_kb", "rss_peak_kb")}
    best = {t: max_sustained_rps(runs, t, concs) for t in ("direct", "bare", "gateway")}
    lines = [
        "# Gateway overhead: tierwise vs direct vs a bare aiohttp proxy",
        "",
        f"Command: `{meta['command']}` — {meta['started']}, git {meta['git']}, {meta['elapsed_s']:.0f} s.",
        f"Machine: {m['nproc']} cores, {m['cpu_model']}, {m['mem_total_mb']} MB, Python {m['python']}, "
        f"kernel {m['kernel']}. Load average before {meta['loadavg_before']}, after {meta['loadavg_after']}.",
        f"Noise: CPU used by other processes on the machine during the runs: median {ext['median']:.2f} cores, "
        f"max {ext['max']:.2f} cores (of {m['nproc']}).",
        "",
        f"Closed loop, HTTP/1.1 keep-alive, one connection per client, loopback. {meta['rounds']} round(s) per "
        f"setting, interleaved across targets; each = {meta['warmup_s']:g} s warm-up + {meta['duration_s']:g} s "
        "measured. Cells: median over rounds [min–max]; latencies in ms. Request: ~200-token prompt; "
        "answer: ~200 tokens (1.5 kB JSON, or a 42 kB SSE stream: role chunk, 171 content chunks, finish and usage "
        "chunks). Gateway: one model on an "
        "`openai`-format provider, `model: auto` → default tier, SQLite ledger on (one row per request), crash "
        f"journal {'off' if '--no-journal' in meta['command'] else 'on (two write()s per request, fsync never)'}"
        + ("; every request authenticated by a virtual key and admitted against a key, a customer and a global "
           "budget and rate limits (memory state backend)." if "--governance" in meta["command"] else "."),
        "",
        "## Targets (item 14)",
        "",
        *_verdicts(runs, meta, concs),
        "",
        "## Non-streaming latency and added latency",
        "",
        *_latency_table(runs, concs),
        "",
        "## Throughput (closed loop)",
        "",
        *_throughput_table(runs, concs),
        "",
        "Max sustained RPS (best closed-loop throughput with 0 errors): "
        + ", ".join(f"{t} {cell(best[t], '{:.0f}')} (at {best[t]['concurrency']} clients)" for t in best) + ".",
        "CPU µs/request = CPU time of the serving process during the run ÷ requests it served.",
        "",
        "## Streaming (SSE, `stream_options.include_usage`)",
        "",
        "TTFT = time until the first SSE event with non-empty `delta.content` arrived at the client. The mock sends "
        "the whole stream in one write, so this isolates what each hop adds.",
        "",
        *_stream_table(runs, stream_concs),
        "",
        "## Memory (VmRSS, MB)",
        "",
        "| process | cold (started, no request yet) | idle (after 1 request) | after load | peak (VmHWM) |",
        "|---|---:|---:|---:|---:|",
        *[f"| {n} | {mb['rss_cold_kb'][n]:.1f} | {mb['rss_idle_kb'][n]:.1f} | {mb['rss_after_load_kb'][n]:.1f} "
          f"| {mb['rss_peak_kb'][n]:.1f} |" for n in ("gateway", "bare", "mock")],
        "",
        f"Gateway start-up to first healthy `/healthz`: {meta['startup_s']:.2f} s; the first chat request after "
        f"that took {meta['first_request_ms']:.0f} ms (lazy initialisation; every later one is in the tables).",
        "",
        "## Ledger check (after SIGTERM)",
        "",
        f"{meta['ledger']['rows']} rows ({meta['ledger']['distinct_ids']} distinct ids) for "
        f"{meta['ledger']['requests_sent']} requests sent to the gateway ({meta['ledger']['requests_ok']} answered "
        f"200); rows by status: {meta['ledger']['by_status']} → {'PASS' if meta['ledger']['pass'] else 'FAIL'}. "
        f"Exit codes after SIGTERM: {meta['exit_codes']}.",
        "",
        "## Latency distributions, non-streaming (ms)",
        "",
        *_ladder_table(runs, concs, False, "latency"),
        "",
        "## TTFT distributions, streaming (ms)",
        "",
        *_ladder_table(runs, stream_concs, True, "ttft"),
        "",
    ]
    return "\n".join(lines)
