"""The report's cost columns: the in-run probe's paired ratios, the wall-clock fallback and its marking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgba
from scipy import stats

from harness.report import build_report, plots
from harness.report.tables import aggregate_frame, extra_cost_text, extra_memory_text, results_frame, study_summaries
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


def test_runs_table_names_the_median_step_and_shows_the_ratio(probed_report: Path) -> None:
    table = table_under(probed_report, "## Runs").set_index(["variant", "seed"])
    assert "median s/iter" in table.columns and not [column for column in table.columns if "wall-clock" in column]
    assert table.loc[("costly", "1"), "cost ratio [95 % CI]"] == "1.24 [1.20, 1.27]"
    assert table.loc[("ce", "0"), "cost ratio [95 % CI]"] == "" == table.loc[("legacy", "0"), "cost ratio [95 % CI]"]
    assert table.loc[("costly", "1"), "median s/iter"] == "0.193"
    assert "median s/iter" in variants_table(probed_report).columns
    text = probed_report.read_text()
    assert "wall-clock s/iter" not in text and "Median s/iter is each run's median timed training step" in text


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
    # beside the probe's contrast ms/step and the training's contrast ms/iter: why they differ
    assert "the probe's is the whole training step with and without the term, backward and bank push included, " \
        "paired; the training's times only the term's forward and bank push inside each step" in text
    caption = text.split("## Cost and benefit\n\n", 1)[1].split("\n", 1)[0]
    assert "Filled points: paired, in-run" in caption and "cpu, world size 1" in caption
    assert "horizontal whiskers: its 95 % CI" in caption


def captured_figure(monkeypatch: pytest.MonkeyPatch, report: Path) -> plots.plt.Figure:
    """The cost-benefit figure of `report`'s study, drawn again and kept open."""
    frame = results_frame(study_summaries(results_dir(report)))
    return drawn(monkeypatch, plots.cost_points(aggregate_frame(frame)))


def drawn(monkeypatch: pytest.MonkeyPatch, points: pd.DataFrame) -> plots.plt.Figure:
    """The cost-benefit figure of `points` (cost_points' frame), kept open."""
    kept = []
    monkeypatch.setattr(plots, "save", lambda fig, path: kept.append(fig))
    plots.plot_cost_benefit(points, plots.variant_colors(list(points["variant"])), plots.Look("val", "validation", ""),
                            Path("unused.png"))
    return kept[0]


def test_figure_draws_the_fallback_hollow_with_cost_whiskers(
    monkeypatch: pytest.MonkeyPatch, probed_report: Path
) -> None:
    figure = captured_figure(monkeypatch, probed_report)
    time_panel = figure.axes[0]
    # a label is the variant's name, ' (≈ CE)' added where its saving is drawn at 0
    points = {text.get_text().removesuffix(" (≈ CE)"): container
              for text, container in zip(time_panel.texts, time_panel.containers)}
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


def test_probe_and_wall_clock_disagreeing_say_why(probed_report: Path) -> None:
    """`free`'s probe reads ≈ CE while its runs' median s/iter sit 18 % above CE's (separate runs): the report names
    it and says why the two differ; `costly`, whose runs' clocks fall inside its probe's interval, is not named."""
    note = next(line for line in probed_report.read_text().splitlines() if line.startswith("**Probe and wall clock"))
    row = read_aggregate(probed_report).loc["free"]
    assert row["wall_clock_extra_pct"] > row["extra_cost_pct_ci95_high"]
    assert "`free` (probe ≈ CE [" in note and "`costly`" not in note
    assert "separate runs on a loaded machine" in note and "pairs both steps in one process" in note


def test_a_missing_probe_gives_its_true_reason(tmp_path: Path) -> None:
    """A run whose summary says the probe was switched off reads so; one whose summary has no such field (older than
    it) reads 'summaries older than the probe'; the baseline, with no contrast term, is not listed."""
    runs = {"ce": PROBED_MIOU["ce"], "off": PROBED_MIOU["costly"], "legacy": PROBED_MIOU["legacy"]}
    fields = {"ce": {"cost_probe_skipped": "no contrast term"}, "off": {"cost_probe_skipped": "run.cost_probe: false"}}
    report = build_report(build_seeded_results(tmp_path, runs, fields=fields), tmp_path / "reports")
    note = next(line for line in report.read_text().splitlines() if line.startswith(f"**{NOT_PAIRED.capitalize()}"))
    assert "`off`: switched off (run.cost_probe: false)" in note
    assert "`legacy`: summaries older than the probe" in note and "`ce`" not in note


def test_negative_extra_memory_reads_as_ce() -> None:
    """No interval exists for extra memory: a negative one is noise, read ≈ CE."""
    assert extra_memory_text(-0.04) == "≈ CE" and extra_memory_text(7.0) == "+7" and extra_memory_text(0.2) == "+0"


def cost_frame(time: list[tuple[float, float, float]], memory_mib: list[float], delta_ci: bool = True) -> pd.DataFrame:
    """cost_points' frame of variants a, b, ... with these extra times (%, low, high) and extra memories."""
    count = len(time)
    pct, low, high = (np.array(column, dtype=float) for column in zip(*time))
    return pd.DataFrame({
        "variant": [chr(ord("a") + index) for index in range(count)], "delta_mean": np.full(count, 0.01),
        "delta_ci95_low": np.full(count, 0.005 if delta_ci else np.nan),
        "delta_ci95_high": np.full(count, 0.015 if delta_ci else np.nan),
        "extra_cost_pct": pct, "extra_cost_pct_ci95_low": low, "extra_cost_pct_ci95_high": high,
        "extra_memory_mib": memory_mib, "cost_source": ["probe"] * count,
    })


def point_x(panel: plots.plt.Axes, variant: str) -> float:
    """Where a variant's point lies on a panel's x axis, by its label."""
    for text, container in zip(panel.texts, panel.containers):
        if text.get_text().removesuffix(" (≈ CE)") == variant:
            return float(container.lines[0].get_xdata()[0])
    raise KeyError(variant)


def test_unconfirmed_savings_are_drawn_at_zero_and_marked(monkeypatch: pytest.MonkeyPatch) -> None:
    """a: a saving inside an interval that holds 0 (time) and -3 MiB (memory, which has no interval): both at 0, both
    labelled ≈ CE and ringed; b: a saving its interval confirms, drawn where it is; c: a cost, drawn where it is."""
    figure = drawn(monkeypatch, cost_frame([(-2.0, -6.0, 1.5), (-5.0, -8.0, -2.0), (12.0, 9.0, 15.0)],
                                           [-3.0, 4.0, 6.0]))
    time, memory = figure.axes[:2]
    assert point_x(time, "a") == 0.0 and point_x(time, "b") == -5.0 and point_x(time, "c") == 12.0
    assert point_x(memory, "a") == 0.0 and point_x(memory, "b") == 4.0
    labels = {text.get_text() for text in time.texts} | {text.get_text() for text in memory.texts}
    assert {"a (≈ CE)", "b", "c"} <= labels and "b (≈ CE)" not in labels
    rings = [[item for item in panel.collections if isinstance(item, PathCollection)] for panel in (time, memory)]
    assert [len(ring) for ring in rings] == [1, 1] and rings[0][0].get_offsets()[0][0] == 0.0  # a's, at 0
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "≈ CE: a saving no interval shows, drawn at 0" in legend
    plots.plt.close(figure)


def test_memory_axis_spans_at_least_one_mib(monkeypatch: pytest.MonkeyPatch) -> None:
    """One point at +0.04 MiB: the axis spans ±1 MiB, not ±0.04 around the point (noise drawn as a result)."""
    figure = drawn(monkeypatch, cost_frame([(3.0, 1.0, 5.0)], [0.04]))
    left, right = figure.axes[1].get_xlim()
    assert left <= -1.0 and right >= 1.0
    plots.plt.close(figure)


def test_a_figure_without_intervals_names_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """One seed per variant: no Δ interval, no time interval; no axis label promises a 95 % CI."""
    figure = drawn(monkeypatch, cost_frame([(3.0, np.nan, np.nan)], [2.0], delta_ci=False))
    labels = [figure.axes[0].get_ylabel(), figure.axes[0].get_xlabel()]
    assert not [label for label in labels if "95 % CI" in label]
    plots.plt.close(figure)
