"""``tierwise`` command line: serve | check-config | ledger tail/export/recover | spend | price | lab verbs."""

from __future__ import annotations

import os

# numpy's OpenBLAS spins extra threads that collapse on 2 cores next to the embedder and the event loop: pin it to
# one thread before anything imports numpy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time
from pathlib import Path  # noqa: E402

from tierwise.config.load import ConfigError, load_config
from tierwise.config.schema import TierwiseConfig

DEFAULT_CONFIG = "tierwise.yaml"


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", "-c", default=os.environ.get("TIERWISE_CONFIG", DEFAULT_CONFIG),
        help="path to tierwise.yaml (default: $TIERWISE_CONFIG or ./tierwise.yaml)",
    )


def _load(path: str) -> TierwiseConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(2) from None


def _when(value: str | None) -> float | None:
    """Accept unix seconds or an ISO-8601 date/time."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    from datetime import datetime

    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise SystemExit(f"not a time: {value!r} (use unix seconds or ISO-8601, e.g. 2026-11-25T10:00)") from None
    return dt.timestamp()


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def cmd_serve(args: argparse.Namespace) -> int:
    from tierwise.config.load import config_error
    from tierwise.gateway.server import serve
    from tierwise.gateway.startup import StartupError, check_startup

    cfg = _load(args.config)
    startup = check_startup(cfg)  # the very checks check-config runs: a config it passes is one serve accepts
    if startup.problems:
        print(f"tierwise: refusing to start: {config_error(args.config, startup.problems)}", file=sys.stderr)
        return 2
    if args.workers > 1 and args.worker is None:  # the supervisor: N copies of this command share the port
        from tierwise.gateway.server import serve_workers, workers_problem

        problem = workers_problem(cfg, args.workers)
        if problem is not None:
            print(f"tierwise: refusing to start: {problem}", file=sys.stderr)
            return 2
        argv = [sys.executable, "-m", "tierwise.cli", "--log-level", args.log_level, "serve", "--config", args.config]
        from tierwise.telemetry.multiproc import workers_metrics_dir

        with workers_metrics_dir(cfg):  # one /metrics summing every worker's (PROMETHEUS_MULTIPROC_DIR)
            return serve_workers(argv, args.workers, args.host or cfg.server.host,
                                 cfg.server.port if args.port is None else args.port)
    worker = None
    if args.worker is not None:
        index, count = (int(x) for x in args.worker.split("/"))
        worker = (index, count)
    try:
        serve(cfg, args.host, args.port, startup=startup, source=args.config, worker=worker)
    except StartupError as exc:
        print(f"tierwise: cannot start: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # interrupted while still starting (loading models)
        return 130
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """Everything serve checks before it listens (see tierwise.gateway.startup.check_startup), nothing started."""
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    from tierwise.config.load import config_error
    from tierwise.gateway.startup import check_startup
    from tierwise.pricing import PriceBook

    startup = check_startup(cfg)
    if startup.problems:
        print(str(config_error(args.config, startup.problems)), file=sys.stderr)
        return 1
    book = PriceBook(cfg)
    print(f"{args.config}: OK — {len(cfg.providers)} provider(s), {len(cfg.models)} model(s), "
          f"{len(cfg.tiers)} tier(s); default tier '{cfg.default_tier}', fallback model '{cfg.fallback_model}'")
    print(f"{'model':<28} {'source':<13} {'in $/1M':>9} {'out $/1M':>9} {'cache rd':>9} {'cache wr':>9}")
    for name, p in book.prices.items():
        print(f"{name:<28} {p.source:<13} {p.input:>9.4f} {p.output:>9.4f} {p.cache_read:>9.4f} {p.cache_write:>9.4f}")
    for tname, t in cfg.tiers.items():
        fb = t.fallback or cfg.fallback_model
        print(f"tier {tname}: policy={t.policy} models={t.models} fallback={fb}")
    return _check_overlaps(cfg)


def _check_overlaps(cfg: TierwiseConfig) -> int:
    """Tier descriptions/utterances too alike to separate: a problem when the semantic classifier routes ``auto``
    traffic (exit 1), a warning otherwise (only explicit tags pick tiers then)."""
    described = [t for t in cfg.tiers.values() if t.description or t.utterances]
    if len(described) < 2:
        return 0
    try:
        from tierwise.embed import get_embedder
        from tierwise.routing.signals.overlap import tier_overlaps

        overlaps = tier_overlaps(cfg, get_embedder(cfg.classifier.embedder))
    except Exception as exc:  # the embedder is an optional extra: say why the check did not run
        if cfg.classifier.kind == "semantic":
            print(f"classifier: cannot load embedder '{cfg.classifier.embedder}': {exc}", file=sys.stderr)
            return 1
        print(f"(tier overlap check skipped: {exc})")
        return 0
    semantic = cfg.classifier.kind == "semantic"
    for o in overlaps:
        level = "problem" if semantic else "warning"
        print(f"{level}: tiers '{o.tier_a}' and '{o.tier_b}' overlap (cosine {o.similarity:.2f}): "
              f"{o.worst_pair[0]!r} ~ {o.worst_pair[1]!r}; describe their output contracts apart",
              file=sys.stderr if semantic else sys.stdout)
    if not overlaps:
        print(f"tier descriptions are separable ({cfg.classifier.embedder})")
    return 1 if overlaps and semantic else 0


def _store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from tierwise.config.schema import LedgerConfig
    from tierwise.ledger import open_store

    if args.db:
        return open_store(LedgerConfig(backend="sqlite", path=args.db))
    cfg = _load(args.config)
    if cfg.ledger.backend == "memory":
        raise SystemExit("ledger backend 'memory' keeps nothing to read once its gateway stops")
    if cfg.ledger.backend == "sqlite" and not Path(cfg.ledger.path).expanduser().exists():
        raise SystemExit(f"no ledger at {cfg.ledger.path} yet (nothing served with this config?)")
    try:
        return open_store(cfg.ledger)
    except Exception as exc:  # e.g. PostgreSQL unreachable: one line, never the DSN's password (the store says)
        raise SystemExit(f"cannot open the ledger: {exc}") from None


def cmd_ledger_tail(args: argparse.Namespace) -> int:
    from tierwise.ledger import format_tail

    store = _store(args)
    try:
        # Follow on the insertion sequence, not on ts: records are written when requests end, so one that started
        # earlier can be written after one already printed. The position is taken before the tail is read, so
        # nothing written in between is missed; what the tail already showed is not shown twice.
        newest = store.rows_after(None, 1) if args.follow else []
        seq = newest[-1][0] if newest else 0
        rows = store.tail(args.n)
        print(format_tail(rows), flush=True)
        if not args.follow:
            return 0
        shown = {r["id"]: r for r in rows}
        while True:
            batch = store.rows_after(seq, 1000)
            if not batch:
                time.sleep(args.interval)
                continue
            seq = batch[-1][0]
            fresh = [r for _, r in batch if shown.pop(r["id"], None) != r]  # a replaced record is shown again
            if fresh:
                print(format_tail(fresh).split("\n", 1)[-1], end="", flush=True)
    except KeyboardInterrupt:
        return 0
    finally:
        store.close()


def cmd_ledger_recover(args: argparse.Namespace) -> int:
    """Store what stopped gateways left behind (journal segments, fallback file) without serving: for a gateway
    that will not be started again. A running gateway's own journal is locked and left alone."""
    from tierwise.ledger import open_store, recover

    cfg = _load(args.config)
    try:
        store = open_store(cfg.ledger)
    except Exception as exc:
        print(f"cannot open the ledger {cfg.ledger.path}: {exc}", file=sys.stderr)
        return 2
    try:
        report, imported, (requeued, refused) = recover(cfg.ledger, store)
    finally:
        store.close()
    print(f"journal: {report.records} record(s) from {report.segments} segment(s) of stopped processes "
          f"({report.interrupted} interrupted request(s) booked at their estimate, {report.torn_lines} torn line(s) "
          f"skipped); fallback file: {imported} record(s); quarantine: {requeued} stored on a new try, "
          f"{refused} still refused")
    if report.rows and cfg.state.backend != "memory":  # their settlements died with the process: charge budgets
        import asyncio

        from tierwise.governance.recovery import charge_recovered_now

        n, sent = asyncio.run(charge_recovered_now(cfg, report.rows))
        print(f"budgets: {n} replayed request(s) settled on the shared state"
              + ("" if sent else " — NOT all sent (the state store is unreachable): budgets undercount them"))
        return 0 if sent else 1
    return 0


def cmd_ledger_export(args: argparse.Namespace) -> int:
    from tierwise.ledger import export_rows

    store = _store(args)
    try:
        since, until = _when(args.since), _when(args.until)
        if args.output and args.output != "-":
            with open(args.output, "w", encoding="utf-8", newline="") as out:
                n = export_rows(store, args.format, out, since, until)
            print(f"wrote {n} record(s) to {args.output}", file=sys.stderr)
        else:
            n = export_rows(store, args.format, sys.stdout, since, until)
    finally:
        store.close()
    return 0


def cmd_price(args: argparse.Namespace) -> int:
    from tierwise.cost import price_report
    from tierwise.pricing import PriceBook
    from tierwise.types import Usage

    cfg = _load(args.config)
    if args.model not in cfg.models:
        print(f"unknown model '{args.model}'; configured: {', '.join(cfg.models)}", file=sys.stderr)
        return 1
    book = PriceBook(cfg)
    usage = Usage(input_tokens=args.input, output_tokens=args.output, cache_read_tokens=args.cache_read,
                  cache_write_tokens=args.cache_write, reasoning_tokens=args.reasoning)
    print(price_report(args.model, book.prices[args.model], usage))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tierwise", description="LLM router and cost gateway")
    ap.add_argument("--log-level", default=os.environ.get("TIERWISE_LOG_LEVEL", "INFO"))
    sub = ap.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the OpenAI-compatible gateway")
    _config_arg(s)
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--workers", type=_positive_int, default=1,
                   help="processes sharing the port (SO_REUSEPORT), each its own event loop and ledger journal; "
                        "with budgets or rate limits, needs state.backend: redis (default: 1)")
    s.add_argument("--worker", help=argparse.SUPPRESS)  # set by the supervisor for each worker: index/count
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("check-config", help="validate a config and report every problem at once")
    s.add_argument("config", nargs="?", default=os.environ.get("TIERWISE_CONFIG", DEFAULT_CONFIG))
    s.set_defaults(fn=cmd_check_config)

    led = sub.add_parser("ledger", help="read the request ledger").add_subparsers(dest="ledger_cmd", required=True)
    for name, fn in (("tail", cmd_ledger_tail), ("export", cmd_ledger_export)):
        s = led.add_parser(name)
        _config_arg(s)
        s.add_argument("--db", help="read this SQLite ledger file instead of the config's")
        s.set_defaults(fn=fn)
        if name == "tail":
            s.add_argument("-n", type=int, default=20, help="how many recent records")
            s.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
            s.add_argument("--interval", type=float, default=1.0, help="with -f: seconds between polls")
        else:
            s.add_argument("--format", choices=["csv", "jsonl"], default="jsonl")
            s.add_argument("--since", help="unix seconds or ISO-8601")
            s.add_argument("--until", help="unix seconds or ISO-8601")
            s.add_argument("--output", "-o", help="file (default: stdout)")

    s = led.add_parser("recover", help="store what stopped gateways left in the crash journal and fallback file")
    _config_arg(s)
    s.set_defaults(fn=cmd_ledger_recover)

    s = sub.add_parser("price", help="show a model's price and the cost of a request")
    _config_arg(s)
    s.add_argument("model")
    s.add_argument("--input", type=int, default=1000, help="uncached input tokens")
    s.add_argument("--output", type=int, default=500, help="output tokens (reasoning included)")
    s.add_argument("--cache-read", type=int, default=0)
    s.add_argument("--cache-write", type=int, default=0)
    s.add_argument("--reasoning", type=int, default=0, help="of the output tokens, how many are reasoning")
    s.set_defaults(fn=cmd_price)

    # parsers only: the lab itself is imported when one of its verbs runs (tierwise serve never loads it)
    from tierwise.cli_lab import add_eval_parsers as add_lab_parsers
    from tierwise.cli_lab import add_train_parsers
    from tierwise.ledger.spend_cli import add_parsers as add_spend_parsers

    add_spend_parsers(sub)
    add_lab_parsers(sub)
    add_train_parsers(sub)
    from tierwise.governance.cli import add_parsers as add_governance_parsers  # keys, principals

    add_governance_parsers(sub)
    from tierwise.rollout.canary_cli import add_parsers as add_canary_parsers  # canary ..., shadow report

    add_canary_parsers(sub)
    from tierwise.rollout.trial_cli import add_parsers as add_trial_parsers  # sample, trial

    add_trial_parsers(sub)
    from tierwise.rollout.cli_report import add_parsers as add_rollout_parsers  # report, reprice, advise, ...

    add_rollout_parsers(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
