"""Every committed recipe and every committed run's recipe.yaml still validates to the fingerprint it had before
contrast kinds became specs (issue 29): resuming a run, or skipping a finished one, compares fingerprints, so a change
here would break the committed studies and any study running from these recipes.

tests/test_kind_fingerprints.json was computed by the code before that change: `recipes` maps each recipe file
then committed to its runs' fingerprints (by run label); `runs` holds those of committed runs whose summary
predates the summary's `fingerprint` field. Every other run is held to the fingerprint its summary recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from harness.engine.terms import check_contrast
from harness.recipe import fingerprint, load, validate
from harness.results import run_label
from tests.conftest import REPO

EXPECTED = json.loads((Path(__file__).with_suffix(".json")).read_text())


@pytest.mark.parametrize("recipe", sorted(EXPECTED["recipes"]))
def test_a_committed_recipe_keeps_its_fingerprints_and_passes_the_kinds_check(recipe: str) -> None:
    variants = load(REPO / recipe)
    assert {run_label(variant.name, variant.seed): fingerprint(variant.recipe) for variant in variants} == (
        EXPECTED["recipes"][recipe])
    for variant in variants:
        check_contrast(variant.recipe.loss.contrast)


def recorded(recipe_file: Path) -> str | None:
    """The fingerprint a run's summary recorded beside its recipe.yaml, else the table's (older summaries)."""
    summary = recipe_file.parent / "summary.json"
    found = json.loads(summary.read_text()).get("fingerprint") if summary.exists() else None
    return found or EXPECTED["runs"].get(recipe_file.relative_to(REPO).as_posix())


def test_every_committed_run_keeps_its_fingerprint() -> None:
    files = sorted((REPO / "results").glob("**/recipe.yaml"))
    assert len(files) >= len(EXPECTED["runs"])
    for path in files:
        expected = recorded(path)
        assert expected is not None, f"{path}: no fingerprint recorded for this run"
        assert fingerprint(validate(yaml.safe_load(path.read_text()))) == expected, path
