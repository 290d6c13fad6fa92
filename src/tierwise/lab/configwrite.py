"""Write calibrated cascade thresholds into a tierwise YAML config, safely.

``write_cascade`` replaces (or creates) ``tiers.<name>`` as a ``policy: cascade`` tier with the fitted rungs, gate
kind, per-rung thresholds and gate parameters, keeping the tier's other keys (description, utterances, fallback…).
A ``<file>.bak`` copy of the original is kept. The new file must load through ``tierwise.config.load_config``
(the same validation the gateway runs); if it does not, the original is restored and :class:`ConfigWriteError`
lists the problems — a calibration never leaves a config the gateway would refuse.

PyYAML drops comments when it re-emits a document; the ``.bak`` keeps the commented original.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tierwise.config.load import ConfigError, load_config


class ConfigWriteError(Exception):
    """The config could not be updated; the original file is unchanged."""


def cascade_block(chain: Sequence[str], gate: str, thresholds: Sequence[float],
                  params: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ``cascade:`` mapping for a chain (thresholds written in full: YAML floats round-trip exactly)."""
    if len(thresholds) != len(chain) - 1 or len(params) != len(chain) - 1:
        raise ValueError(f"{len(chain)} rungs need {len(chain) - 1} thresholds and gate parameter sets")
    rungs: list[dict[str, Any]] = [
        {"model": m, "gate": {"kind": gate, "threshold": float(t), **p}}
        for m, t, p in zip(chain[:-1], thresholds, params, strict=True)
    ]
    rungs.append({"model": chain[-1]})
    return {"rungs": rungs}


def _read(p: Path) -> dict[str, Any]:
    try:
        original = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigWriteError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(original)
    except yaml.YAMLError as exc:
        raise ConfigWriteError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigWriteError(f"{p}: the configuration must be a mapping")
    if not isinstance(doc.setdefault("tiers", {}), dict):
        raise ConfigWriteError(f"{p}: 'tiers' must be a mapping")
    return doc


def _spec_models(spec: dict[str, Any]) -> list[str]:
    if "cascade" in spec:
        return [r["model"] for r in spec["cascade"]["rungs"]]
    return list(spec.get("models") or [])


def write_cascade(
    path: str | Path,
    tier: str,
    chain: Sequence[str],
    gate: str,
    thresholds: Sequence[float],
    params: Sequence[dict[str, Any]],
) -> Path:
    """Put the cascade into ``tiers.<tier>`` of ``path``; returns the backup's path. Raises ConfigWriteError."""
    p = Path(path)
    doc = _read(p)
    missing = [m for m in chain if m not in (doc.get("models") or {})]
    if missing:
        known = ", ".join(sorted(doc.get("models") or {})) or "none"
        raise ConfigWriteError(
            f"{p}: model(s) {missing} of the calibrated chain are not defined under 'models:' (defined: {known}); "
            "add them (same names as in the dataset) or calibrate with --chain over models the config has"
        )
    return write_tier(p, tier, {"policy": "cascade", "cascade": cascade_block(chain, gate, thresholds, params)},
                      doc=doc)


def write_tier(path: str | Path, tier: str, spec: dict[str, Any], doc: dict[str, Any] | None = None) -> Path:
    """Put a tier spec (``policy`` and its block: ``cascade``, or ``models`` for a single model) into
    ``tiers.<tier>`` of ``path``, keeping the tier's other keys; returns the backup's path. Raises ConfigWriteError."""
    p = Path(path)
    if doc is None:
        doc = _read(p)
        models = _spec_models(spec)
        missing = [m for m in models if m not in (doc.get("models") or {})]
        if missing:
            known = ", ".join(sorted(doc.get("models") or {})) or "none"
            raise ConfigWriteError(f"{p}: model(s) {missing} of the calibrated tier are not defined under 'models:' "
                                   f"(defined: {known}); add them (same names as in the dataset)")
    tiers = doc.setdefault("tiers", {})
    entry = dict(tiers.get(tier) or {})
    for key in ("models", "cascade", "learned"):
        entry.pop(key, None)  # a cascade's pool defaults to its rung models; a stale block would contradict policy
    entry.update(spec)
    tiers[tier] = entry
    backup = p.with_name(p.name + ".bak")
    shutil.copyfile(p, backup)
    p.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    try:
        load_config(p)
    except ConfigError as exc:
        shutil.copyfile(backup, p)
        raise ConfigWriteError(f"the updated config does not validate, {p} restored from {backup.name}:\n{exc}") from None
    return backup
