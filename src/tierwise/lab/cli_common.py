"""What ``tierwise calibrate`` and ``tierwise eval`` share: input checks, the cascade calibrator, the z margins.

Why a module of its own: both commands (:mod:`tierwise.lab.calibrate_cli`, :mod:`tierwise.lab.eval_cli`) and
``calibrate --from-ledger`` (:mod:`tierwise.rollout.recalibrate`) read the same flags the same way: the models and
budget they name are checked here, the cascade calibrator is built here from ``--chain``/``--gate``/
``--relative-to``/``--cv-folds``/``--max-p95-latency-ms``, and ``--z``/``--procedure`` are resolved here, once, into
a :class:`Margins` value the commands pass on (the namespace is left as argparse filled it). Bad input raises
:class:`UsageError`; :func:`guard` turns it into one ``error:`` line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from tierwise.lab.calibrate import CascadeCalibrator
from tierwise.lab.datasets import OutcomeFormatError, OutcomeSet, SharedDataMissing


class UsageError(Exception):
    """A user mistake with a message that says how to fix it (exit 2)."""


def check_models(oset: OutcomeSet, names: list[str], what: str) -> None:
    priced = oset.priced_models()
    bad = [m for m in names if m not in priced]
    if bad:
        raise UsageError(f"{what}: unknown or unpriced model(s) {bad} in {oset.name}; available: {', '.join(priced)}")


def parse_budget(text: str) -> float:
    """``--max-cost``: USD per request, or ``X/1k`` for USD per 1,000 requests."""
    t = text.strip().lower()
    try:
        return float(t[:-3]) / 1000.0 if t.endswith("/1k") else float(t)
    except ValueError:
        raise UsageError(f"--max-cost {text!r}: give USD per request (0.0004) or per 1k requests (0.4/1k)") from None


def cascade_calibrator(oset: OutcomeSet, args: argparse.Namespace) -> CascadeCalibrator:
    """The cascade calibrator on ``oset``'s train split, from ``--chain``, ``--gate``, ``--relative-to``,
    ``--cv-folds`` and ``--max-p95-latency-ms``."""
    train = oset.split("train")
    if not train.prompts or not oset.count("test"):
        raise UsageError(f"{oset.name}: calibration needs prompts in both splits (train {len(train)}, "
                         f"test {oset.count('test')})")
    chain = None if args.chain in (None, "auto") else [m.strip() for m in args.chain.split(",") if m.strip()]
    if chain:
        check_models(oset, chain, "--chain")
    ref = None if args.relative_to == "best" else args.relative_to
    if ref:
        check_models(oset, [ref], "--relative-to")
    try:
        return CascadeCalibrator(train, gate=args.gate, chain=chain, ref_model=ref, cv_folds=args.cv_folds,
                                 max_p95_ms=latency_cap(args))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def with_flags(args: argparse.Namespace, **flags: Any) -> argparse.Namespace:
    """A copy of ``args`` with ``flags`` set: a command that fills in a flag for the shared builders (eval's
    ``--router cascade:GATE`` as ``--gate``, ``--from-ledger``'s tier chain as ``--chain``) leaves the caller's
    namespace as argparse filled it."""
    return argparse.Namespace(**{**vars(args), **flags})


def latency_cap(args: argparse.Namespace) -> float | None:
    cap = getattr(args, "max_p95_latency_ms", None)
    if cap is not None and not cap > 0:
        raise UsageError(f"--max-p95-latency-ms {cap:g}: give a positive number of milliseconds")
    return cap


def labelled(oset: OutcomeSet, args: argparse.Namespace) -> OutcomeSet:
    """Partially labelled data (ledger traffic): the prompts labelled for every model the command uses, with a note
    on stderr; a precise refusal when too few are (:mod:`tierwise.lab.datasets.coverage`)."""
    from tierwise.lab.datasets.coverage import complete_cases, missing_models

    if not missing_models(oset):
        return oset
    pool: list[str] | None = None
    chain = getattr(args, "chain", None)
    if chain not in (None, "auto"):
        pool = [m.strip() for m in chain.split(",") if m.strip()]
        ref = getattr(args, "relative_to", "best")
        if ref != "best" and ref not in pool:
            pool.append(ref)
    out, note = complete_cases(oset, pool, min_train=2, min_test=1)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return out


@dataclass(frozen=True)
class Margins:
    """``--z`` and ``--procedure`` of one command, resolved once by :func:`margins`."""

    family_z: float  # --z, or 1 when left out: the τ families eval reads, a --max-cost budget, a given chain
    given_z: float | None  # --z as given; None: left out, so a calibrated point takes its procedure's own z
    procedure: str  # --procedure, or the default of ``kind``
    kind: str  # "contextual" or "cascade": whose procedure defaults and point z apply

    def point(self) -> float:
        """The z of the calibrated point's paired bound (:func:`tierwise.lab.crossfit.point_z`)."""
        from tierwise.lab.crossfit import point_z

        return point_z(self.procedure, self.given_z, self.kind)


def margins(args: argparse.Namespace, kind: str = "contextual") -> Margins:
    """``--z`` left out: 1, but a calibrated point's procedure has its own (:meth:`Margins.point`);
    ``--procedure`` left out: the default of ``kind`` (families for contextual, guard for cascade)."""
    from tierwise.lab.crossfit import CASCADE_DEFAULT_PROCEDURE, DEFAULT_PROCEDURE

    procedure = getattr(args, "procedure", None)
    if procedure is None:
        procedure = CASCADE_DEFAULT_PROCEDURE if kind == "cascade" else DEFAULT_PROCEDURE
    return Margins(1.0 if args.z is None else args.z, args.z, procedure, kind)


def guard(fn: Any) -> Any:
    """``fn`` with bad input (:class:`UsageError`, a malformed or missing set, an unknown name) as one ``error:``
    line on stderr and exit 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args) or 0)
        except (UsageError, OutcomeFormatError, SharedDataMissing, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyError as exc:  # unknown set name (registry) or model
            print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
            return 2

    return run
