"""A sequential study run by `harness submit --until-decided`: the controller asks the report's decision code which
seeds each variant needs, submits look after look of the undecided variants only (real local jobs), and ends with
the report.

Runs of a few iterations learn nothing (their predictions collapse, and the report gives collapsed runs no
verdict), so the waves a real study would take are checked in two halves: the decisions of a fixture study turned
into the seeds each variant needs, and the loop that submits exactly those, wave after wave, with real jobs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks.study_jobs import ENV
from harness import cli, load_study, submit
from harness.command import EXIT_BAD_INPUT
from harness.recipe import load_sweep
from harness.results import read_study, run_folders
from tests.report_fixtures import SEQUENTIAL_MIOU, SEQUENTIAL_SWEEP, build_seeded_results

SEEDS = [0, 1, 2, 3]
LOOKS = [3, 4]
STUDY_TIMEOUT_S = 900


def sequential_recipe(folder: Path, variants: dict | None = None, looks: list[int] = LOOKS) -> Path:
    """A tiny sequential study: ce, and `same` (CE again under another name) and `other` (another learning rate)."""
    tree = {
        "run": {"name": "sequential", "output_dir": str(folder / "results"), "reports_dir": str(folder / "reports"),
                "log_interval": 2, "cost_probe": False, "deterministic": True},
        "data": {"dataset": "digit_scenes", "root": str(folder / "cache"), "crop_size": 32, "batch_size": 2,
                 "digit_scenes": {"train_images": 8, "val_images": 4, "image_size": 32, "digits_per_image": [1, 2]}},
        "model": {"backbone": "resnet10t", "head_channels": 8, "aux_channels": 8},
        "optim": {"iterations": 4},
        "sweep": {"design": "sequential", "seeds": SEEDS[:looks[-1]], "looks": looks, "baseline": "ce",
                  "variants": variants or {"ce": {}, "same": {}, "other": {"optim.lr": 0.05}}},
    }
    path = folder / "sequential.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def ran(study_dir: Path) -> dict[str, set[int]]:
    """The seeds each variant has a run folder of."""
    seeds: dict[str, set[int]] = {}
    for folder in run_folders(study_dir):
        seeds.setdefault(folder.parent.name, set()).add(int(folder.name.removeprefix("seed-")))
    return seeds


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


def test_the_decisions_say_which_seeds_each_variant_needs(tmp_path: Path) -> None:
    """The fixture's `early` stopped at its first look, `waiting` needs its second (10 seeds), `undecided` reached
    max_seeds: the controller runs nothing more of the first and the last, and the baseline as far as `waiting`."""
    results_dir = build_seeded_results(tmp_path, SEQUENTIAL_MIOU, sweep=SEQUENTIAL_SWEEP)
    _, sweep = load_sweep_of(tmp_path, SEQUENTIAL_SWEEP)
    wanted = submit.seeds_wanted(sweep, results_dir, ["ce", "early", "waiting", "undecided"])
    assert wanted == {"early": 0, "waiting": 10, "undecided": 0, "ce": 10}
    assert submit.seeds_wanted(sweep, tmp_path / "nothing yet", ["ce", "early"]) == {"early": 5, "ce": 5}


def load_sweep_of(folder: Path, sweep: dict) -> tuple[list, object]:
    """The fixture study's sweep as a recipe would declare it (seeds 0-9, baseline ce)."""
    path = folder / "fixture.yaml"
    variants = {name: {} for name in SEQUENTIAL_MIOU}
    path.write_text(yaml.safe_dump({"sweep": {**sweep, "seeds": list(range(10)), "baseline": "ce",
                                              "variants": variants}}))
    return load_sweep(path)


def test_until_decided_submits_wave_after_wave_only_what_is_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop with real local jobs, its decisions scripted: look 1 for everyone; then `same` is decided and
    `other` needs its second look; then every variant is decided."""
    recipe = sequential_recipe(tmp_path)
    args = submit.parse_args([str(recipe), "--executor", "local", "--until-decided", "--max-parallel", "2"])
    every_run, sweep = load_sweep(recipe)
    study_dir = tmp_path / "results" / "sequential"
    waves = iter([{"same": 3, "other": 3, "ce": 3}, {"same": 0, "other": 4, "ce": 4}, {"same": 0, "other": 0, "ce": 0}])
    seen: list[dict[str, set[int]]] = []

    def scripted(sweep: object, recipe_dir: Path, variants: list[str]) -> dict[str, int]:
        seen.append(ran(recipe_dir) if recipe_dir.exists() else {})
        return next(waves)

    monkeypatch.setattr(submit, "seeds_wanted", scripted)
    monkeypatch.chdir(tmp_path)
    assert submit.until_decided(args, every_run, sweep, study_dir, tmp_path / "reports") == 0
    assert seen[1] == {"ce": {0, 1, 2}, "same": {0, 1, 2}, "other": {0, 1, 2}}  # look 1 of everyone
    assert seen[2] == {"ce": {0, 1, 2, 3}, "same": {0, 1, 2}, "other": {0, 1, 2, 3}}  # look 2 of `other` alone
    assert all(run.state == "finished" for run in read_study(study_dir).runs)
    assert (tmp_path / "reports" / "sequential" / "report.md").is_file()


def test_the_controller_job_runs_a_study_and_submitting_again_continues_it(tmp_path: Path) -> None:
    """`harness submit --until-decided --wait` end to end: the controller is a job, it runs the first look, its
    collapsed runs get no verdict (nothing to decide on: no further look), and it ends with the report."""
    recipe = sequential_recipe(tmp_path, {"ce": {}, "same": {}}, looks=[3])
    command = [sys.executable, "-m", "harness.submit", str(recipe), "--executor", "local", "--until-decided",
               "--max-parallel", "2", "--wait"]
    done = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=STUDY_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    study_dir = tmp_path / "results" / "sequential"
    assert ran(study_dir) == {"ce": {0, 1, 2}, "same": {0, 1, 2}}
    manifest = read_study(study_dir)
    assert manifest.controller_job_id is not None and all(run.state == "finished" for run in manifest.runs)
    assert load_study(study_dir).aggregate.set_index("variant").at["same", "verdict"] == "collapsed runs: no verdict"
    assert (tmp_path / "reports" / "sequential" / "report.md").is_file()
    again = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=STUDY_TIMEOUT_S)
    assert again.returncode == 0 and len(read_study(study_dir).runs) == 6, again.stdout[-3000:]
    assert read_study(study_dir).controller_job_id != manifest.controller_job_id  # a new controller looked again
