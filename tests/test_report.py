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

from harness.report import (
    build_report,
    colorize,
    ignore_color,
    per_class_frame,
    results_frame,
)
from tests.report_fixtures import (
    OOM_ERROR,
    PALETTE,
    build_results,
    recipe_yaml,
    summary,
)

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALL_PLOTS = (
    "miou.png", "miou_vs_bank.png", "throughput_memory.png", "curves.png", "tsne.png", "qualitative.png"
)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    """`python -X importtime -m harness.report` on the full fixture (baseline, two bank sizes,
    a paper row, a failed and a running variant), run once for the whole module."""
    root = tmp_path_factory.mktemp("full")
    command = [sys.executable, "-X", "importtime", "-m", "harness.report", str(build_results(root)),
               "--out", str(root / "reports")]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.fixture(scope="module")
def full_report(cli_run: subprocess.CompletedProcess[str]) -> Path:
    """report.md of the full fixture, as the CLI printed it."""
    return Path(cli_run.stdout.strip())


def read_results(report: Path) -> pd.DataFrame:
    """results.csv next to a report.md, indexed by variant."""
    return pd.read_csv(report.parent / "results.csv").set_index("variant")


def test_report_lands_in_reports_recipe(full_report: Path) -> None:
    assert full_report.name == "report.md" and full_report.is_absolute()
    assert full_report.parent.name == "quick" and full_report.parent.parent.name == "reports"


def test_delta_miou_is_variant_minus_baseline(full_report: Path) -> None:
    rows = read_results(full_report)
    assert rows.loc["ce", "is_baseline"] and rows["is_baseline"].sum() == 1
    ok = rows[rows["status"] == "ok"]
    assert np.allclose(ok["val_miou_pct"], ok["val_miou"] * 100)
    assert np.allclose(ok["delta_miou_pp"], ok["val_miou_pct"] - rows.loc["ce", "val_miou_pct"])
    assert rows.loc["region_bank-1000", "delta_miou_pp"] == pytest.approx(6.0)


def test_failed_variant_is_shown_failed_without_metrics(full_report: Path) -> None:
    broken = read_results(full_report).loc["broken"]
    assert broken["status"] == "failed" and broken["error"] == OOM_ERROR
    assert broken[["val_miou", "delta_miou_pp", "train_images_per_s", "peak_memory_mib"]].isna().all()
    row = next(line for line in full_report.read_text().splitlines() if line.startswith("| broken |"))
    assert "failed: RuntimeError: CUDA out of memory" in row
    assert "\\| see" not in row and len(row) < 400  # the error is shortened, so no escaped tail survives


def test_variant_without_summary_is_running_with_recipe_config(full_report: Path) -> None:
    pending = read_results(full_report).loc["pending"]
    assert pending["status"] == "running"
    config = (pending["contrast_kind"], pending["bank_size"], pending["backbone"])
    assert config == ("region", 500, "resnet18")
    assert pd.isna(pending["val_miou"])


def test_markdown_table_matches_results(full_report: Path) -> None:
    lines = full_report.read_text().splitlines()
    header = next(line for line in lines if line.startswith("| variant |"))
    cells = [cell.strip() for cell in header.strip("|").split("|")]
    assert {"val mIoU (%)", "Δ mIoU vs CE (pp)", "paper mIoU (%)", "paper row", "status"} <= set(cells)
    table = [line for line in lines if line.startswith("| ")][2:]
    assert [line.split("|")[1].strip() for line in table[:5]] == [
        "ce", "broken", "pending", "region_bank-0", "region_bank-1000"
    ]
    region = dict(zip(cells, (cell.strip() for cell in table[4].strip("|").split("|"))))
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
    assert list(curves.columns) == ["variant", "iter", "metric", "value"]
    ce = curves[curves["variant"] == "ce"]
    assert "loss_contrast" not in set(ce["metric"])
    assert ce.loc[(ce["metric"] == "loss") & (ce["iter"] == 20), "value"].item() == pytest.approx(2.2 / 20)
    assert set(curves.loc[curves["metric"] == "val_miou", "iter"]) == {20, 40}
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


def test_no_paired_figures_without_baseline_and_arrays(flat_report: Path) -> None:
    assert not (flat_report.parent / "tsne.png").exists() and not (flat_report.parent / "qualitative.png").exists()
    assert "t-SNE" not in flat_report.read_text()


def test_without_baseline_delta_is_blank(flat_report: Path) -> None:
    rows = read_results(flat_report)
    assert rows["delta_miou_pp"].isna().all() and not rows["is_baseline"].any()
    assert rows["val_miou"].notna().sum() == 2
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
    assert rows.loc["queued", "bank_size_text"] == "train set"  # null region bank: one slot per image
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
