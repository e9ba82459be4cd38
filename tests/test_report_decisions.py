"""The report decides through harness/report/design.py only: a complete fixed study's family of claims, what withholds
a verdict (an unfinished fixed study, collapsed runs of a variant or of the baseline), and a one-seed study's caveat."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness.report import build_report
from harness.report.decisions import BASELINE_COLLAPSED, COLLAPSED
from harness.report.planning import plan_frame
from harness.report.study import load_study
from harness.report.tables import aggregate_frame, results_frame, study_summaries
from harness.results import read_sweep
from tests.report_fixtures import (
    COLLAPSE,
    FAMILY_DELTAS,
    FAMILY_MIOU,
    ONE_SEED_MIOU,
    SEEDED_MIOU,
    build_seeded_results,
    read_aggregate,
    read_results,
    table_under,
)

MARGIN = 0.005  # the fixtures' sweep.equivalence_margin
EXPECTED = {"gain": "better", "loss": "worse", "near": "equivalent", "hint": "suggestive", "overlap": "inconclusive"}


@pytest.fixture(scope="module")
def family_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Report of FAMILY_MIOU: a complete fixed study, CE and five variants over five seeds."""
    root = tmp_path_factory.mktemp("family")
    return build_report(build_seeded_results(root, FAMILY_MIOU), root / "reports")


def shaffer_by_hand(deltas: dict[str, list[float]]) -> tuple[dict[str, float], dict[str, float]]:
    """The family's adjusted superiority and TOST p of each variant, from scipy's one-sample t-tests: the 2V
    p-values sorted, multiplied by V for the first V + 1 steps and then by V - 1, ..., 1, running maximum, capped."""
    claims = []
    for name, values in deltas.items():
        claims.append((stats.ttest_1samp(values, 0.0).pvalue, name, "p"))
        tost = max(stats.ttest_1samp(values, -MARGIN, alternative="greater").pvalue,
                   stats.ttest_1samp(values, MARGIN, alternative="less").pvalue)
        claims.append((tost, name, "tost"))
    claims.sort()
    variants = len(deltas)
    factors = [variants] * (variants + 1) + list(range(variants - 1, 0, -1))
    adjusted, running = {}, 0.0
    for (p_value, name, kind), factor in zip(claims, factors):
        running = min(1.0, max(running, factor * p_value))
        adjusted[name, kind] = running
    return ({name: adjusted[name, "p"] for name in deltas}, {name: adjusted[name, "tost"] for name in deltas})


def test_a_complete_fixed_study_decides_through_the_family(family_report: Path) -> None:
    """Every verdict of the fixed design, each from the family's adjusted p-values computed here by hand."""
    rows = read_aggregate(family_report)
    deltas = {name: values for name, (_, values) in FAMILY_DELTAS.items()}
    p_family, p_tost_family = shaffer_by_hand(deltas)
    for name in deltas:
        assert rows.loc[name, "p_family"] == pytest.approx(p_family[name], rel=1e-6), name
        assert rows.loc[name, "p_tost_family"] == pytest.approx(p_tost_family[name], rel=1e-6), name
    assert rows.loc[list(EXPECTED), "verdict"].to_dict() == EXPECTED
    # suggestive: the unadjusted interval excludes 0, the family does not keep it
    hint = rows.loc["hint"]
    assert hint["delta_ci95_low"] > 0 and hint["p_value"] < 0.05 < hint["p_family"]
    assert rows.loc["ce", "verdict"] == "baseline" and pd.isna(rows.loc["ce", "p_family"])


def test_report_names_the_familys_p_and_states_the_rule(family_report: Path) -> None:
    table = table_under(family_report, "## Variants").set_index("variant")
    assert {"p (family)", "TOST p (family)"} <= set(table.columns) and "p (Holm)" not in table.columns
    assert table.loc["hint", "p (family)"] == f"{read_aggregate(family_report).loc['hint', 'p_family']:.3f}"
    text = family_report.read_text()
    assert "p (family) and TOST p (family) are those p-values adjusted over all 2V claims" in text
    assert "Holm's step-down method with Shaffer's restriction" in text
    assert "multiplied by V for the first V + 1 steps, then by V − 1, ..., 1" in text
    assert "The verdict is better or worse where p (family) < 0.05, else equivalent where TOST p (family) < 0.05, " \
           "else suggestive where the unadjusted 95 % interval excludes 0" in text
    assert "Interim" not in text and "Sequential design" not in text


def test_no_verdict_word_comes_from_an_unadjusted_interval(family_report: Path) -> None:
    """Verdict words appear in the verdict columns as the design decided them, and elsewhere only in the rule."""
    text = family_report.read_text()
    assert "when the 95 % interval excludes 0" not in text  # the old, unadjusted rule
    detection = table_under(family_report, "## What this study can detect").set_index("variant")
    assert detection["verdict"].to_dict() == EXPECTED


def collapsed_study(root: Path, runs: dict[tuple[str, int], str]) -> Path:
    """FAMILY_MIOU with the (variant, seed) runs in `runs` collapsed."""
    return build_seeded_results(root, FAMILY_MIOU, collapsed=runs)


@pytest.fixture(scope="module")
def collapsed_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Report of FAMILY_MIOU whose `gain` seed 2 collapsed."""
    root = tmp_path_factory.mktemp("collapsed")
    return build_report(collapsed_study(root, {("gain", 2): COLLAPSE}), root / "reports")


def test_a_variant_with_a_collapsed_run_gets_no_verdict(collapsed_report: Path) -> None:
    rows = read_aggregate(collapsed_report)
    assert rows.loc["gain", "verdict"] == COLLAPSED and rows.loc["gain", "collapsed_runs"] == 1
    assert rows.loc["gain", ["p_family", "p_tost_family"]].isna().all()
    assert rows.loc["loss", "verdict"] == "worse" and rows.loc["near", "verdict"] == "equivalent"
    runs = table_under(collapsed_report, "## Runs").set_index(["variant", "seed"])
    assert runs.loc[("gain", "2"), "status"] == f"collapsed: {COLLAPSE}"
    assert runs.loc[("gain", "1"), "status"] == "ok"
    gain = read_results(collapsed_report).loc["gain"].set_index("seed")
    assert gain.loc[2, "status"] == "ok" and gain.loc[2, "collapsed"] == COLLAPSE  # finished: its numbers stay


def test_planning_skips_a_collapsed_variant(collapsed_report: Path) -> None:
    planning = table_under(collapsed_report, "## Planning")
    assert "gain" not in set(planning["variant"]) and {"loss", "near"} <= set(planning["variant"])


def test_a_collapsed_baseline_leaves_every_variant_without_a_verdict(tmp_path: Path) -> None:
    results_dir = collapsed_study(tmp_path, {("ce", 0): COLLAPSE})
    rows = aggregate_frame(results_frame(study_summaries(results_dir)), read_sweep(results_dir)).set_index("variant")
    assert (rows.drop(index="ce")["verdict"] == BASELINE_COLLAPSED).all()
    assert rows["p_family"].isna().all() and rows.loc["ce", "verdict"] == "baseline"
    assert plan_frame(rows.reset_index(), 0.005).empty


def test_interim_means_no_verdict_until_every_run_is_in(tmp_path: Path) -> None:
    """The same complete study read with a run still out: interim, whatever its numbers say."""
    results_dir = build_seeded_results(tmp_path, FAMILY_MIOU)
    frame = results_frame(study_summaries(results_dir))
    interim = aggregate_frame(frame, read_sweep(results_dir), "29 of 30 runs").set_index("variant")
    assert (interim.drop(index="ce")["verdict"] == "interim (29 of 30 runs)").all()
    assert interim["p_family"].isna().all() and interim.loc["gain", "p_value"] < 1e-4
    assert load_study(results_dir).unfinished == ""


@pytest.fixture(scope="module")
def one_seed_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Report of the quickstart's shape: CE and region, one seed each, from random weights, complete."""
    root = tmp_path_factory.mktemp("one_seed")
    fields = {variant: {"backbone_weights": "random"} for variant in ONE_SEED_MIOU}
    return build_report(build_seeded_results(root, ONE_SEED_MIOU, fields=fields), root / "reports")


def test_one_seed_from_random_weights_says_so_first(one_seed_report: Path) -> None:
    lines = one_seed_report.read_text().splitlines()
    first = lines[2]
    assert first.startswith("**One seed from random weights says nothing about the method.**")
    assert "a single paired difference with no interval" in first and "seed-to-seed noise" in first
    assert "`reports/digit_scenes_headline/report.md`" in first
    assert sum("says nothing about the method" in line for line in lines) == 1  # not again at the end
    assert read_aggregate(one_seed_report).loc["region", "verdict"] == "one seed: no CI"


def test_one_seed_figure_names_no_interval(one_seed_report: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """miou.png of one seed per variant: its legend has the mean, no 95 % CI."""
    from harness.report import plots

    kept = []
    monkeypatch.setattr(plots, "save", lambda fig, path: kept.append(fig))
    aggregate = read_aggregate(one_seed_report).reset_index()
    frame = pd.read_csv(one_seed_report.parent / "results.csv")
    plots.plot_miou(frame, aggregate, plots.variant_colors(list(aggregate["variant"])),
                    plots.Look("val", "validation", ""), Path("unused.png"))
    legend = [text.get_text() for text in kept[0].axes[0].get_legend().get_texts()]
    assert "mean" in legend and not [entry for entry in legend if "CI" in entry]
    plots.plt.close(kept[0])


def test_deltas_pair_by_seed_and_skip_unfinished_runs() -> None:
    """paired_deltas: each variant's finished runs minus the baseline's of the same seed, in seed order."""
    from harness.report.decisions import paired_deltas

    runs = pd.DataFrame({
        "variant": ["ce", "ce", "ce", "a", "a", "a"], "seed": [0, 1, 2, 2, 0, 1],
        "status": ["ok", "ok", "ok", "ok", "ok", "failed"], "miou": [0.5, 0.6, 0.7, 0.75, 0.52, np.nan],
        "is_baseline": [True, True, True, False, False, False],
    })
    np.testing.assert_allclose(paired_deltas(runs, ["a"]), [[0.02, 0.05]])
    np.testing.assert_allclose(paired_deltas(runs, ["a"], [2, 1, 0]), [[0.05, np.nan, 0.02]])


def test_runs_from_different_backbone_weights_are_flagged_first(tmp_path: Path) -> None:
    weights = {"ce": "file:digits.safetensors sha256:98e5976b74131e12",
               "gain": "file:digits.safetensors sha256:0123456789abcdef"}
    fields = {variant: {"backbone_weights": value} for variant, value in weights.items()}
    report = build_report(build_seeded_results(tmp_path, {name: SEEDED_MIOU[name] for name in weights},
                                               fields=fields), tmp_path / "reports")
    header = report.read_text().split("## Variants")[0]
    assert "**The runs started from 2 different backbone weights**" in header and "98e5976b74131e12" in header
    same = tmp_path / "same"
    report = build_report(build_seeded_results(same, {name: SEEDED_MIOU[name] for name in weights}), same / "reports")
    assert "different backbone weights" not in report.read_text()
