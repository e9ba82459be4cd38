"""The registry of contrast kinds: a kind from a package outside the harness trains in a sweep like a built-in one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.engine.terms import CONTRAST_KINDS, ENTRY_POINT_GROUP, check_contrast_kind, contrast_kinds
from harness.recipe import RecipeError
from tests.conftest import CPU_ENV, RUN, check
from tests.test_run import tiny_recipe, write

# A researcher's package: one module implementing ContrastTerm, and one entry point naming its factory.
TOY_MODULE = '''
"""A toy contrastive loss: the mean squared cosine similarity between this rank's region centers."""

import torch
import torch.nn.functional as F

from harness.engine.terms import TermInputs
from harness.engine.terms.region import local_centers


class ToyTerm:
    bank = None  # in-batch: nothing to remember

    def __init__(self, inputs: TermInputs) -> None:
        self.inputs = inputs

    def __call__(self, output, batch, with_loss=True, push=True):
        if not with_loss:
            return None
        centers, valid = local_centers(self.inputs, output, batch["label"])  # [B,N,C], [B,N]
        unit = F.normalize(centers[valid], dim=1)  # [M,C]
        return (unit @ unit.T).pow(2).mean() / self.inputs.cfg.tau


def toy_term(inputs: TermInputs) -> ToyTerm:
    return ToyTerm(inputs)
'''
ENTRY_POINTS = f"[{ENTRY_POINT_GROUP}]\ntoy = toy_contrast:toy_term\n"


def install_toy_package(site: Path) -> None:
    """toy_contrast, importable from `site`, declaring its kind as an installed distribution does."""
    dist_info = site / "toy_contrast-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (site / "toy_contrast.py").write_text(textwrap.dedent(TOY_MODULE))
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-contrast\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(ENTRY_POINTS)


def test_built_in_kinds_are_registry_entries_and_unknown_kinds_are_named() -> None:
    assert {"none", "region", "pixel", "all_pixel"} <= set(contrast_kinds()) and set(CONTRAST_KINDS) <= set(contrast_kinds())
    with pytest.raises(RecipeError) as error:
        check_contrast_kind("everything")
    assert error.value.key == "loss.contrast.kind" and "region" in error.value.message


@pytest.mark.slow
@pytest.mark.distributed
def test_a_kind_registered_from_outside_runs_a_two_variant_sweep(tmp_path: Path) -> None:
    site = tmp_path / "site"
    install_toy_package(site)
    tree = tiny_recipe(tmp_path, optim={"iterations": 3})
    tree["sweep"] = {"variants": {"ce": {"loss.contrast.kind": "none"}, "toy": {"loss.contrast.kind": "toy"}},
                     "baseline": "ce"}
    env = {**CPU_ENV, "PYTHONPATH": os.pathsep.join([str(site), CPU_ENV["PYTHONPATH"]])}
    check(subprocess.run([sys.executable, RUN, str(write(tmp_path, tree))], capture_output=True, text=True,
                         cwd=tmp_path, env=env))
    results = tmp_path / "results" / "tiny"
    toy = json.loads((results / "toy" / "summary.json").read_text())
    assert toy["status"] == "ok" and toy["contrast_kind"] == "toy"
    records = [json.loads(line) for line in (results / "toy" / "metrics.jsonl").read_text().splitlines()]
    assert all(record["loss_contrast"] > 0 for record in records if record["kind"] == "train")
    assert "loss_contrast" not in (results / "ce" / "metrics.jsonl").read_text()
    assert (tmp_path / "reports" / "tiny" / "report.md").is_file()
    # Without the package on the path, the kind is unknown: exit 2 before anything is written.
    done = subprocess.run([sys.executable, RUN, str(write(tmp_path, tree)), "--set", "run.name=again"],
                          capture_output=True, text=True, cwd=tmp_path, env=CPU_ENV)
    assert done.returncode == 2 and "loss.contrast.kind: unknown kind 'toy'" in done.stderr
    assert not (tmp_path / "results" / "again").exists()
