"""The planning view: seeds for the target Δ at the family's level, at the pilot's SD and at its upper confidence
limit, their training hours from the mean step, and the sequential design's runs to a decision; in report.md and as
`harness plan`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness import cli
from harness.recipe import SweepSpec
from harness.report import build_report, design
from harness.report.planning import plan_frame
from harness.report.tables import aggregate_frame, results_frame, study_summaries
from harness.results import write_sweep
from tests.report_fixtures import FAMILY_MIOU, build_results, build_seeded_results

HOUR = 3600
TARGET = 0.005
# FAMILY_MIOU without `overlap`, whose SD (2.5 pp) needs more seeds than the sequential planning simulates; every
# run newer than the mean step time, 25 % above its median.
PILOT_MIOU = {variant: runs for variant, runs in FAMILY_MIOU.items() if variant != "overlap"}
MEAN_STEP = 1.25


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results/seeded/ of the report fixtures: `ce` and four variants over seeds 0-2, some failed; summaries older
    than the mean step time."""
    return build_seeded_results(tmp_path_factory.mktemp("plan"))


@pytest.fixture(scope="module")
def pilot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PILOT_MIOU: CE and four variants over five seeds, each summary with its mean step time."""
    root = tmp_path_factory.mktemp("pilot")
    results_dir = build_seeded_results(root, PILOT_MIOU)
    for path in results_dir.glob("*/seed-*/summary.json"):  # the mean step, as newer runs record it
        content = json.loads(path.read_text())
        path.write_text(json.dumps({**content, "s_per_iter_mean": content["s_per_iter"] * MEAN_STEP}))
    return results_dir


def finished(results_dir: Path, variant: str) -> dict[int, dict]:
    """A variant's finished summaries, read directly, by seed."""
    contents = [json.loads(path.read_text()) for path in (results_dir / variant).glob("seed-*/summary.json")]
    return {content["seed"]: content for content in contents if content["status"] == "ok"}


def run_hours(results_dir: Path, variant: str) -> float:
    """Mean training hours of a variant's finished runs, from summary.json: the mean step (the median for runs older
    than it) x iterations."""
    runs = finished(results_dir, variant).values()
    return float(np.mean([run.get("s_per_iter_mean", run["s_per_iter"]) * run["iterations"] / HOUR for run in runs]))


def brute_force_seeds(target: float, sd: float, variants: int) -> float:
    """The first n from 2 whose paired t-test at 0.05 / variants reaches 80 % power, from the noncentral t."""
    for pairs in range(2, 1001):
        critical = stats.t.ppf(1 - 0.05 / variants / 2, pairs - 1)
        shift = target / sd * np.sqrt(pairs)
        if stats.nct.sf(critical, pairs - 1, shift) + stats.nct.cdf(-critical, pairs - 1, shift) >= 0.8:
            return float(pairs)
    return np.nan


def expected_plan(results_dir: Path, variant: str, target: float, variants: int) -> dict[str, float]:
    """The planning row computed straight from the summaries."""
    runs, base = finished(results_dir, variant), finished(results_dir, "ce")
    deltas = [runs[seed]["miou"] - base[seed]["miou"] for seed in sorted(set(runs) & set(base))]
    sd, pairs = np.std(deltas, ddof=1), len(deltas)
    upper = sd * np.sqrt((pairs - 1) / stats.chi2.ppf(0.2, pairs - 1))
    seeds, seeds_upper = brute_force_seeds(target, sd, variants), brute_force_seeds(target, upper, variants)
    hours = run_hours(results_dir, variant), run_hours(results_dir, "ce")
    return {"n_pairs": pairs, "delta_std_upper": upper, "seeds_for_target": seeds, "seeds_upper": seeds_upper,
            "seeds_to_add": max(seeds_upper - pairs, 0), "variant_run_hours": hours[0],
            "baseline_run_hours": hours[1], "study_hours": seeds * sum(hours),
            "study_hours_upper": seeds_upper * sum(hours)}


def plan_of(results_dir: Path, target: float = TARGET) -> pd.DataFrame:
    """plan_frame of a results folder, by variant."""
    return plan_frame(aggregate_frame(results_frame(study_summaries(results_dir))), target).set_index("variant")


@pytest.mark.parametrize("variant", ["gain", "loss", "overlap"])
def test_plan_rows_follow_from_the_summaries(seeded: Path, variant: str) -> None:
    """Seeds at α / 4 (four variants), at the SD and at its 80 % upper limit; hours from the median step (these
    summaries predate the mean)."""
    expected = expected_plan(seeded, variant, TARGET, variants=4)
    assert plan_of(seeded).loc[variant, list(expected)].to_dict() == pytest.approx(expected, nan_ok=True)


def test_plan_hours_use_the_mean_step(pilot: Path) -> None:
    expected = expected_plan(pilot, "gain", TARGET, variants=4)
    row = plan_of(pilot).loc["gain"]
    assert row[list(expected)].to_dict() == pytest.approx(expected)
    median_hours = np.mean([run["s_per_iter"] * run["iterations"] / HOUR for run in finished(pilot, "gain").values()])
    assert row["variant_run_hours"] == pytest.approx(MEAN_STEP * median_hours)


def test_plan_leaves_out_the_baseline_and_variants_without_two_pairs(seeded: Path) -> None:
    assert list(plan_of(seeded).index) == ["gain", "loss", "overlap"]  # `single` finished one seed


def test_the_sd_upper_limit_asks_for_more_seeds(seeded: Path) -> None:
    plan = plan_of(seeded)
    assert (plan["delta_std_upper"] > plan["delta_std"]).all()
    assert (plan["seeds_upper"].fillna(np.inf) >= plan["seeds_for_target"]).all()
    assert plan.loc["loss", "seeds_upper"] > plan.loc["loss", "seeds_for_target"]


def test_a_smaller_target_needs_more_seeds(seeded: Path) -> None:
    coarse, fine = plan_of(seeded, 0.02), plan_of(seeded, TARGET)
    assert (coarse["seeds_for_target"] <= fine["seeds_for_target"]).all()
    assert coarse.loc["loss", "seeds_for_target"] < fine.loc["loss", "seeds_for_target"]


def test_harness_plan_prints_the_table(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", str(seeded)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert "a true Δ of 0.50 pp" in out and "two-sided α = 0.05 / 4 variants" in out
    assert "seeds for Δ = 0.50 pp at it" in lines[0] and "seeds at the upper limit" in lines[0]
    row = next(line for line in lines if line.startswith("| overlap |"))
    assert f"| {expected_plan(seeded, 'overlap', TARGET, 4)['seeds_for_target']:.0f} |" in row
    assert len(lines) == 2 + 3
    assert "an SD from a few pilot seeds is itself uncertain" in out
    assert "these runs are older than the mean step time and use their median s/iter instead" in out


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


def test_harness_plan_sequential_sets_both_designs_side_by_side(
    pilot: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Per variant and true Δ (0, target, 2 x target): the fixed design's seeds at its power beside the sequential
    design's max_seeds, looks and mean seeds to a decision, from design.plan_sequential; the recipe's looks planned
    at the largest SD."""
    assert cli.main(["plan", str(pilot), "--design", "sequential"]) == 0
    out = capsys.readouterr().out
    table = pd.DataFrame([[cell.strip() for cell in line.strip()[1:-1].split("|")]
                          for line in out.splitlines() if line.startswith("| ")])
    table = table.iloc[2:].set_axis(list(table.iloc[0]), axis=1)
    assert list(table["variant"]) == [name for name in sorted(PILOT_MIOU) if name != "ce" for _ in range(3)]
    assert list(table["true Δ"][:3]) == ["0.00 pp", "0.50 pp", "1.00 pp"]
    aggregate = aggregate_frame(results_frame(study_summaries(pilot))).set_index("variant")
    sd = aggregate.loc["gain", "delta_std"]
    plan = design.plan_sequential(TARGET, sd, 4, 0.005)
    gain = table[table["variant"] == "gain"]
    assert set(gain["fixed: seeds"]) == {str(design.fixed_seeds(TARGET, sd, 4))}
    assert set(gain["sequential: max_seeds (looks)"]) == {
        f"{plan.design.max_seeds} ({', '.join(map(str, design.default_looks(plan.design.max_seeds)))})"}
    assert list(gain["sequential: mean seeds"]) == [f"{runs.variant_seeds:.1f}" for runs in plan.runs]
    widest = aggregate["delta_std"].idxmax()
    top = design.plan_sequential(TARGET, aggregate.loc[widest, "delta_std"], 4, 0.005).design
    assert (f"planned at the largest SD seen (`{widest}`): `sweep: {{design: sequential, max_seeds: {top.max_seeds}, "
            f"looks: [{', '.join(map(str, top.looks))}]}}`") in out


def test_report_has_the_planning_and_detection_sections(seeded: Path, tmp_path: Path) -> None:
    text = build_report(seeded, tmp_path / "reports").read_text()
    assert "## What this study can detect" in text and "## Planning" in text
    assert "with 2 pairs, 2/4 = 0.5; with 3 pairs, 2/8 = 0.25" in text  # the sign-flip p's floors
    assert "wall-clock time on the machine these runs used (cpu, world size 1)" in text
    assert "A fixed design: per variant" in text and "A sequential design" not in text
