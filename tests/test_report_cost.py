"""The report's cost columns: the in-run probe's paired ratios, the wall-clock fallback and its marking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from scipy import stats

from harness.report import build_report, plots
from harness.report.tables import aggregate_frame, extra_cost_text, results_frame, study_summaries
from tests.report_fixtures import (
    PROBE_MEMORY_KIND,
    PROBED_MIOU,
    PROBES,
    build_seeded_results,
    read_aggregate,
    read_results,
    table_under,
)

MIB = 2**20
NOT_PAIRED = "wall clock, not paired in-run"


@pytest.fixture(scope="module")
def probed_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Report of PROBED_MIOU: CE and six contrast variants over seeds 0-2, most runs with the cost probe."""
    root = tmp_path_factory.mktemp("probed")
    return build_report(build_seeded_results(root, PROBED_MIOU, probes=PROBES), root / "reports")


@pytest.fixture(scope="module")
def unprobed_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Report of the seeded study of tests/test_report.py, whose runs all predate the probe."""
    root = tmp_path_factory.mktemp("unprobed")
    return build_report(build_seeded_results(root), root / "reports")


def results_dir(report: Path) -> Path:
    """results/<recipe> behind a report built by the fixtures."""
    return report.parents[2] / "results" / report.parent.name


def summaries_by_seed(report: Path, variant: str) -> dict[int, dict]:
    """A variant's finished summary.json contents, read directly, by seed."""
    contents = [json.loads(path.read_text()) for path in (results_dir(report) / variant).glob("seed-*/summary.json")]
    return {content["seed"]: content for content in contents if content["status"] == "ok"}


def variants_table(report: Path) -> pd.DataFrame:
    """report.md's variants table, indexed by variant."""
    return table_under(report, "## Variants").set_index("variant")


def test_results_csv_carries_each_runs_probe(probed_report: Path) -> None:
    runs = pd.read_csv(probed_report.parent / "results.csv").set_index(["variant", "seed"])
    ratio, (low, high) = PROBES["costly"][1]
    costly = runs.loc[("costly", 1)]
    assert (costly["cost_ratio"], costly["cost_ratio_ci95_low"], costly["cost_ratio_ci95_high"]) == (ratio, low, high)
    assert costly["cost_probe_rounds"] == 20 and costly["contrast_extra_memory_bytes"] == 7 * MIB
    assert costly["contrast_extra_memory_kind"] == PROBE_MEMORY_KIND
    assert costly["contrast_ms_per_step"] == pytest.approx((ratio - 1) * 160)
    assert runs.loc["ce", "cost_ratio"].isna().all() and runs.loc["legacy", "cost_ratio"].isna().all()


def test_runs_table_labels_the_wall_clock_and_shows_the_ratio(probed_report: Path) -> None:
    table = table_under(probed_report, "## Runs").set_index(["variant", "seed"])
    assert "wall-clock s/iter" in table.columns and "s/iter" not in table.columns
    assert table.loc[("costly", "1"), "cost ratio [95 % CI]"] == "1.24 [1.20, 1.27]"
    assert table.loc[("ce", "0"), "cost ratio [95 % CI]"] == "" == table.loc[("legacy", "0"), "cost ratio [95 % CI]"]
    assert table.loc[("costly", "1"), "wall-clock s/iter"] == "0.193"


def test_variant_cost_is_the_mean_ratio_with_a_t_interval_over_seeds(probed_report: Path) -> None:
    row = read_aggregate(probed_report).loc["costly"]
    ratios = pd.Series([ratio for ratio, _ in PROBES["costly"]])
    low, high = stats.t.interval(0.95, 2, loc=ratios.mean(), scale=stats.sem(ratios))
    assert row["cost_source"] == "probe" and row["cost_seeds"] == 3
    assert (row["cost_ratio_mean"], row["cost_ratio_ci95_low"], row["cost_ratio_ci95_high"]) == pytest.approx(
        (ratios.mean(), low, high))
    assert (row["extra_cost_pct"], row["extra_cost_pct_ci95_low"], row["extra_cost_pct_ci95_high"]) == pytest.approx(
        ((ratios.mean() - 1) * 100, (low - 1) * 100, (high - 1) * 100))
    assert row["contrast_ms_per_step_mean"] == pytest.approx((ratios.mean() - 1) * 160)
    assert row["extra_memory_bytes"] == 7 * MIB and row["extra_memory_kind"] == PROBE_MEMORY_KIND
    cells = variants_table(probed_report).loc["costly"]
    assert cells["extra time vs CE (%) [95 % CI]"] == f"+22.0 [{(low - 1) * 100:+.1f}, {(high - 1) * 100:+.1f}]"
    assert cells["cost measured"] == "paired in-run"
    assert (cells["contrast ms/step"], cells["extra memory (MiB)"]) == ("35.2", "+7")


def test_one_seed_takes_the_runs_own_interval(probed_report: Path) -> None:
    row = read_aggregate(probed_report).loc["single"]
    assert (row["n_seeds"], row["cost_seeds"]) == (1, 1)
    assert (row["cost_ratio_mean"], row["cost_ratio_ci95_low"], row["cost_ratio_ci95_high"]) == pytest.approx(
        (1.10, 1.05, 1.16))
    assert variants_table(probed_report).loc["single", "extra time vs CE (%) [95 % CI]"] == "+10.0 [+5.0, +16.0]"


@pytest.mark.parametrize("variant", ["free", "single_free"])
def test_a_ratio_whose_interval_holds_1_is_not_cheaper(probed_report: Path, variant: str) -> None:
    row = read_aggregate(probed_report).loc[variant]
    assert row["cost_ratio_mean"] < 1 and row["cost_ratio_ci95_low"] < 1 < row["cost_ratio_ci95_high"]
    cells = variants_table(probed_report).loc[variant]
    interval = f"[{row['extra_cost_pct_ci95_low']:+.1f}, {row['extra_cost_pct_ci95_high']:+.1f}]"
    assert cells["extra time vs CE (%) [95 % CI]"] == f"≈ CE {interval}"  # the interval, never the negative mean
    assert row["contrast_ms_per_step_mean"] < 0 and cells["contrast ms/step"] == "≈ 0"
    assert variants_table(probed_report).loc["single_free", "extra time vs CE (%) [95 % CI]"] == "≈ CE [-8.0, +1.0]"


def test_extra_cost_text_signs_only_what_the_interval_shows() -> None:
    assert extra_cost_text(-5.0, -8.0, -2.0) == "-5.0 [-8.0, -2.0]"  # a saving the interval confirms
    assert extra_cost_text(-1.0, -4.0, 0.0) == "≈ CE [-4.0, +0.0]"
    assert extra_cost_text(-3.0, np.nan, np.nan) == "≈ CE (no CI)"
    assert extra_cost_text(2.2, np.nan, np.nan) == "+2.2 (no CI)"
    assert extra_cost_text(np.nan, np.nan, np.nan) == ""


def test_partly_probed_variant_uses_its_probed_seeds(probed_report: Path) -> None:
    row = read_aggregate(probed_report).loc["partly"]
    assert (row["n_seeds"], row["cost_seeds"], row["cost_ratio_mean"]) == (3, 2, pytest.approx(1.32))
    assert variants_table(probed_report).loc["partly", "cost measured"] == "paired in-run (2 of 3 seeds)"


def test_a_run_without_a_probe_falls_back_to_the_wall_clock(probed_report: Path) -> None:
    row = read_aggregate(probed_report).loc["legacy"]
    runs, base = summaries_by_seed(probed_report, "legacy"), summaries_by_seed(probed_report, "ce")
    ratios = pd.Series([runs[seed]["s_per_iter"] / base[seed]["s_per_iter"] for seed in sorted(runs)])
    low, high = stats.t.interval(0.95, 2, loc=ratios.mean(), scale=stats.sem(ratios))
    assert row["cost_source"] == "wall_clock"
    assert (row["cost_ratio_mean"], row["cost_ratio_ci95_low"], row["cost_ratio_ci95_high"]) == pytest.approx(
        (ratios.mean(), low, high))
    peaks = [runs[seed]["train_peak_memory_bytes"] - base[seed]["train_peak_memory_bytes"] for seed in runs]
    assert row["extra_memory_bytes"] == np.mean(peaks) and row["extra_memory_kind"] == "rss"
    assert pd.isna(row["contrast_ms_per_step_mean"])
    assert variants_table(probed_report).loc["legacy", "cost measured"] == NOT_PAIRED
    text = probed_report.read_text()
    assert f"**{NOT_PAIRED.capitalize()}:**" in text and f"Hollow points: {NOT_PAIRED}" in text


def test_baseline_is_the_reference(probed_report: Path) -> None:
    row = read_aggregate(probed_report).loc["ce"]
    assert row["cost_source"] == "reference" and pd.isna(row["cost_ratio_mean"])
    cells = variants_table(probed_report).loc["ce"]
    assert (cells["cost measured"], cells["extra time vs CE (%) [95 % CI]"]) == ("reference", "")


def test_report_says_what_the_cost_numbers_are(probed_report: Path) -> None:
    text = probed_report.read_text()
    assert "**Paired in-run** (the cost probe)" in text and "alternating ABBA on the same batches" in text
    assert "at steady state" in text and "here cpu, world size 1" in text and "over its 20 rounds" in text
    assert "minus the peak during CE's (GPU max allocated)." in text and "RSS moves" not in text
    caption = text.split("## Cost and benefit\n\n", 1)[1].split("\n", 1)[0]
    assert "Filled points: paired, in-run" in caption and "cpu, world size 1" in caption
    assert "horizontal whiskers: its 95 % CI" in caption


def captured_figure(monkeypatch: pytest.MonkeyPatch, report: Path) -> plots.plt.Figure:
    """The cost-benefit figure of `report`'s study, drawn again and kept open."""
    frame = results_frame(study_summaries(results_dir(report)))
    aggregate = aggregate_frame(frame)
    kept = []
    monkeypatch.setattr(plots, "save", lambda fig, path: kept.append(fig))
    plots.plot_cost_benefit(plots.cost_points(aggregate), plots.variant_colors(list(aggregate["variant"])),
                            plots.Look("val", "validation", ""), report.parent / "unused.png")
    return kept[0]


def test_figure_draws_the_fallback_hollow_with_cost_whiskers(
    monkeypatch: pytest.MonkeyPatch, probed_report: Path
) -> None:
    figure = captured_figure(monkeypatch, probed_report)
    time_panel = figure.axes[0]
    points = {text.get_text(): container for text, container in zip(time_panel.texts, time_panel.containers)}
    assert set(points) == set(PROBED_MIOU) - {"ce"}

    def face(variant: str) -> tuple[float, ...]:
        return to_rgba(points[variant].lines[0].get_markerfacecolor())

    assert face("legacy") == to_rgba("white") and face("costly") == to_rgba(points["costly"].lines[0].get_color())
    assert points["costly"].has_xerr and points["costly"].has_yerr
    plots.plt.close(figure)


def test_study_without_any_probe_builds_with_the_marking(unprobed_report: Path) -> None:
    table = variants_table(unprobed_report)
    contrast = table[table["contrast"] != "none"]
    assert (contrast["cost measured"] == NOT_PAIRED).all() and table.loc["ce", "cost measured"] == "reference"
    assert "contrast ms/step" not in table.columns
    assert "cost ratio [95 % CI]" not in table_under(unprobed_report, "## Runs").columns
    text = unprobed_report.read_text()
    assert "**Paired in-run**" not in text and "Filled points" not in text and f"Hollow points: {NOT_PAIRED}" in text
    assert (unprobed_report.parent / "cost_benefit.png").exists()
    assert read_results(unprobed_report)["cost_ratio"].isna().all()
    gain = read_aggregate(unprobed_report).loc["gain"]  # SEEDED_COST: region 0.19 + 0.003 seed over 0.16 + 0.003 seed
    assert gain["cost_ratio_mean"] == pytest.approx(np.mean([0.193 / 0.163, 0.196 / 0.166]))
