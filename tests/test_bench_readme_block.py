"""The README-block helper the benches share (bench/readme_block.py): only the text between one block's markers
changes, and a README without the markers is an error, not a silent no-op."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def replace_block():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from readme_block import replace_block

        yield replace_block
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_replaces_only_its_own_block(tmp_path: Path, replace_block) -> None:  # type: ignore[no-untyped-def]
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- a:begin -->\nold a\n<!-- a:end -->\nmiddle\n<!-- b:begin -->\nold b\n<!-- b:end -->\n")
    replace_block(readme, "a", ["", "| new | table |", ""])
    replace_block(readme, "a", ["", "| newer | table |", ""])  # idempotent shape: markers kept
    assert readme.read_text() == ("intro\n<!-- a:begin -->\n\n| newer | table |\n\n<!-- a:end -->\nmiddle\n"
                                  "<!-- b:begin -->\nold b\n<!-- b:end -->\n")


def test_missing_markers_exit(tmp_path: Path, replace_block) -> None:  # type: ignore[no-untyped-def]
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    with pytest.raises(SystemExit, match="semantic-latency:begin"):
        replace_block(readme, "semantic-latency", ["x"])


def test_the_readme_has_the_semantic_latency_block() -> None:
    text = (ROOT / "README.md").read_text()
    assert text.count("<!-- semantic-latency:begin -->") == 1 and text.count("<!-- semantic-latency:end -->") == 1
