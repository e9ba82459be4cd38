"""The report: table numbers, tidy CSVs, plots, robustness to unfinished runs, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from harness.command import EXIT_INCOMPLETE
from harness.report import build_report
from harness.report.plots import bank_points, colorize, ignore_color
from harness.report.tables import aggregate_frame, baseline_choice, per_class_frame, results_frame
from tests.report_fixtures import (
    OOM_ERROR,
    PALETTE,
    SEEDED_MIOU,
    build_results,
    build_seeded_results,
    read_aggregate,
    read_results,
    recipe_yaml,
    summary,
    table_under,
)

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALL_PLOTS = (
    "miou.png", "cost_benefit.png", "miou_vs_bank.png", "throughput_memory.png", "curves.png", "tsne.png",
    "qualitative.png",
)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    """`python -X importtime -m harness.report` on the full fixture (baseline, two bank sizes,
    a paper row, a failed and a running variant), run once for the whole module."""
    root = tmp_path_factory.mktemp("full")
    command = [sys.executable, "-X", "importtime", "-m", "harness.report", str(build_results(root)),
               "--out", str(root / "reports")]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == EXIT_INCOMPLETE, done.stderr[-2000:]  # a failed and a running variant
    return done


@pytest.fixture(scope="module")
def full_report(cli_run: subprocess.CompletedProcess[str]) -> Path:
    """report.md of the full fixture, as the CLI printed it (a partial study: what is missing on the next line)."""
    path, partial = cli_run.stdout.splitlines()
    assert partial == "3 of 5 runs finished; missing: broken, pending"
    return Path(path)


def test_report_lands_in_reports_recipe(full_report: Path) -> None:
    assert full_report.name == "report.md" and full_report.is_absolute()
    assert full_report.parent.name == "quick" and full_report.parent.parent.name == "reports"


def test_delta_miou_is_variant_minus_baseline(full_report: Path) -> None:
    rows = read_results(full_report)
    assert rows.loc["ce", "is_baseline"] and rows["is_baseline"].sum() == 1
    ok = rows[rows["status"] == "ok"]
    assert np.allclose(ok["miou_pct"], ok["miou"] * 100)
    assert np.allclose(ok["delta_miou_pp"], ok["miou_pct"] - rows.loc["ce", "miou_pct"])
    assert rows.loc["region_bank-1000", "delta_miou_pp"] == pytest.approx(6.0)


def test_failed_variant_is_shown_failed_without_metrics(full_report: Path) -> None:
    broken = read_results(full_report).loc["broken"]
    assert broken["status"] == "failed" and broken["error"] == OOM_ERROR
    assert broken[["miou", "delta_miou_pp", "train_images_per_s", "peak_memory_mib"]].isna().all()
    row = next(line for line in full_report.read_text().splitlines() if line.startswith("| broken |"))
    assert "failed: RuntimeError: CUDA out of memory" in row
    assert "\\| see" not in row and len(row) < 400  # the error is shortened, so no escaped tail survives


def test_variant_without_summary_is_running_with_recipe_config(full_report: Path) -> None:
    pending = read_results(full_report).loc["pending"]
    assert pending["status"] == "running"
    config = (pending["contrast_kind"], pending["bank_size"], pending["backbone"])
    assert config == ("region", 500, "resnet18")
    assert pd.isna(pending["miou"])


def test_markdown_table_matches_results(full_report: Path) -> None:
    table = table_under(full_report, "## Runs")
    assert {"val mIoU (%)", "Δ mIoU vs CE (pp)", "paper mIoU (%)", "paper row", "status"} <= set(table.columns)
    assert list(table["variant"]) == ["ce", "broken", "pending", "region_bank-0", "region_bank-1000"]
    region = table.iloc[4]
    numbers = (region["val mIoU (%)"], region["Δ mIoU vs CE (pp)"], region["paper mIoU (%)"])
    assert numbers == ("56.00", "+6.00", "78.5")
    assert region["paper row"] == "Table 3: RegionContrast w/MB 1000"


def test_every_plot_is_a_png_linked_from_the_report(full_report: Path) -> None:
    text = full_report.read_text()
    for name in ALL_PLOTS:
        path = full_report.parent / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        with Image.open(path) as image:
            assert min(image.size) > 300, name
        assert f"]({name})" in text
    assert "RegionContrast `region_bank-1000`" in text  # the best region variant is the one shown
    assert "ignored pixels are black" in text


def test_curves_csv_is_tidy(full_report: Path) -> None:
    curves = pd.read_csv(full_report.parent / "curves.csv")
    assert list(curves.columns) == ["variant", "seed", "iter", "metric", "value"]
    ce = curves[curves["variant"] == "ce"]
    assert "loss_contrast" not in set(ce["metric"])
    assert ce.loc[(ce["metric"] == "loss") & (ce["iter"] == 20), "value"].item() == pytest.approx(2.2 / 20)
    assert set(curves.loc[curves["metric"] == "miou", "iter"]) == {20, 40}
    assert len(curves[curves["variant"] == "pending"]) == 4 * 6  # the torn last line is skipped


def test_per_class_null_iou_is_nan_not_zero() -> None:
    per_class = per_class_frame([summary("ce", "none", None, 0.5)])
    assert np.isnan(per_class.loc["zero", "ce"]) and per_class.loc["background", "ce"] == pytest.approx(90.0)


@pytest.fixture(scope="module")
def flat_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Report of a sweep without CE baseline whose region variants share one bank size and have no
    .npz files, built over an earlier build's stale bank plot."""
    root = tmp_path_factory.mktemp("flat")
    stale = root / "reports" / "quick" / "miou_vs_bank.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(PNG_SIGNATURE)
    return build_report(build_results(root, bank_sizes=(100, 100), arrays=False, baseline=False), root / "reports")


def test_no_bank_plot_when_bank_sizes_do_not_vary(flat_report: Path) -> None:
    assert not (flat_report.parent / "miou_vs_bank.png").exists()  # the stale one is gone too
    assert "miou_vs_bank" not in flat_report.read_text() and "memory bank size" not in flat_report.read_text()
    assert (flat_report.parent / "miou.png").exists() and (flat_report.parent / "curves.png").exists()


def test_bank_plot_keeps_only_the_center_variant_the_bank_sizes_share() -> None:
    aggregate = pd.DataFrame({
        "variant": ["ce", "in_batch", "bank_100", "weighted", "direct_average", "pixel"],
        "contrast_kind": ["none", "region", "region", "region", "region", "pixel"],
        "center_variant": [None, "weighted", "weighted", "weighted", "average", None],
        "bank_size": [np.nan, 0, 100, 300, 300, 500],
        "n_seeds": [3] * 6,
    })
    assert bank_points(aggregate)["variant"].tolist() == ["in_batch", "bank_100", "weighted"]


def test_no_paired_figures_without_baseline_and_arrays(flat_report: Path) -> None:
    assert not (flat_report.parent / "tsne.png").exists() and not (flat_report.parent / "qualitative.png").exists()
    assert "t-SNE" not in flat_report.read_text()


def test_without_baseline_delta_is_blank(flat_report: Path) -> None:
    rows = read_results(flat_report)
    assert rows["delta_miou_pp"].isna().all() and not rows["is_baseline"].any()
    assert rows["miou"].notna().sum() == 2
    assert "CE baseline: none" in flat_report.read_text()


def test_nothing_finished_still_reports_every_variant(tmp_path: Path) -> None:
    results = tmp_path / "results" / "quick"
    (results / "crashed").mkdir(parents=True)
    crashed = {"status": "failed", "error": "ValueError: a\nb"}
    (results / "crashed" / "summary.json").write_text(json.dumps(crashed))
    (results / "queued").mkdir()
    (results / "queued" / "recipe.yaml").write_text(recipe_yaml("region", None))
    report = build_report(results, tmp_path / "reports")
    rows = read_results(report)
    assert rows.loc["crashed", "status_text"] == "failed: ValueError: a b"
    assert rows.loc["queued", "status"] == "missing" and pd.isna(rows.loc["queued", "bank_size"])
    assert pd.isna(rows.loc["queued", "bank_size_text"])  # no summary resolved its bank yet
    assert sorted(path.name for path in report.parent.glob("*.png")) == ["miou.png", "throughput_memory.png"]


def test_baseline_prefers_the_variant_named_ce() -> None:
    summaries = [summary(name, "none", None, 0.4 + i / 10) for i, name in enumerate(["a_plain", "ce"])]
    frame = results_frame([*summaries, summary("region", "region", 0, 0.7)])
    assert frame.loc[frame["is_baseline"], "variant"].tolist() == ["ce"]
    assert frame["variant"].iloc[0] == "ce"
    assert frame.set_index("variant").loc["region", "delta_miou_pp"] == pytest.approx(20.0)


def test_colorize_uses_palette_and_marks_ignore() -> None:
    labels = np.array([[0, 3], [255, 1]], np.uint8)
    name, ignore = ignore_color(PALETTE / 255.0)
    colours = colorize(labels, PALETTE / 255.0, ignore)
    assert np.allclose(colours[0, 1], PALETTE[3] / 255.0) and np.allclose(colours[1, 1], PALETTE[1] / 255.0)
    assert name == "black" and np.allclose(colours[1, 0], 0.0)


def test_ignore_turns_white_when_a_class_is_black() -> None:
    palette = np.vstack([np.zeros((1, 3)), PALETTE[1:] / 255.0])
    name, ignore = ignore_color(palette)
    colours = colorize(np.array([[255, 0]], np.uint8), palette, ignore)
    assert name == "white" and np.allclose(colours, [[[1, 1, 1], [0, 0, 0]]])


def test_cli_builds_without_importing_torch(
    cli_run: subprocess.CompletedProcess[str], full_report: Path
) -> None:
    timings = [line for line in cli_run.stderr.splitlines() if line.startswith("import time:")]
    imported = [line.rsplit("|", 1)[-1].strip() for line in timings]
    assert "matplotlib" in imported and "sklearn.manifold" in imported  # importtime really listed modules
    assert not [name for name in imported if name == "torch" or name.startswith("torch.")]
    assert full_report.exists() and (full_report.parent / "tsne.png").exists()  # t-SNE ran in that process


# ---------------------------------------------------------------- seeds and paired statistics


@pytest.fixture(scope="module")
def seeded_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Report of SEEDED_MIOU: five variants x 3 seeds, CE baseline `ce`, failed seeds in `gain` and `single`;
    `ce` and `gain` save centers and samples."""
    root = tmp_path_factory.mktemp("seeded")
    return build_report(build_seeded_results(root, arrays=("ce", "gain")), root / "reports")


def finished_by_seed(results_dir: Path, variant: str) -> dict[int, dict]:
    """The finished runs' summary.json of a variant, read directly, by seed."""
    summaries = [json.loads(path.read_text()) for path in (results_dir / variant).glob("seed-*/summary.json")]
    return {content["seed"]: content for content in summaries if content["status"] == "ok"}


def expected_pairs(results_dir: Path, variant: str, baseline: str = "ce") -> dict[str, float]:
    """The paired comparison computed straight from summary.json with scipy: Δ, its t CI, the p-value, costs."""
    runs, base = finished_by_seed(results_dir, variant), finished_by_seed(results_dir, baseline)
    seeds = sorted(set(runs) & set(base))
    miou, base_miou = (np.array([group[seed]["miou"] for seed in seeds]) for group in (runs, base))
    deltas = miou - base_miou
    half = stats.t.ppf(0.975, len(seeds) - 1) * deltas.std(ddof=1) / np.sqrt(len(seeds))
    extra = {
        field: np.mean([runs[seed][field] - base[seed][field] for seed in seeds])
        for field in ("s_per_iter", "train_peak_memory_bytes")
    }
    return {
        "n_pairs": len(seeds), "delta_mean": deltas.mean(), "delta_ci95_low": deltas.mean() - half,
        "delta_ci95_high": deltas.mean() + half, "p_value": stats.ttest_rel(miou, base_miou).pvalue,
        "extra_s_per_iter": extra["s_per_iter"], "extra_train_memory_bytes": extra["train_peak_memory_bytes"],
    }


@pytest.mark.parametrize("variant", ["gain", "loss", "overlap"])
def test_aggregate_is_a_paired_t_test_over_seeds(seeded_report: Path, variant: str) -> None:
    row = read_aggregate(seeded_report).loc[variant]
    expected = expected_pairs(seeded_report.parents[2] / "results" / "seeded", variant)
    assert {key: row[key] for key in expected} == pytest.approx(expected)


def test_an_unfinished_fixed_study_has_no_verdict_and_no_adjusted_p(seeded_report: Path) -> None:
    """Three of its fifteen runs failed: a fixed design is read once, at its end, so every verdict is interim,
    nothing carries the family's adjusted p, and the report says at the top that nothing in it may be quoted."""
    rows = read_aggregate(seeded_report)
    assert (rows.loc[~rows["is_baseline"], "verdict"] == "interim (12 of 15 runs)").all()
    assert rows[["p_family", "p_tost_family"]].isna().all().all() and rows["p_value"].notna().sum() == 3
    assert "p (family)" not in table_under(seeded_report, "## Variants").columns
    head = seeded_report.read_text().split("## Variants")[0]
    assert "**Interim: 12 of 15 runs in. Nothing in this report may be quoted as a result until every run is in.**" \
        in head
    assert "allowed only where its design says how (a sequential design)" in head


def test_failed_seed_is_left_out_of_the_pairs(seeded_report: Path) -> None:
    gain = read_aggregate(seeded_report).loc["gain"]
    assert (gain["n_seeds"], gain["n_pairs"], gain["runs"]) == (2, 2, "2 ok, 1 failed")
    assert gain["delta_mean"] == pytest.approx(np.mean([0.60 - 0.52, 0.595 - 0.51]))
    assert gain["miou_mean"] == pytest.approx(0.5975)
    assert gain["miou_std"] == pytest.approx(np.std([0.6, 0.595], ddof=1))


def test_one_pair_has_no_ci_and_no_p_value(seeded_report: Path) -> None:
    single = read_aggregate(seeded_report).loc["single"]
    assert (single["n_seeds"], single["n_pairs"]) == (1, 1)
    assert single["delta_mean"] == pytest.approx(0.55 - 0.51)
    assert single[["miou_std", "miou_ci95_low", "delta_ci95_low", "delta_ci95_high", "p_value"]].isna().all()


def test_baseline_row_has_zero_delta_and_no_interval(seeded_report: Path) -> None:
    rows = read_aggregate(seeded_report)
    ce = rows.loc["ce"]
    assert bool(ce["is_baseline"]) and rows["is_baseline"].sum() == 1 and rows.index[0] == "ce"
    assert (ce["delta_mean"], ce["extra_s_per_iter"], ce["n_pairs"]) == (0, 0, 0)
    assert ce[["delta_ci95_low", "delta_ci95_high", "p_value"]].isna().all()
    mious = [0.50, 0.52, 0.51]
    half = stats.t.ppf(0.975, 2) * np.std(mious, ddof=1) / np.sqrt(3)
    assert (ce["miou_ci95_low"], ce["miou_ci95_high"]) == pytest.approx((np.mean(mious) - half, np.mean(mious) + half))


def test_aggregate_columns_and_cost_means(seeded_report: Path) -> None:
    rows = read_aggregate(seeded_report)
    assert {"n_seeds", "miou_mean", "miou_std", "delta_mean", "delta_ci95_low", "delta_ci95_high", "p_value",
            "s_per_iter_mean", "contrast_ms_per_iter_mean", "train_peak_memory_bytes_mean", "extra_s_per_iter",
            "extra_train_memory_bytes"} <= set(rows.columns)
    loss = rows.loc["loss"]
    assert loss["contrast_ms_per_iter_mean"] == pytest.approx(9.5 * 1.1) and loss["bank_fill_mean"] == 1.0
    assert loss["train_peak_memory_bytes_mean"] == (420 + 2) * 2**20
    assert loss["extra_train_memory_bytes"] == 120 * 2**20 and loss["extra_s_per_iter"] == pytest.approx(0.08)


def test_results_csv_has_one_row_per_run(seeded_report: Path) -> None:
    runs = pd.read_csv(seeded_report.parent / "results.csv")
    assert len(runs) == 15 and not runs.duplicated(["variant", "seed"]).any()
    assert "traceback" not in runs.columns
    failed = runs[(runs["variant"] == "gain") & (runs["seed"] == 0)].iloc[0]
    assert failed["status"] == "failed" and pd.isna(failed["delta_miou_pp"])
    overlap = runs[runs["variant"] == "overlap"].set_index("seed")["delta_miou_pp"]
    assert overlap.tolist() == pytest.approx([3.0, -3.0, 1.0])  # paired with ce's run of the same seed
    table = table_under(seeded_report, "## Runs")
    assert table.loc[(table["variant"] == "gain") & (table["seed"] == "0"), "status"].item().startswith("failed")


def test_variants_table_shows_each_interval_and_the_verdict_column(seeded_report: Path) -> None:
    table = table_under(seeded_report, "## Variants").set_index("variant")
    assert table.loc["ce", "verdict"] == "baseline" and table.loc["gain", "verdict"] == "interim (12 of 15 runs)"
    gain = read_aggregate(seeded_report).loc["gain"]
    low, high = gain["delta_ci95_low"] * 100, gain["delta_ci95_high"] * 100
    assert table.loc["gain", "Δ mIoU vs CE (pp) [95 % CI]"] == f"+8.25 [{low:+.2f}, {high:+.2f}]"
    assert table.loc["gain", "mIoU (%) mean ± std"] == f"59.75 ± {gain['miou_std'] * 100:.2f}"
    assert table.loc["single", "Δ mIoU vs CE (pp) [95 % CI]"] == "+4.00"


def test_multi_seed_report_has_no_one_seed_caveat(seeded_report: Path) -> None:
    text = seeded_report.read_text()
    assert "says nothing about the method" not in text and "seeds 0, 1, 2" in text
    assert "CE baseline: `ce` (the only contrast-free variant)" in text


def test_one_seed_report_says_so_first(full_report: Path) -> None:
    """Right under the title, before any number: one seed says nothing about the method; the headline study does.
    (Its runs' summaries name no weights, so it does not say from random weights.)"""
    lines = full_report.read_text().splitlines()
    assert lines[0].startswith("# Report: quick") and lines[2].startswith("**One seed says nothing about the method.**")
    assert "(seed 0)" in lines[2] and "`reports/digit_scenes_headline/report.md`" in lines[2]
    assert "no interval" in lines[2] and "seed-to-seed noise" in lines[2]
    assert read_aggregate(full_report).loc["region_bank-1000", "verdict"] == "interim (3 of 5 runs)"


def test_paired_figures_use_the_first_finished_seed(seeded_report: Path) -> None:
    text = seeded_report.read_text()
    assert "CE baseline `ce` (seed 0) vs RegionContrast `gain` (seed 1)" in text  # gain's seed 0 failed
    assert (seeded_report.parent / "qualitative.png").exists()


def test_cost_benefit_figure_only_with_a_baseline(seeded_report: Path, flat_report: Path) -> None:
    figure = seeded_report.parent / "cost_benefit.png"
    assert figure.read_bytes()[:8] == PNG_SIGNATURE and "](cost_benefit.png)" in seeded_report.read_text()
    assert "`train_peak_memory_bytes`" in seeded_report.read_text()
    assert not (flat_report.parent / "cost_benefit.png").exists() and "cost_benefit" not in flat_report.read_text()


def test_old_summaries_leave_new_columns_blank(full_report: Path) -> None:
    rows = read_aggregate(full_report)
    assert rows[["contrast_ms_per_iter_mean", "bank_fill_mean", "eval_peak_memory_bytes_mean"]].isna().all().all()
    # without a training-only peak the overall one stands in, and the report says so
    assert rows.loc["ce", "train_peak_memory_bytes_mean"] == 300 * 2**20
    assert "the overall peak, `peak_memory_bytes`" in full_report.read_text()


def test_curves_keep_every_seed(seeded_report: Path) -> None:
    curves = pd.read_csv(seeded_report.parent / "curves.csv")
    assert sorted(curves.loc[curves["variant"] == "overlap", "seed"].unique()) == [0, 1, 2]


def test_named_baseline_wins_over_the_default(tmp_path: Path) -> None:
    runs = {"ce": SEEDED_MIOU["ce"], "plain": ("none", [0.45, 0.47, 0.44]), "gain": SEEDED_MIOU["gain"]}
    report = build_report(build_seeded_results(tmp_path, runs, baseline="plain"), tmp_path / "reports")
    rows = read_aggregate(report)
    assert rows.index[0] == "plain" and rows["is_baseline"].tolist() == [True, False, False]
    expected = expected_pairs(tmp_path / "results" / "seeded", "gain", baseline="plain")
    assert rows.loc["gain", "delta_mean"] == pytest.approx(expected["delta_mean"])
    assert "CE baseline: `plain` (named by `sweep.baseline`)" in report.read_text()


def test_several_contrast_free_variants_without_ce_or_name_have_no_baseline() -> None:
    summaries = [summary(name, "none", None, 0.5) for name in ("a_plain", "b_plain")]
    frame = results_frame([*summaries, summary("region", "region", 0, 0.7)])
    assert not frame["is_baseline"].any()
    assert baseline_choice(frame, None) == (None, "2 contrast-free variants and `sweep.baseline` names none of them")
    aggregate = aggregate_frame(frame)
    assert aggregate["delta_mean"].isna().all() and (aggregate["verdict"] == "").all()
    assert baseline_choice(results_frame(summaries[:1]), None) == ("a_plain", "the only contrast-free variant")
