"""Latency of an operating point, from an outcome set's recorded (or token-modelled) per-model latencies.

Why: a cascade is cheaper than its strong model but pays the cheap rung's whole answer before it escalates, and a
gated rung's answer cannot be streamed before its gate has read all of it. ``eval`` and ``calibrate`` therefore print
p50/p95 of each point's latency and streaming time to first token (TTFT) beside its cost and quality.

Per prompt, for a run that called models ``m_1 … m_k`` and served ``m_k``:

- latency = Σ latency(m_i) (the rungs run one after the other; a router calls one model);
- TTFT (streaming) = Σ_{i<k} latency(m_i) + (TTFT(m_k) if ``m_k`` is ungated — the last rung of a cascade, or a
  router's choice — else latency(m_k), because a gated answer is released only once it passed).

Where a set records ``latency_ms`` (and ``ttft_ms``) for a model on a prompt those are used; otherwise the latency is
*modelled from tokens*, and the output says so and names the model: ``ttft = base_ms + input_tokens ·
ms_per_input_token`` and ``latency = ttft + output_tokens · ms_per_output_token``, with the per-model rates from the
set's meta ``latency_model`` (``{"default": {...}, "models": {"<model>": {...}}}``) or the defaults below. The defaults
are round figures of a hosted mid-size model (not fitted to any set); a user with other hardware should put theirs in
the meta. A recorded latency without a recorded TTFT gets the modelled TTFT, capped at the recorded latency.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tierwise.outcomes import ModelOutcome, OutcomeSet

DEFAULT_RATES: dict[str, float] = {"base_ms": 300.0, "ms_per_input_token": 0.2, "ms_per_output_token": 20.0}
RATE_KEYS = tuple(DEFAULT_RATES)


@dataclass(frozen=True)
class LatencyStats:
    """Percentiles (ms) of one operating point over the prompts of a split."""

    p50: float
    p95: float
    ttft_p50: float
    ttft_p95: float

    def text(self) -> str:
        return (f"latency p50 {self.p50:.0f} ms, p95 {self.p95:.0f} ms; streaming TTFT p50 {self.ttft_p50:.0f} ms, "
                f"p95 {self.ttft_p95:.0f} ms")

    def to_json(self) -> dict[str, float]:
        return {"p50_ms": self.p50, "p95_ms": self.p95, "ttft_p50_ms": self.ttft_p50, "ttft_p95_ms": self.ttft_p95}


def p95(values: np.ndarray) -> float:
    """The one percentile definition used everywhere here (numpy's linear interpolation): the constraint on train and
    the report on test agree by construction."""
    return float(np.percentile(values, 95)) if len(values) else float("nan")


class LatencyModel:
    """Per (prompt, model) latency and TTFT of one outcome set, recorded where present, modelled from tokens else."""

    def __init__(self, oset: OutcomeSet) -> None:
        spec = oset.meta.get("latency_model") or {}
        if not isinstance(spec, dict):
            raise ValueError(f"{oset.name}: meta latency_model must be an object, got {type(spec).__name__}")
        self.rates = {m: self._rates(spec, m, oset.name) for m in oset.models}
        self.from_meta = bool(spec)
        self._lat: dict[tuple[str, str], tuple[float, float]] = {}
        self.recorded: dict[str, int] = {m: 0 for m in oset.models}
        self.total: dict[str, int] = {m: 0 for m in oset.models}
        for p in oset.prompts:
            for m, mo in p.models.items():
                self._lat[(p.id, m)] = self._one(mo, self.rates.get(m, DEFAULT_RATES), m)
                self.total[m] = self.total.get(m, 0) + 1
                self.recorded[m] = self.recorded.get(m, 0) + (mo.latency_ms is not None)

    @staticmethod
    def _rates(spec: dict[str, Any], model: str, name: str) -> dict[str, float]:
        out = dict(DEFAULT_RATES)
        for part in (spec.get("default") or {}, (spec.get("models") or {}).get(model) or {}):
            for k, v in part.items():
                if k not in RATE_KEYS or isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                    raise ValueError(f"{name}: meta latency_model: {k}={v!r} for {model}; keys are {RATE_KEYS}, "
                                     "non-negative numbers")
                out[k] = float(v)
        return out

    @staticmethod
    def _one(mo: ModelOutcome, r: dict[str, float], model: str) -> tuple[float, float]:
        ttft = r["base_ms"] + (mo.input_tokens or 0) * r["ms_per_input_token"]
        if mo.latency_ms is None:
            return ttft + (mo.output_tokens or 0) * r["ms_per_output_token"], ttft
        lat = float(mo.latency_ms)
        return lat, float(mo.ttft_ms) if mo.ttft_ms is not None else min(ttft, lat)

    def latency(self, prompt_id: str, model: str) -> float:
        return self._lat[(prompt_id, model)][0]

    def ttft(self, prompt_id: str, model: str) -> float:
        return self._lat[(prompt_id, model)][1]

    def matrix(self, ids: Sequence[str], models: Sequence[str]) -> np.ndarray:
        """(len(ids), len(models)) latencies in ms (for the calibration search's latency constraint)."""
        return np.array([[self.latency(i, m) for m in models] for i in ids], dtype=float).reshape(len(ids), len(models))

    def provenance(self, models: Collection[str] | None = None) -> str:
        """One sentence: recorded, or modelled from tokens (with the rates), per the models concerned."""
        ms = [m for m in (models if models is not None else self.total) if m in self.total]
        rec = [m for m in ms if self.recorded[m] == self.total[m] and self.total[m]]
        modelled = [m for m in ms if m not in rec]
        if not modelled:
            return "latencies as recorded in the set"
        rates = {m: self.rates[m] for m in modelled}
        same = all(r == next(iter(rates.values())) for r in rates.values())
        src = "the set's meta latency_model" if self.from_meta else "tierwise's defaults (no latency_model in meta)"
        how = (_rate_text(next(iter(rates.values()))) if same
               else "; ".join(f"{m}: {_rate_text(r)}" for m, r in rates.items()))
        part = "" if len(rec) == 0 else f"; recorded for {', '.join(rec)}"
        some = [f"{m} {self.recorded[m]}/{self.total[m]}" for m in modelled if self.recorded[m]]
        part += f"; partly recorded, used where present: {', '.join(some)}" if some else ""
        return (f"latencies MODELLED from tokens for {', '.join(modelled)}, not measured: {how} [{src}{part}]")

    def stats(self, runs: Sequence[Any], ungated: Collection[str] | None = None) -> LatencyStats:
        """Percentiles of a run (objects with ``prompt_id``, ``models_called``, ``served``): see the module text.
        ``ungated``: the models whose answer streams as it is generated (``None``: every model, as a router)."""
        lat, ttft = self.per_prompt(runs, ungated)
        return LatencyStats(float(np.percentile(lat, 50)), p95(lat), float(np.percentile(ttft, 50)), p95(ttft))

    def per_prompt(self, runs: Sequence[Any], ungated: Collection[str] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        lat, ttft = np.zeros(len(runs)), np.zeros(len(runs))
        for i, r in enumerate(runs):
            called = list(r.models_called) or ([r.served] if r.served else [])
            before = sum(self.latency(r.prompt_id, m) for m in called[:-1])
            last = called[-1] if called else None
            if last is None:
                continue
            full = self.latency(r.prompt_id, last)
            lat[i] = before + full
            streams = ungated is None or last in ungated
            ttft[i] = before + (self.ttft(r.prompt_id, last) if streams else full)
        return lat, ttft


def _rate_text(r: dict[str, float]) -> str:
    return (f"TTFT = {r['base_ms']:g} ms + {r['ms_per_input_token']:g} ms/input token, "
            f"latency = TTFT + {r['ms_per_output_token']:g} ms/output token")


@dataclass(frozen=True)
class _Single:
    prompt_id: str
    models_called: list[str]
    served: str


def single_model_stats(lm: LatencyModel, oset: OutcomeSet, model: str) -> LatencyStats:
    """A single model served on every prompt of ``oset``."""
    return lm.stats([_Single(p.id, [model], model) for p in oset.prompts])


def section(oset: OutcomeSet, points: Sequence[tuple[str, Sequence[Any], Collection[str] | None]],
            models: Sequence[str]) -> str:
    """The latency block of ``eval``: one line per operating point ``(label, per-prompt runs, ungated models)`` and
    per single model, on ``oset`` (the test split), with the provenance of the numbers."""
    lm = LatencyModel(oset)
    rows = [(label, lm.stats(runs, ungated)) for label, runs, ungated in points]
    rows += [(f"single:{m}", single_model_stats(lm, oset, m)) for m in models]
    w = max([10, *(len(label) for label, _ in rows)])
    lines = [f"Latency of each operating point on the test split ({lm.provenance(models)}; TTFT when streamed: a "
             "gated rung's answer is released only after its gate)",
             f"  {'point':<{w}} {'p50 ms':>8} {'p95 ms':>8} {'TTFT p50':>9} {'TTFT p95':>9}"]
    for label, s in rows:
        lines.append(f"  {label:<{w}} {s.p50:>8.0f} {s.p95:>8.0f} {s.ttft_p50:>9.0f} {s.ttft_p95:>9.0f}")
    return "\n".join(lines)
