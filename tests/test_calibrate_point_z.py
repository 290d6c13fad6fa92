"""``calibrate --z`` left out: the calibrated point of ``--kind contextual --procedure families`` uses that
procedure's own z (1.645, chosen by nested CV on train: ``bench/cv_calibration.py``), everything else z = 1; a
given ``--z`` always wins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_contextual_cli import toy_set
from tierwise.cli import main
from tierwise.cli_lab import FAMILIES_Z
from tierwise.lab.crossfit import POINT_Z, point_z


def test_point_z_defaults() -> None:
    assert FAMILIES_Z == POINT_Z["families"] == point_z("families", None) == 1.645
    assert point_z("families", 1.0) == 1.0 and point_z("none", None) == point_z("guard", None) == 1.0


def _calibrate(data: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[dict, str]:
    assert main(["calibrate", "--kind", "contextual", "--data", str(data), "--router-kind", "none",
                 "--out", str(out), *extra]) == 0
    return json.loads((out / "calibration.json").read_text()), capsys.readouterr().out


def test_calibrate_contextual_point_z_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = toy_set(tmp_path)
    rep, text = _calibrate(data, tmp_path / "a", capsys)
    assert rep["z"] == 1.645 and "z=1.645" in text and rep["procedure"] == "families"
    given, text = _calibrate(data, tmp_path / "b", capsys, "--z", "1")
    assert given["z"] == 1.0 and "z=1)" in text
    # on this set the larger margin certifies no cheaper point on train
    assert rep["train"]["cost"] >= given["train"]["cost"] - 1e-15
    other, _ = _calibrate(data, tmp_path / "c", capsys, "--procedure", "none")
    assert other["z"] == 1.0


def test_calibrate_cascade_procedure_and_z_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--kind cascade``: guard by default (the whole search with one selection guard, z = 1: see
    crossfit.CASCADE_DEFAULT_PROCEDURE for why not families); ``--procedure families`` at its z = 0.5
    (bench/cv_calibration.py --kind cascade)."""
    from tierwise.lab.crossfit import CASCADE_DEFAULT_PROCEDURE, CASCADE_POINT_Z

    assert CASCADE_POINT_Z["families"] == point_z("families", None, "cascade") == 0.5
    assert CASCADE_DEFAULT_PROCEDURE == "guard"
    data = toy_set(tmp_path)
    out = tmp_path / "r.json"
    assert main(["calibrate", "--data", str(data), "--gate", "logprob", "--procedure", "families",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "z=0.5)" in text and "procedure families: family " in text
    assert json.loads(out.read_text())["test"]["n"] == 120
    assert main(["calibrate", "--data", str(data), "--gate", "logprob"]) == 0
    text = capsys.readouterr().out
    assert "z=1)" in text and "procedure families" not in text
    assert main(["calibrate", "--data", str(data), "--gate", "logprob", "--z", "2"]) == 0
    assert "z=2)" in capsys.readouterr().out
