"""A sequential study's report: read at any time through design.sequential_decisions, seeds in sweep.seeds order,
its section of repeated intervals beside the fixed-n ones, sequential.png; and every figure of a partial study
saying how much of it is in."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness.report import build_report, design, plots
from harness.report.study import load_study
from harness.report.tables import aggregate_frame, results_frame, study_summaries
from harness.results import SweepRecord
from tests.report_fixtures import (
    SEQUENTIAL_DELTAS,
    SEQUENTIAL_MIOU,
    SEQUENTIAL_SWEEP,
    build_results,
    build_seeded_results,
    read_aggregate,
    table_under,
)

MARGIN = 0.005
PLAN = design.SequentialDesign(10, (5, 10), 3)  # SEQUENTIAL_SWEEP's design for its three variants


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results/seeded/ of SEQUENTIAL_MIOU: 32 of its 40 runs in."""
    return build_seeded_results(tmp_path_factory.mktemp("sequential"), SEQUENTIAL_MIOU, sweep=SEQUENTIAL_SWEEP)


@pytest.fixture(scope="module")
def report(results_dir: Path) -> Path:
    """report.md of the sequential study."""
    return build_report(results_dir, results_dir.parents[1] / "reports")


def deltas_from_summaries(results_dir: Path, variant: str) -> list[float]:
    """A variant's Δ per seed in sweep order, read straight from summary.json."""
    def miou(name: str, seed: int) -> float:
        return json.loads((results_dir / name / f"seed-{seed}" / "summary.json").read_text())["miou"]
    return [miou(variant, seed) - miou("ce", seed) for seed in range(len(SEQUENTIAL_DELTAS[variant][1]))]


def test_each_variant_is_decided_at_its_look(report: Path) -> None:
    rows = read_aggregate(report)
    early, waiting, undecided = (rows.loc[name] for name in ("early", "waiting", "undecided"))
    assert (early["verdict"], early["look"], early["seeds_used"], early["stopped"]) == (
        "better", 1, 5, "interval above 0")
    assert early["next_look"] == 0  # decided: harness submit --until-decided runs nothing more of it
    assert waiting["verdict"] == "continue (next look at 10 seeds, 7 of 10 in)" and waiting["next_look"] == 10
    assert pd.isna(waiting["stopped"]) and waiting["seeds_used"] == 5
    assert (undecided["verdict"], undecided["look"], undecided["stopped"]) == ("inconclusive", 2, "max_seeds reached")
    assert rows[["p_family", "p_tost_family"]].isna().all().all()  # the fixed design's numbers: none here


@pytest.mark.parametrize("variant", ["early", "undecided"])
def test_the_repeated_interval_is_the_looks_mean_and_boundary(results_dir: Path, report: Path, variant: str) -> None:
    """RCI = mean ± c_k sd / √n over the look's first n seeds; beside it the fixed-n t interval of the same seeds,
    narrower."""
    row = read_aggregate(report).loc[variant]
    seeds, look = int(row["seeds_used"]), int(row["look"])
    first = np.array(deltas_from_summaries(results_dir, variant)[:seeds])
    half = PLAN.boundaries[look - 1] * first.std(ddof=1) / np.sqrt(seeds)
    assert (row["rci_low"], row["rci_high"]) == pytest.approx((first.mean() - half, first.mean() + half))
    fixed = stats.t.interval(0.95, seeds - 1, loc=first.mean(), scale=stats.sem(first))
    assert (row["look_ci95_low"], row["look_ci95_high"]) == pytest.approx(fixed)
    assert row["rci_low"] < row["look_ci95_low"] and row["look_ci95_high"] < row["rci_high"]


def test_seeds_count_in_the_order_sweep_lists_them(results_dir: Path) -> None:
    """Listed from seed 9 down, the first look needs seeds 9-5, of which `early` ran none: it continues."""
    frame = results_frame(study_summaries(results_dir))
    sweep = SweepRecord(**{**SEQUENTIAL_SWEEP, "seeds": list(range(9, -1, -1))})
    early = aggregate_frame(frame, sweep).set_index("variant").loc["early"]
    assert early["verdict"] == "continue (next look at 5 seeds, 0 of 5 in)"


def test_report_reads_the_sequential_study_as_its_design_says(report: Path) -> None:
    text = report.read_text()
    head = text.split("## Variants")[0]
    assert "**Sequential study, 32 of 40 runs in.** Its design says how to read it at any time" in head
    assert "Interim" not in text and "p (family)" not in text
    assert "**Verdict: the sequential design**" in text
    section = table_under(report, "## Sequential design").set_index("variant")
    early = read_aggregate(report).loc["early"]
    assert section.loc["early", "stopped because"] == "interval above 0"
    assert section.loc["early", "Δ (pp) [sequential 95 % CI]"] == (
        f"+5.04 [{early['rci_low'] * 100:+.2f}, {early['rci_high'] * 100:+.2f}]")
    assert section.loc["waiting", "stopped because"] == "next look at 10 seeds"
    assert section.loc["undecided", "stopped because"] == "max_seeds reached"
    assert "It is wider than the fixed-n t interval over the same seeds beside it, because the repeated intervals " \
           "must hold the true Δ at every look at once" in text
    assert "looks after 5 and 10 seeds, at most 10 per variant" in text and "α = 0.05 / 3" in text


def test_sequential_figure_shows_every_look_reached(results_dir: Path, report: Path) -> None:
    study = load_study(results_dir)
    readings = study.readings
    assert readings.groupby("variant")["look"].apply(list).to_dict() == {
        "early": [1], "undecided": [1, 2], "waiting": [1]}
    last = readings[readings["variant"] == "undecided"].iloc[-1]
    row = read_aggregate(report).loc["undecided"]
    assert (last["seeds"], last["low"], last["high"]) == (10, pytest.approx(row["rci_low"]),
                                                          pytest.approx(row["rci_high"]))
    assert (report.parent / "sequential.png").read_bytes()[:4] == b"\x89PNG"
    caption = report.read_text().split("## Sequential design: repeated confidence intervals\n\n", 1)[1]
    assert caption.startswith("Each variant's repeated 95 % confidence interval") and "±0.50 pp" in caption


def test_report_plans_the_next_study_sequentially(report: Path) -> None:
    planning = report.read_text().split("## Planning", 1)[1].split("## Runs")[0]
    assert "A sequential design: per variant" in planning and "plan_sequential" in planning


def captured_titles(study_dir: Path, monkeypatch: pytest.MonkeyPatch, out: Path) -> list[tuple[str, str]]:
    """Every figure make_plots draws for a study: its file name, and its title and suptitle."""
    titles = []

    def keep(fig: plots.plt.Figure, path: Path) -> None:
        suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""
        titles.append((path.name, " ".join([suptitle, *(ax.get_title() for ax in fig.axes)])))
        plots.plt.close(fig)

    monkeypatch.setattr(plots, "save", keep)
    monkeypatch.setattr(plots, "embed", lambda centers: centers[:, :2])  # the titles, not t-SNE's half minute
    study = load_study(study_dir)
    plots.make_plots(study, out, plots.Look(study.split, "validation", f" ({study.progress()})"))
    return titles


def test_every_figure_of_a_partial_study_says_how_much_is_in(
    results_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    titles = captured_titles(results_dir, monkeypatch, tmp_path)
    titles += captured_titles(build_results(tmp_path / "full"), monkeypatch, tmp_path)  # tsne, qualitative, bank
    assert {name for name, _ in titles} == {"miou.png", "cost_benefit.png", "sequential.png", "throughput_memory.png",
                                            "curves.png", "miou_vs_bank.png", "tsne.png", "qualitative.png"}
    assert not [(name, title) for name, title in titles if "runs finished)" not in title]


def test_a_collapsed_run_withholds_the_sequential_verdict_too(tmp_path: Path) -> None:
    """`early`'s seed 1 collapsed: no verdict, no repeated CI to quote, no interval in the figure; the others are
    read as before."""
    results_dir = build_seeded_results(tmp_path, SEQUENTIAL_MIOU, sweep=SEQUENTIAL_SWEEP,
                                       collapsed={("early", 1): "mIoU 9.1% at the floor"})
    study = load_study(results_dir)
    rows = study.aggregate.set_index("variant")
    assert rows.loc["early", "verdict"] == "collapsed runs: no verdict"
    assert rows.loc["early", ["rci_low", "rci_high", "stopped"]].isna().all()
    assert rows.loc["undecided", "verdict"] == "inconclusive"
    assert "early" not in set(study.readings["variant"]) and "undecided" in set(study.readings["variant"])
