"""``tierwise calibrate --from-ledger``: re-fit a cascade tier's thresholds on recent labelled traffic, propose them
as a canary (never applied), and report drift in escalation rate and gate confidence.

The data: the tier's answered requests in the window (``--since``/``--until``) that this cascade served — a gated
rung of it answered (rows of another policy, such as a canary's control arm or the config before a promotion, are
left out) — and that carry a quality label: feedback (``POST /v1/feedback``: score, or thumbs as 1 / 0; several
sources averaged) on the request labels the answer that was *served*; feedback from a source named ``model:<name>``
labels that rung's answer instead (e.g. an escalated rung's answer judged offline). Costs, tokens and gate confidences come from the ledger's attempts.

Live traffic never shows what a rung that did not run would have answered, so two gaps are filled, conservatively,
and counted in the output:

- an escalated rung's answer that nobody labelled scores 0 — "unverified counts as wrong": the re-fit can therefore
  only lower a threshold where labels for escalated answers exist (run ``tierwise trial`` for those);
- a later rung that never ran (the request was served before it) gets that model's mean labelled quality in the
  window and the price book's cost for the request's input tokens and the model's ``expected_output_tokens``; a
  gated rung that never ran gets confidence 0 (it would have escalated).

The fit is the lab's :class:`~tierwise.lab.calibrate.CascadeCalibrator` with its guards unchanged (the constraint on
mean − z·se, paired with the reference; the k-fold selection guard) on the hash train split, reported on the test
split through the engine, exactly as ``tierwise calibrate --data``. The chain is the tier's current rungs; the
reference is its last rung. The proposal is written to ``--propose`` (default ``<config>.canary.yaml``): a copy of
the config with a ``canary:`` block carrying the re-fitted tier at ``--canary-share`` (default 0.05), validated
before it is written, written atomically. The running config is not touched.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tierwise.config.schema import TierwiseConfig
from tierwise.rollout.stats import Comparison, compare_means, compare_proportions


@dataclass
class WindowStats:
    """Escalation and gate-confidence sums of one window (for drift)."""

    n: int = 0
    escalated: int = 0
    conf: dict[str, list[float]] = field(default_factory=dict)  # model -> [n, sum, sum of squares]


@dataclass
class Built:
    oset: Any
    labelled: int = 0
    pessimistic: int = 0  # escalated answers without a label, scored 0
    imputed: int = 0  # rungs that never ran, filled with the model's mean labelled quality
    window: WindowStats = field(default_factory=WindowStats)


def _scores(cfg: TierwiseConfig, since: float) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """(served-answer score per request, per-(request, model) score from ``model:<name>`` sources)."""
    from tierwise.rollout.capture import open_rollout_store

    served: dict[str, list[float]] = {}
    per_model: dict[tuple[str, str], list[float]] = {}
    store = open_rollout_store(cfg)
    try:
        for fb in store.iter_feedback(since, None):
            v = fb.score if fb.score is not None else (1.0 if fb.thumbs == 1 else 0.0 if fb.thumbs == -1 else None)
            if v is None:
                continue
            v = min(1.0, max(0.0, float(v)))
            if fb.source.startswith("model:"):
                per_model.setdefault((fb.request_id, fb.source[6:]), []).append(v)
            else:
                served.setdefault(fb.request_id, []).append(v)
    finally:
        store.close()
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {k: mean(v) for k, v in served.items()}, {k: mean(v) for k, v in per_model.items()}


def _window_rows(cfg: TierwiseConfig, tier: str, since: float, until: float,
                 chain: list[str]) -> list[dict[str, Any]]:
    """The tier's answered requests that this cascade served: a rung of ``chain`` answered and one served (rows of
    another policy — a canary's control arm, the config before a promotion, shadow calls — are not its traffic)."""
    from tierwise.ledger import open_store

    rungs = set(chain)
    store = open_store(cfg.ledger)
    try:
        return [r for r in store.iter_rows(since, until)
                if r.get("tier") == tier and r.get("status") == "ok" and r.get("model") in rungs
                and not str(r.get("principal")).startswith("shadow:")
                and any(a.get("model") in rungs and a.get("confidence") is not None for a in r.get("attempts") or [])]
    finally:
        store.close()


def _drift_stats(rows: list[dict[str, Any]], gated: list[str]) -> WindowStats:
    w = WindowStats()
    for r in rows:
        w.n += 1
        w.escalated += int((r.get("escalations") or 0) > 0)
        for a in r.get("attempts") or []:
            if a.get("model") in gated and a.get("confidence") is not None:
                s = w.conf.setdefault(a["model"], [0.0, 0.0, 0.0])
                c = float(a["confidence"])
                s[0], s[1], s[2] = s[0] + 1, s[1] + c, s[2] + c * c
    return w


def build_outcomes(cfg: TierwiseConfig, tier: str, since: float, until: float) -> Built:
    """The tier's labelled traffic as an outcome set over its rung chain (see the module docstring)."""
    from tierwise.lab.datasets.format import ModelOutcome, OutcomeSet, PromptOutcomes
    from tierwise.lab.datasets.splits import hash_split, hash_split_meta
    from tierwise.pricing import PriceBook
    from tierwise.types import Usage

    cascade = cfg.tiers[tier].cascade
    assert cascade is not None
    chain = [r.model for r in cascade.rungs]
    rows = _window_rows(cfg, tier, since, until, chain)
    served_q, model_q = _scores(cfg, since)
    built = Built(None, window=_drift_stats(rows, chain[:-1]))
    labelled = [r for r in rows if r["id"] in served_q]
    sums: dict[str, list[float]] = {}
    for r in labelled:
        sums.setdefault(r["model"], []).append(served_q[r["id"]])
    mean_q = {m: sum(v) / len(v) for m, v in sums.items()}
    book = PriceBook(cfg)
    prompts = []
    for r in labelled:
        atts = {a["model"]: a for a in r.get("attempts") or [] if a.get("outcome") in ("ok", "escalated")}
        first_in = next(((a.get("usage") or {}).get("input_tokens") for a in r.get("attempts") or []), None)
        outs: dict[str, ModelOutcome] = {}
        for i, m in enumerate(chain):
            a = atts.get(m)
            if a is not None:
                if m == r["model"]:
                    q = served_q[r["id"]]
                elif (r["id"], m) in model_q:
                    q = model_q[(r["id"], m)]
                else:
                    q = 0.0
                    built.pessimistic += 1
                usage = a.get("usage") or {}
                outs[m] = ModelOutcome(None, q, usage.get("input_tokens"), usage.get("output_tokens"),
                                       a.get("cost_usd"), a.get("confidence"), latency_ms=a.get("latency_ms"))
            elif m in mean_q and first_in is not None:
                built.imputed += 1
                out_tokens = cfg.models[m].expected_output_tokens
                cost = book.cost(m, Usage(input_tokens=int(first_in), output_tokens=out_tokens)).total_usd
                outs[m] = ModelOutcome(None, mean_q[m], int(first_in), out_tokens, cost,
                                       0.0 if i < len(chain) - 1 else None)
        if outs:
            prompts.append(PromptOutcomes(r["id"], hash_split(r["id"]), r["id"], outs, meta={"tier": tier}))
    built.labelled = len(prompts)
    built.oset = OutcomeSet(f"ledger/{tier}", [m for m in chain if any(m in p.models for p in prompts)], prompts,
                            meta={"source": "tierwise ledger + feedback (calibrate --from-ledger)",
                                  "split": hash_split_meta(key="request id")})
    return built


def drift(now: WindowStats, before: WindowStats) -> list[Comparison]:
    out = [compare_proportions("escalation_rate", before.escalated, before.n, now.escalated, now.n)]
    for m in sorted(set(now.conf) | set(before.conf)):
        b, n = before.conf.get(m, [0, 0, 0]), now.conf.get(m, [0, 0, 0])
        out.append(compare_means(f"gate_confidence[{m}]", int(b[0]), b[1], b[2], int(n[0]), n[1], n[2]))
    return out


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def calibrate_from_ledger(args: argparse.Namespace, z: float) -> int:
    """The ``tierwise calibrate --from-ledger`` command (wired from :mod:`tierwise.lab.calibrate_cli`); ``z`` is the
    constraint's margin, ``--z`` or 1 (:attr:`tierwise.lab.cli_common.Margins.family_z`)."""
    from tierwise.config import ConfigError, load_config
    from tierwise.lab.calibrate import calibrate_point
    from tierwise.lab.calibrate_cli import describe
    from tierwise.lab.cli_common import UsageError, cascade_calibrator, labelled, with_flags
    from tierwise.ledger.spend_cli import parse_when

    if not args.config or not args.tier or not args.since:
        raise UsageError("--from-ledger needs --config (the gateway's tierwise.yaml, read only), --tier and --since")
    if args.data:
        raise UsageError("--from-ledger reads the ledger: leave out --data")
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    tier = cfg.tiers.get(args.tier)
    if tier is None or tier.cascade is None or len(tier.cascade.rungs) < 2:
        raise UsageError(f"--tier {args.tier}: not a cascade tier of {args.config} (re-fitting needs gated rungs)")
    since, until = parse_when(args.since), parse_when(args.until) if args.until else time.time()
    if until <= since:
        raise UsageError("--until must be after --since")
    chain = [r.model for r in tier.cascade.rungs]
    built = build_outcomes(cfg, args.tier, since, until)
    print(f"{args.tier}: {built.window.n} answered requests in the window, {built.labelled} labelled; "
          f"{built.pessimistic} escalated answers without a label scored 0, {built.imputed} rungs that never ran "
          "filled with their model's mean labelled quality (see --help)")
    args = with_flags(args, chain=",".join(chain) if args.chain in (None, "auto") else args.chain,
                      relative_to=chain[-1] if args.relative_to == "best" else args.relative_to)
    oset = labelled(built.oset, args)
    res = calibrate_point(cascade_calibrator(oset, args), oset.split("test"), "quality", args.target_quality, z)
    print(describe(res, oset, z))
    before = _drift_stats(_window_rows(cfg, args.tier, since - (until - since), since, chain), chain[:-1])
    print(f"\ndrift: this window against the {_fmt((until - since) / 3600)} h before it (95 % intervals)")
    for c in drift(built.window, before):
        verdict = "too few data" if c.diff is None else ("DRIFTED" if c.significant else "no significant change")
        print(f"  {c.metric:30} before {_fmt(c.control):>8} now {_fmt(c.canary):>8} diff {_fmt(c.diff):>8} "
              f"[{_fmt(c.low)}, {_fmt(c.high)}]  {verdict}")
    old = [g.gate.threshold for g in tier.cascade.rungs[:-1] if g.gate is not None]
    print(f"\nthresholds now {[round(t, 4) for t in old]}; re-fitted {[round(t, 4) for t in res.cal.thresholds]}")
    if res.cal.chain != chain:
        print(f"the fit kept only {res.cal.chain} of the chain: proposed as it is")
    path = write_proposal(args.config, args.tier, res, args.canary_name or f"recal-{args.tier}",
                          args.canary_share, args.propose)
    print(f"proposed as canary '{args.canary_name or f'recal-{args.tier}'}' at share {args.canary_share:g} in "
          f"{path} — nothing applied: review it, deploy it, then 'tierwise canary report'")
    return 0


def write_proposal(config: str, tier: str, res: Any, name: str, share: float, out: str | None) -> Path:
    """A copy of ``config`` with a ``canary:`` block carrying the re-fitted tier; validated, written atomically."""
    from tierwise.config import ConfigError, load_config_text
    from tierwise.fsutil import atomic_write
    from tierwise.lab.cli_common import UsageError
    from tierwise.lab.configwrite import cascade_block

    if not 0.0 <= share <= 1.0:
        raise UsageError(f"--canary-share is a fraction of traffic in [0, 1], got {share:g}")
    src = Path(config)
    doc = yaml.safe_load(src.read_text(encoding="utf-8"))
    entry = {k: v for k, v in dict(doc["tiers"][tier]).items() if k not in ("models", "cascade", "learned")}
    entry.update({"policy": "cascade", "cascade": cascade_block(res.cal.chain, res.cal.gate, res.cal.thresholds,
                                                                 res.cal.params)})
    doc["canary"] = {"name": name, "share": share, "tiers": {tier: entry}}
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    dest = Path(out) if out else src.with_name(src.stem + ".canary.yaml")
    try:
        load_config_text(text, str(dest))
    except ConfigError as exc:
        raise UsageError(f"the proposal would not validate, nothing written:\n{exc}") from None
    atomic_write(dest, text.encode())
    return dest


def add_ledger_args(p: argparse.ArgumentParser) -> None:
    """``--from-ledger`` and its options on ``tierwise calibrate`` (``--data`` becomes optional)."""
    for action in p._actions:
        if action.dest == "data":
            action.required = False
            action.help = (action.help or "") + " (or --from-ledger)"
    g = p.add_argument_group("re-calibration from the ledger (issue 11)")
    g.add_argument("--from-ledger", action="store_true",
                   help="re-fit --tier's thresholds on the ledger's labelled traffic (feedback); --config is the "
                        "gateway's config, read only; the result is proposed as a canary, never applied")
    g.add_argument("--since", help="--from-ledger: start of the window (ISO-8601, unix seconds, or 7d / 24h back)")
    g.add_argument("--until", help="--from-ledger: end of the window (default: now)")
    g.add_argument("--propose", help="--from-ledger: where the proposed config goes (default <config>.canary.yaml)")
    g.add_argument("--canary-name", help="--from-ledger: the proposed canary's name (default recal-<tier>)")
    g.add_argument("--canary-share", type=float, default=0.05, help="--from-ledger: its share (default 0.05)")
