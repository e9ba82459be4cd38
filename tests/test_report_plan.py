"""The planning view: seeds for the target Δ and their training hours, in report.md and as `harness plan`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import cli
from harness.recipe import SweepSpec
from harness.report import build_report
from harness.report.stats import seeds_for
from harness.report.tables import aggregate_frame, plan_frame, results_frame, study_summaries
from harness.results import write_sweep
from tests.report_fixtures import build_results, build_seeded_results

HOUR = 3600


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results/seeded/ of the report fixtures: `ce` and four variants over seeds 0-2, some failed."""
    return build_seeded_results(tmp_path_factory.mktemp("plan"))


def finished(results_dir: Path, variant: str) -> dict[int, dict]:
    """A variant's finished summaries, read directly, by seed."""
    contents = [json.loads(path.read_text()) for path in (results_dir / variant).glob("seed-*/summary.json")]
    return {content["seed"]: content for content in contents if content["status"] == "ok"}


def run_hours(results_dir: Path, variant: str) -> float:
    """Mean training hours of a variant's finished runs, s/iter x iterations, from summary.json."""
    runs = finished(results_dir, variant).values()
    return float(np.mean([run["s_per_iter"] * run["iterations"] / HOUR for run in runs]))


def expected_plan(results_dir: Path, variant: str, target: float) -> dict[str, float]:
    """The planning row computed straight from the summaries."""
    runs, base = finished(results_dir, variant), finished(results_dir, "ce")
    deltas = [runs[seed]["miou"] - base[seed]["miou"] for seed in sorted(set(runs) & set(base))]
    seeds = seeds_for(target, np.std(deltas, ddof=1))
    hours = run_hours(results_dir, variant), run_hours(results_dir, "ce")
    return {"n_pairs": len(deltas), "seeds_for_target": seeds, "seeds_to_add": max(seeds - len(deltas), 0),
            "variant_run_hours": hours[0], "baseline_run_hours": hours[1], "study_hours": seeds * sum(hours)}


def plan_of(results_dir: Path, target: float = 0.005) -> pd.DataFrame:
    """plan_frame of a results folder, by variant."""
    aggregate = aggregate_frame(results_frame(study_summaries(results_dir)), target_delta=target)
    return plan_frame(aggregate).set_index("variant")


@pytest.mark.parametrize("variant", ["gain", "loss", "overlap"])
def test_plan_rows_follow_from_the_summaries(seeded: Path, variant: str) -> None:
    expected = expected_plan(seeded, variant, 0.005)
    assert plan_of(seeded).loc[variant, list(expected)].to_dict() == pytest.approx(expected)


def test_plan_leaves_out_the_baseline_and_variants_without_two_pairs(seeded: Path) -> None:
    assert list(plan_of(seeded).index) == ["gain", "loss", "overlap"]  # `single` finished one seed


def test_a_smaller_target_needs_more_seeds(seeded: Path) -> None:
    coarse, fine = plan_of(seeded, 0.02), plan_of(seeded, 0.005)
    assert (coarse["seeds_for_target"] <= fine["seeds_for_target"]).all()
    assert coarse.loc["loss", "seeds_for_target"] < fine.loc["loss", "seeds_for_target"]


def test_harness_plan_prints_the_table(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", str(seeded)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert "a true Δ of 0.50 pp" in out and "seeds for Δ = 0.50 pp" in lines[0]
    row = next(line for line in lines if line.startswith("| overlap |"))
    assert f"| {expected_plan(seeded, 'overlap', 0.005)['seeds_for_target']:.0f} |" in row
    assert len(lines) == 2 + 3


def test_harness_plan_reads_the_target_from_sweep_json_and_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results_dir = build_seeded_results(tmp_path)
    write_sweep(results_dir, SweepSpec(seeds=[0, 1, 2], target_delta=0.02))
    cli.main(["plan", str(results_dir)])
    assert "seeds for Δ = 2.00 pp" in capsys.readouterr().out
    cli.main(["plan", str(results_dir), "--target-delta", "0.001"])
    out = capsys.readouterr().out
    assert "seeds for Δ = 0.10 pp" in out and "| overlap | 3.06 | >1000 |" in out  # past the search's cap


def test_harness_plan_without_pairs_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["plan", str(build_results(tmp_path, arrays=False))])
    assert "no SD of Δ to plan from" in capsys.readouterr().out


def test_report_has_the_planning_and_detection_sections(seeded: Path, tmp_path: Path) -> None:
    text = build_report(seeded, tmp_path / "reports").read_text()
    assert "## What this study can detect" in text and "## Planning" in text
    assert "with 2 pairs, 2/4 = 0.5; with 3 pairs, 2/8 = 0.25" in text  # the sign-flip p's floors
    assert "no difference detected" not in text
    assert "wall-clock time on the machine these runs used (cpu, world size 1)" in text
