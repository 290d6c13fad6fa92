"""CLI verbs of the rollout reports: ``tierwise report``, ``reprice``, ``whatif``, ``advise``, ``capture purge``.

Registered by :func:`add_parsers` from ``tierwise.cli``; each verb imports its machinery when it runs, so the CLI
stays light to start. Exit codes: 0 done, 1 the report ran but found a problem it names (advise: routing will not
pay is still 0), 2 bad input (unparsable price or policy file, unknown model, unreadable ledger).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tierwise.config.schema import TierwiseConfig
    from tierwise.rollout.report import Pricing, Report
    from tierwise.rollout.reprice import RepriceReport


def _fail(msg: str) -> SystemExit:
    print(f"tierwise: {msg}", file=sys.stderr)
    return SystemExit(2)


def _common(p: argparse.ArgumentParser, formats: bool = True) -> None:
    from tierwise.cli import _config_arg

    _config_arg(p)
    p.add_argument("--db", help="read this SQLite ledger file instead of the config's ledger")
    p.add_argument("--since", help="unix seconds or ISO-8601 (default: the beginning)")
    p.add_argument("--until", help="unix seconds or ISO-8601 (default: now)")
    if formats:
        p.add_argument("--format", choices=["table", "json", "csv"], default="table")
        p.add_argument("--output", "-o", help="write here, atomically (default: stdout)")


def _window(args: argparse.Namespace) -> tuple[float | None, float | None]:
    from tierwise.cli import _when

    since, until = _when(args.since), _when(args.until)
    if since is not None and until is not None and until < since:
        raise _fail("--until is before --since")
    return since, until


def _config(args: argparse.Namespace) -> TierwiseConfig:
    from tierwise.cli import _load

    return _load(args.config)


def _ledger_source(cfg: TierwiseConfig, args: argparse.Namespace) -> tuple[Path | None, Any]:
    """(SQLite file to read, or None for the config's backend; the memory store when that is the backend)."""
    if args.db:
        path = Path(args.db)
        if not path.exists():
            raise _fail(f"no ledger file at {path}")
        return path, None
    if cfg.ledger.backend == "memory":
        raise _fail("ledger backend 'memory' keeps nothing to report on once its gateway stops")
    if cfg.ledger.backend == "sqlite" and not Path(cfg.ledger.path).expanduser().exists():
        raise _fail(f"no ledger at {cfg.ledger.path} yet (nothing served with this config?)")
    return None, None


def _pricing(cfg: TierwiseConfig, args: argparse.Namespace) -> Pricing:
    from tierwise.rollout.pricefile import (
        PriceFileError,
        catalogue_prices,
        configured_prices,
        flagship_of,
        load_price_table,
    )
    from tierwise.rollout.report import Pricing

    prices = configured_prices(cfg)
    flagship = args.flagship or flagship_of(prices)
    if flagship not in prices:
        raise _fail(f"--flagship: unknown model '{flagship}'; configured: {', '.join(prices)}")
    pricing = Pricing(flagship, prices)
    tables: dict[str, Any] = {}
    for path in args.prices or []:
        try:
            tables[Path(path).name] = load_price_table(path)
        except PriceFileError as exc:
            raise _fail(str(exc)) from None
    if args.genai_prices:
        tables["genai-prices"] = catalogue_prices(cfg)
    for model in args.compare or []:
        found = prices.get(model) or next((t[model] for t in tables.values() if model in t), None)
        if found is None:
            raise _fail(f"--compare: no price for '{model}' (configure it, or give a --prices file that has it)")
        pricing.single[model] = found
    pricing.tables = tables
    return pricing


# -- report ------------------------------------------------------------------------------------------------------

def cmd_report(args: argparse.Namespace) -> int:
    from tierwise.rollout.aggregate import traffic
    from tierwise.rollout.render import csv_text, emit, json_text
    from tierwise.rollout.report import build_report, capture_coverage

    if args.canary:
        import importlib

        canary_report_text = getattr(importlib.import_module("tierwise.rollout.canary_report"),
                                     "canary_report_text", None)
        if canary_report_text is None:
            raise _fail("--canary: use 'tierwise canary report NAME'")
        cfg = _config(args)
        since, until = _window(args)
        try:
            text = canary_report_text(cfg, args.canary, since, until)
        except Exception as exc:  # no such canary, store unreadable: one line, no trace
            raise _fail(f"--canary: {exc}") from None
        emit(text, args.output)
        return 0
    cfg = _config(args)
    since, until = _window(args)
    db, _ = _ledger_source(cfg, args)
    pricing = _pricing(cfg, args)
    try:
        groups = traffic(cfg.ledger, None, since, until, db)
    except Exception as exc:
        raise _fail(f"cannot read the ledger: {exc}") from None
    rep = build_report(cfg, groups, pricing, since, until)
    capture_coverage(cfg, rep)
    if args.format == "json":
        text = json_text(rep.as_dict())
    elif args.format == "csv":
        text = csv_text([rep.total.as_dict(), *(ln.as_dict() for v in rep.views.values() for ln in v)])
    else:
        text = report_table(rep, args.top)
    emit(text, args.output)
    return 0


def report_table(rep: Report, top: int) -> str:
    from tierwise.rollout.render import pct, table, usd, when

    t = rep.total
    lines = [f"tierwise report  {when(rep.since)} .. {when(rep.until)}   flagship: {rep.flagship}",
             f"total: {t.requests:,} requests ({t.errors:,} errors, {t.rejected:,} refused), {t.tokens:,} tokens, "
             f"spent {usd(t.cost_usd)}, CPT {usd(t.cpt)}/1k tokens",
             f"on {rep.flagship} alone: {usd(t.flagship_usd)}; realised savings {usd(t.savings_usd)} "
             f"({pct(t.savings_share)})"]
    for label in rep.compare_labels:
        lines.append(f"on {label}: {usd(t.compare[label])} ({usd(t.compare[label] - t.cost_usd)} against spend)")
    if t.requests == 0:
        lines.append("(no requests in this window)")
    for view, rows in rep.views.items():
        if not rows:
            continue
        shown = rows[:top]
        headers = [view, "requests", "errors", "escal.", "tokens", "spend", "CPT/1k", f"on {rep.flagship}", "saved",
                   "saved %", *(f"on {k}" for k in rep.compare_labels)]
        body = [[ln.key if ln.key is not None else "(none)", f"{ln.requests:,}", f"{ln.errors:,}",
                 f"{ln.escalated:,}", f"{ln.tokens:,}", usd(ln.cost_usd), usd(ln.cpt), usd(ln.flagship_usd),
                 usd(ln.savings_usd), pct(ln.savings_share), *(usd(ln.compare[k]) for k in rep.compare_labels)]
                for ln in shown]
        lines += ["", f"by {view}" + (f" (top {top} of {len(rows)} by spend)" if len(rows) > top else ""),
                  table(headers, body)]
    lines.append("")
    lines.append(f"captured prompts in window: {'-' if rep.captured is None else rep.captured}; "
                 f"feedback: {'-' if rep.feedback is None else rep.feedback}")
    lines += ["", "notes:"] + [f"- {n}" for n in rep.notes]
    if rep.cannot:
        lines += ["", "what this report cannot do:"] + [f"- {c}" for c in rep.cannot]
    return "\n".join(lines) + "\n"


# -- reprice -----------------------------------------------------------------------------------------------------

def cmd_reprice(args: argparse.Namespace) -> int:
    from tierwise.rollout.aggregate import billed_by_model
    from tierwise.rollout.pricefile import PriceFileError, catalogue_prices, load_price_table
    from tierwise.rollout.render import csv_text, emit, json_text
    from tierwise.rollout.reprice import reprice

    if bool(args.prices) == bool(args.genai_prices):
        raise _fail("give one of --prices FILE or --genai-prices")
    cfg = _config(args)
    since, until = _window(args)
    db, _ = _ledger_source(cfg, args)
    if args.prices:
        try:
            table, source = load_price_table(args.prices), args.prices
        except PriceFileError as exc:
            raise _fail(str(exc)) from None
    else:
        import genai_prices

        table = catalogue_prices(cfg)
        source = f"genai-prices {getattr(genai_prices, '__version__', '')}".strip()
    try:
        billed = billed_by_model(cfg.ledger, None, since, until, db)
    except Exception as exc:
        raise _fail(f"cannot read the ledger: {exc}") from None
    rep = reprice(billed, table, source, since, until)
    if args.format == "json":
        text = json_text(rep.as_dict())
    elif args.format == "csv":
        text = csv_text([ln.as_dict() for ln in rep.lines])
    else:
        text = reprice_table(rep)
    emit(text, args.output)
    return 0


def reprice_table(rep: RepriceReport) -> str:
    from tierwise.rollout.render import pct, table, usd, when

    change = rep.new_usd - rep.booked_usd
    lines = [f"tierwise reprice  {when(rep.since)} .. {when(rep.until)}   prices: {rep.source}",
             f"booked {usd(rep.booked_usd)} -> {usd(rep.new_usd)} under the new prices "
             f"({'+' if change >= 0 else '-'}{usd(abs(change))}, "
             f"{pct(change / rep.booked_usd) if rep.booked_usd else '-'})", ""]
    body = [[ln.model or "(none)", f"{ln.calls:,}", f"{ln.tokens:,}", usd(ln.booked_usd), usd(ln.new_usd),
             usd(ln.change_usd), ln.price_source] for ln in rep.lines]
    lines.append(table(["model", "calls", "tokens", "booked", "new", "change", "price"], body) if body
                 else "(no billed calls in this window)")
    if rep.notes:
        lines += ["", "notes:"] + [f"- {n}" for n in rep.notes]
    return "\n".join(lines) + "\n"


# -- whatif -------------------------------------------------------------------------------------------------------

def cmd_whatif(args: argparse.Namespace) -> int:
    from tierwise.config.load import ConfigError, load_config
    from tierwise.rollout.capture import feedback_scores, iter_captured
    from tierwise.rollout.render import csv_text, emit, json_text
    from tierwise.rollout.whatif import EngineReplay, replay

    cfg = _config(args)
    since, until = _window(args)
    try:
        candidate = load_config(args.candidate)
    except ConfigError as exc:
        raise _fail(f"--candidate: {exc}") from None
    db, _ = _ledger_source(cfg, args)
    tiers = args.tier or None
    try:
        captures = list(iter_captured(cfg, since, until, tiers))
    except Exception as exc:
        raise _fail(f"cannot read captures: {exc}") from None
    if args.limit:
        captures = captures[-args.limit:]
    if not captures:
        raise _fail("no captured prompts in this window: what-if replay needs rollout.capture on "
                    "(tierwise report still works on tokens and costs)")
    outcomes = None
    if args.outcomes:
        from tierwise.lab.datasets.outcome_io import read_outcome_set

        try:
            outcomes = read_outcome_set(args.outcomes)
        except Exception as exc:
            raise _fail(f"--outcomes: {exc}") from None
    from tierwise.rollout.aggregate import served_by_ids

    try:
        ledger = served_by_ids(cfg.ledger, None, [c.request_id for c in captures], db)
    except Exception as exc:
        raise _fail(f"cannot read the ledger: {exc}") from None
    try:
        current, cand = EngineReplay(cfg), EngineReplay(candidate)
    except Exception as exc:
        raise _fail(f"cannot build the routing engine: {exc}") from None
    rep = replay(current, cand, captures, ledger, feedback_scores(cfg, None, None), outcomes)
    if args.format == "json":
        text = json_text(rep.as_dict())
    elif args.format == "csv":
        text = csv_text([{k: v for k, v in t.items() if not isinstance(v, dict)}
                         for t in [rep.total.as_dict(), *(x.as_dict() for x in rep.tiers.values())]])
    else:
        text = whatif_table(rep, args.candidate)
    emit(text, args.output)
    return 0


def whatif_table(rep: Any, candidate: str) -> str:
    from tierwise.rollout.render import table, usd

    def rng(lo: float, hi: float) -> str:
        return usd(lo) if abs(hi - lo) < 1e-12 else f"{usd(lo)}-{usd(hi)}"

    def q(d: dict[str, Any]) -> str:
        if d["quality_n"] == 0:
            return "-"
        return f"{d['quality_current']:.3f} -> {d['quality_candidate']:.3f} (n={d['quality_n']})"

    rows = []
    for line in [*rep.tiers.values(), rep.total]:
        d = line.as_dict()
        mix = ", ".join(f"{m} {n}" for m, n in line.candidate_models.most_common(3))
        rows.append([d["tier"], f"{d['requests']:,}", usd(d["served_usd"]),
                     rng(d["current_usd"], d["current_high_usd"]), rng(d["candidate_usd"], d["candidate_high_usd"]),
                     f"{d['changed']:,}", mix, q(d)])
    lines = [f"tierwise whatif  candidate: {candidate}", "",
             table(["tier", "requests", "served", "current (replayed)", "candidate", "re-routed", "candidate picks",
                    "quality current -> candidate"], rows), "", "notes:"] + [f"- {n}" for n in rep.notes]
    return "\n".join(lines) + "\n"


# -- advise -------------------------------------------------------------------------------------------------------

def cmd_advise(args: argparse.Namespace) -> int:
    import time

    from tierwise.rollout.advise import Thresholds, TrialFileError, advise, load_trial
    from tierwise.rollout.aggregate import first_ts, traffic
    from tierwise.rollout.pricefile import configured_prices, flagship_of
    from tierwise.rollout.render import emit, json_text

    cfg = _config(args)
    since, until = _window(args)
    now = time.time()
    since = since if since is not None else (until or now) - 30 * 86400
    db, _ = _ledger_source(cfg, args)
    trial = None
    if args.trial:
        try:
            trial = load_trial(args.trial)
        except TrialFileError as exc:
            raise _fail(str(exc)) from None
    prices = configured_prices(cfg)
    flagship = args.flagship or flagship_of(prices)
    if flagship not in prices:
        raise _fail(f"--flagship: unknown model '{flagship}'")
    try:
        groups = traffic(cfg.ledger, None, since, until, db)
        first = first_ts(cfg.ledger, since, until, db)
    except Exception as exc:
        raise _fail(f"cannot read the ledger: {exc}") from None
    end = until if until is not None else now
    days = max((end - max(since, first if first is not None else since)) / 86400, 1 / 24)
    th = Thresholds(min_requests=args.min_requests, engineering_usd_per_month=args.engineering_usd)
    adv = advise(cfg, groups, prices, flagship, days, trial, th)
    if args.format == "json":
        text = json_text(adv.as_dict())
    else:
        lines = [f"tierwise advise  (last {days:.1f} days of ledger)", "", adv.summary, ""]
        for v in adv.verdicts:
            lines.append(f"[{'NO ' if v.blocks else 'ok '}] {v.check}: {v.says}")
        text = "\n".join(lines) + "\n"
    emit(text, args.output)
    return 0


# -- capture purge -------------------------------------------------------------------------------------------------

def cmd_capture_purge(args: argparse.Namespace) -> int:
    from tierwise.rollout.capture import purge

    cfg = _config(args)
    try:
        n = purge(cfg, args.older_than)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    print(f"purged {n} capture(s)")
    return 0


def add_parsers(sub: Any) -> None:
    from tierwise.cli import _config_arg

    s = sub.add_parser("report", help="task mix, spend, CPT and counterfactual cost (flagship, other prices)")
    _common(s)
    s.add_argument("--flagship", help="the model 'everything on the flagship' means (default: the priciest)")
    s.add_argument("--compare", action="append", metavar="MODEL", help="also price all traffic on MODEL")
    s.add_argument("--prices", action="append", metavar="FILE", help="also price traffic under this price table")
    s.add_argument("--genai-prices", action="store_true", help="also price traffic at the genai-prices catalogue")
    s.add_argument("--top", type=int, default=20, help="rows per view in the table format (default 20)")
    s.add_argument("--canary", metavar="NAME", help="compare the arms of canary NAME instead")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("reprice", help="re-price logged traffic under a new price table")
    _common(s)
    s.add_argument("--prices", metavar="FILE", help="price table YAML: {model: {input, output, cache_read, ...}}")
    s.add_argument("--genai-prices", action="store_true", help="the installed genai-prices catalogue's prices")
    s.set_defaults(fn=cmd_reprice)

    s = sub.add_parser("whatif", help="replay captured prompts through the engine under a candidate config")
    _common(s)
    s.add_argument("--candidate", required=True, metavar="CONFIG",
                   help="a tierwise.yaml with the other policy, thresholds or router artifact")
    s.add_argument("--tier", action="append", help="only captures of this tier (repeatable)")
    s.add_argument("--outcomes", metavar="SET", help="outcome set of this traffic (tierwise trial): per-model quality")
    s.add_argument("--limit", type=int, default=0, help="only the newest N captures")
    s.set_defaults(fn=cmd_whatif)

    s = sub.add_parser("advise", help="will routing pay on this traffic? verdicts with their numbers")
    _common(s)
    s.set_defaults(format="table")
    for action in s._actions:  # advise has table and json only
        if action.dest == "format":
            action.choices = ["table", "json"]
    s.add_argument("--trial", metavar="FILE", help="trial results (JSON, see tierwise.rollout.advise)")
    s.add_argument("--flagship", help="default: the priciest configured model")
    s.add_argument("--min-requests", type=int, default=1000, help="fewer than this: too little to judge")
    s.add_argument("--engineering-usd", type=float, default=500.0,
                   help="what owning routing costs per month; a smaller saving ceiling says do not route")
    s.set_defaults(fn=cmd_advise)

    cap = sub.add_parser("capture", help="captured prompts").add_subparsers(dest="capture_cmd", required=True)
    s = cap.add_parser("purge", help="delete captures older than the retention")
    _config_arg(s)
    s.add_argument("--older-than", type=float, metavar="DAYS", help="default: rollout.capture.retention_days")
    s.set_defaults(fn=cmd_capture_purge)
