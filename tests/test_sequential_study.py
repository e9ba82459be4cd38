"""A sequential study run by `harness submit --until-decided` through the local executor: its controller job
submits look after look of the undecided variants only, and ends with the report, each variant stopped where the
design decided it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks.study_jobs import ENV
from harness import cli, load_study
from harness.command import EXIT_BAD_INPUT
from harness.results import read_study, run_folders

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
SEEDS = [0, 1, 2, 3]
LOOKS = [3, 4]
STUDY_TIMEOUT_S = 1200


def sequential_recipe(folder: Path) -> Path:
    """ce; `same`, CE again under another name (its Δ is exactly 0 on every seed: equivalent at the first look);
    `other`, CE at another learning rate (a Δ no first look at three seeds decides)."""
    tree = {
        "run": {"name": "sequential", "output_dir": str(folder / "results"), "reports_dir": str(folder / "reports"),
                "log_interval": 2, "cost_probe": False, "deterministic": True},
        "data": {"dataset": "digit_scenes", "root": str(folder / "cache"), "crop_size": 32, "batch_size": 2,
                 "digit_scenes": {"train_images": 8, "val_images": 4, "image_size": 32, "digits_per_image": [1, 2]}},
        "model": {"backbone": "resnet10t", "head_channels": 8, "aux_channels": 8},
        "optim": {"iterations": 4},
        "sweep": {"design": "sequential", "seeds": SEEDS, "looks": LOOKS, "baseline": "ce",
                  "variants": {"ce": {}, "same": {}, "other": {"optim.lr": 0.05}}},
    }
    path = folder / "sequential.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def test_a_sequential_study_needs_until_decided_and_a_fixed_one_refuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = sequential_recipe(tmp_path)
    assert cli.main(["submit", str(recipe), "--executor", "local"]) == EXIT_BAD_INPUT
    assert "--until-decided" in capsys.readouterr().err
    fixed = yaml.safe_load(recipe.read_text())
    fixed["sweep"] = {"seeds": SEEDS, "variants": fixed["sweep"]["variants"]}
    recipe.write_text(yaml.safe_dump(fixed))
    assert cli.main(["submit", str(recipe), "--executor", "local", "--until-decided"]) == EXIT_BAD_INPUT
    assert "sweep.design: sequential" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_until_decided_runs_each_variant_to_its_decision_and_no_further(tmp_path: Path) -> None:
    recipe = sequential_recipe(tmp_path)
    command = [sys.executable, "-m", "harness.submit", str(recipe), "--executor", "local", "--until-decided",
               "--max-parallel", "2", "--wait"]
    done = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=STUDY_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    study_dir = tmp_path / "results" / "sequential"
    ran = {(folder.parent.name, int(folder.name.removeprefix("seed-"))) for folder in run_folders(study_dir)}
    aggregate = load_study(study_dir).aggregate.set_index("variant")
    assert aggregate.at["same", "verdict"] == "equivalent" and aggregate.at["same", "seeds_used"] == LOOKS[0]
    assert aggregate.at["other", "verdict"] in {"better", "worse", "equivalent", "inconclusive"}
    for variant in ("same", "other"):  # each ran its seeds up to the look that decided it, and no further
        assert {seed for name, seed in ran if name == variant} == set(SEEDS[:aggregate.at[variant, "seeds_used"]])
    needed = max(aggregate.at[variant, "seeds_used"] for variant in ("same", "other"))
    assert {seed for name, seed in ran if name == "ce"} == set(SEEDS[:needed])  # as far as any variant needed
    manifest = read_study(study_dir)
    assert manifest.controller_job_id is not None and all(run.state == "finished" for run in manifest.runs)
    assert (tmp_path / "reports" / "sequential" / "report.md").is_file()
    # Submitting again finds every variant decided: the controller starts, submits nothing and rebuilds the report.
    again = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and len(read_study(study_dir).runs) == len(ran), again.stdout[-3000:]
