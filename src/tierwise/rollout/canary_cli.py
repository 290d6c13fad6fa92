"""``tierwise canary report|promote|rollback|set-share|history NAME`` and ``tierwise shadow report NAME``.

Promote, roll back and set-share each write the canary's share and one audit row, in one transaction of the arms
store; running gateways pick the share up within ``canary.refresh_s`` (see :mod:`tierwise.rollout.canary`).
``promote --write-config`` also rewrites the config file with the candidate's tiers in place and the ``canary:``
block removed — validated before it is written, written atomically, the original kept as ``<file>.bak``.
"""

from __future__ import annotations

import getpass
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

from tierwise.config import ConfigError, load_config, load_config_text
from tierwise.config.schema import TierwiseConfig


def _config(args: Any) -> TierwiseConfig:
    return load_config(args.config)


def _canary(cfg: TierwiseConfig, name: str) -> None:
    if cfg.canary is None or cfg.canary.name != name:
        configured = f"'{cfg.canary.name}'" if cfg.canary is not None else "none"
        raise SystemExit(f"tierwise: no canary '{name}' in the config (configured canary: {configured})")


def cmd_report(args: Any) -> int:
    from tierwise.ledger.spend_cli import parse_when
    from tierwise.rollout.arms_store import open_arms_store
    from tierwise.rollout.canary_report import CanaryReportError, arm_totals, compare, render

    cfg = _config(args)
    _canary(cfg, args.name)
    try:
        since = parse_when(args.since) if args.since else 0.0
        until = parse_when(args.until) if args.until else time.time() + 1
    except ValueError as exc:
        raise SystemExit(f"tierwise: {exc}") from None
    store = open_arms_store(cfg.ledger)
    try:
        state = store.canary_state(args.name)
    finally:
        store.close()
    assert cfg.canary is not None
    share, status = (state.share, state.status) if state else (cfg.canary.share, None)
    try:
        comps = compare(arm_totals(cfg, args.name, since, until))
    except CanaryReportError as exc:
        raise SystemExit(f"tierwise: {exc}") from None
    if args.format == "json":
        sys.stdout.write(orjson.dumps({"canary": args.name, "share": share, "status": status or "configured",
                                       "metrics": [c.as_dict() for c in comps]}, option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        print(render(args.name, comps, share, status))
    return 0


def _set(args: Any, share: float, status: str, action: str) -> int:
    from tierwise.rollout.arms_store import open_arms_store

    cfg = _config(args)
    _canary(cfg, args.name)
    assert cfg.canary is not None
    if not 0.0 <= share <= 1.0:
        raise SystemExit(f"tierwise: a canary share is a fraction of traffic in [0, 1] (0.05 = 5 %), got {share:g}")
    actor = args.actor or os.environ.get("USER") or getpass.getuser()
    store = open_arms_store(cfg.ledger)
    try:
        before, after = store.set_canary(args.name, share, status, action, actor, args.reason or "",
                                         cfg.canary.share)
    finally:
        store.close()
    print(f"canary {args.name}: {action}: share {before if before is not None else '-'} -> {after:g} "
          f"(recorded; gateways apply it within {cfg.canary.refresh_s:g}s)")
    if action == "promote" and args.write_config:
        backup = write_promoted(args.config, args.name)
        print(f"{args.config}: candidate tiers written in place, canary block removed (original: {backup})")
    return 0


def cmd_promote(args: Any) -> int:
    return _set(args, 1.0, "promoted", "promote")


def cmd_rollback(args: Any) -> int:
    return _set(args, 0.0, "rolled_back", "rollback")


def cmd_set_share(args: Any) -> int:
    return _set(args, args.share, "running", "set-share")


def cmd_history(args: Any) -> int:
    from tierwise.rollout.arms_store import open_arms_store

    cfg = _config(args)
    store = open_arms_store(cfg.ledger)
    try:
        rows = store.audit(args.name)
    finally:
        store.close()
    for r in rows:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r["ts"]))
        print(f"{when} {r['action']:9} {r['share_before']} -> {r['share_after']} by {r['actor']}"
              + (f": {r['reason']}" if r["reason"] else ""))
    if not rows:
        print(f"canary {args.name}: no changes recorded")
    return 0


def write_promoted(path: str | Path, name: str) -> Path:
    """Rewrite ``path`` with canary ``name``'s tiers in place of the incumbent's and no ``canary:`` block.
    The new text is validated first; the write is atomic; returns the backup's path."""
    from tierwise.fsutil import atomic_write

    p = Path(path)
    doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    canary = doc.get("canary") if isinstance(doc, dict) else None
    if not isinstance(canary, dict) or canary.get("name") != name:
        raise SystemExit(f"tierwise: {p} has no canary '{name}' to promote")
    doc["tiers"] = {**doc.get("tiers", {}), **canary.get("tiers", {})}
    del doc["canary"]
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    try:
        load_config_text(text, str(p))
    except ConfigError as exc:
        raise SystemExit(f"tierwise: the promoted config would not validate; {p} unchanged:\n{exc}") from None
    backup = p.with_name(p.name + ".bak")
    shutil.copyfile(p, backup)
    atomic_write(p, text.encode())
    return backup


def cmd_shadow_report(args: Any) -> int:
    from tierwise.ledger.spend_cli import parse_when
    from tierwise.rollout.arms_store import open_arms_store

    cfg = _config(args)
    since = parse_when(args.since) if args.since else 0.0
    until = parse_when(args.until) if args.until else time.time() + 1
    store = open_arms_store(cfg.ledger)
    try:
        rows = store.shadow_summary(args.name, since, until)
    finally:
        store.close()
    print(f"shadow {args.name}: per tier, what the candidate would have chosen and cost (estimates before the call)")
    print(f"{'tier':14} {'requests':>9} {'same':>7} {'served est $':>13} {'shadow est $':>13} {'change':>8} "
          f"{'calls':>6} {'call $':>10} {'call errs':>9}")
    for tier, n, same, served, shadow, calls, call_usd, errs in rows:
        change = f"{(shadow - served) / served * 100:+.1f}%" if served else "-"
        print(f"{tier or '-':14} {n:>9} {same / n:>7.1%} {served:>13.6f} {shadow:>13.6f} {change:>8} {calls:>6} "
              f"{call_usd or 0:>10.6f} {errs:>9}")
    if not rows:
        print("(no shadow records in the window)")
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``tierwise canary`` and ``tierwise shadow`` on the CLI's subparsers."""
    default_cfg = os.environ.get("TIERWISE_CONFIG", "tierwise.yaml")
    can = sub.add_parser("canary", help="report on, promote or roll back the configured canary")
    cs = can.add_subparsers(dest="canary_cmd", required=True)

    def common(p: Any) -> None:
        p.add_argument("name", help="the canary's name (canary.name in the config)")
        p.add_argument("--config", "-c", default=default_cfg, help="path to tierwise.yaml")

    p = cs.add_parser("report", help="compare the arms: cost, errors, escalations, latency, TTFT, quality")
    common(p)
    p.add_argument("--since", help="start (ISO-8601, unix seconds, or a span back such as 24h; default: all)")
    p.add_argument("--until", help="end (exclusive; default: now)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(fn=cmd_report)
    for verb, fn, what in (("promote", cmd_promote, "send all traffic to the candidate (share 1), recorded"),
                           ("rollback", cmd_rollback, "send no traffic to the candidate (share 0), recorded")):
        p = cs.add_parser(verb, help=what)
        common(p)
        p.add_argument("--reason", help="why (kept in the audit log)")
        p.add_argument("--actor", help="who (default: $USER)")
        if verb == "promote":
            p.add_argument("--write-config", action="store_true",
                           help="also write the candidate's tiers into the config file (atomically; .bak kept)")
        p.set_defaults(fn=fn)
        if verb != "promote":
            p.set_defaults(write_config=False)
    p = cs.add_parser("set-share", help="change the canary's share (e.g. ramp 0.05 -> 0.2), recorded")
    common(p)
    p.add_argument("share", type=float, help="fraction of traffic in [0, 1]")
    p.add_argument("--reason")
    p.add_argument("--actor")
    p.set_defaults(fn=cmd_set_share, write_config=False)
    p = cs.add_parser("history", help="the canary's audit log")
    common(p)
    p.set_defaults(fn=cmd_history)
    sh = sub.add_parser("shadow", help="what the shadow candidate would have done").add_subparsers(
        dest="shadow_cmd", required=True)
    p = sh.add_parser("report", help="per tier: same choice, estimated cost of each policy, shadow calls")
    common(p)
    p.add_argument("--since")
    p.add_argument("--until")
    p.set_defaults(fn=cmd_shadow_report)
