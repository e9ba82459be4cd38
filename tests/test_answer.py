"""The answer a run prints at its end, beside a committed reference run: numbers only for a run of the same recipe."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from harness.report.answer import answer_lines
from harness.report.study import load_study
from tests.conftest import REPO

REFERENCE = REPO / "results" / "quickstart_reference"


def test_a_run_of_the_references_recipe_is_set_beside_it() -> None:
    reference = load_study(REFERENCE)
    lines = answer_lines(load_study(REFERENCE), None, reference)
    for variant, miou in zip(reference.aggregate["variant"], reference.aggregate["miou_mean"]):
        assert f"  {variant}: yours {miou * 100:.2f} %, reference {miou * 100:.2f} % (+0.00 pp)" in lines


def test_a_run_of_another_recipe_is_not_compared(tmp_path: Path) -> None:
    """Say, the quickstart at a few iterations: its mIoU beside the reference's would read as a difference."""
    shutil.copytree(REFERENCE, tmp_path / "quickstart")
    summary = tmp_path / "quickstart" / "region" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "fingerprint": "another recipe"}))
    lines = answer_lines(load_study(tmp_path / "quickstart"), None, load_study(REFERENCE))
    assert any(line.startswith("  ce: yours ") for line in lines)
    assert "  region: trained with another recipe than the reference's (its fingerprint differs): not compared" in lines
    assert not any(line.startswith("  region: yours") for line in lines)
