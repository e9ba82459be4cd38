"""Results folders -> a markdown report, tidy CSVs and seaborn plots.

`python -m harness.report results/<recipe> [--out reports]` writes reports/<recipe>/: report.md,
results.csv (one row per run), aggregate.csv (one row per variant: means over seeds and the paired
comparison with the CE baseline), curves.csv and the plots.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import seaborn as sns

from harness.report.plots import figure_sections, make_plots
from harness.report.tables import (
    aggregate_frame,
    curves_frame,
    per_class_frame,
    report_markdown,
    results_frame,
    study_summaries,
)
from harness.results import expected_runs, missing_runs, read_sweep, write_text


def partial_study(results_dir: Path) -> str | None:
    """`k of n runs finished; missing: ...` while some of the study's expected runs have not finished."""
    missing = missing_runs(results_dir)
    if not missing:
        return None
    expected = len(expected_runs(results_dir))
    return f"{expected - len(missing)} of {expected} runs finished; missing: {', '.join(missing)}"


def build_report(results_dir: Path, reports_root: Path = Path("reports")) -> Path:
    """Write reports/<recipe>/ (report.md, results.csv, aggregate.csv, curves.csv, plots); returns report.md's path."""
    results_dir = Path(results_dir)
    recipe = results_dir.resolve().name  # resolved, so that "." or a trailing slash still names it
    out = Path(reports_root) / recipe
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):  # a plot the data no longer supports must not linger
        stale.unlink()
    summaries = study_summaries(results_dir)
    sweep = read_sweep(results_dir)
    frame = results_frame(summaries, sweep["baseline"])
    aggregate = aggregate_frame(frame, sweep["target_delta"], sweep["equivalence_margin"])
    curves = curves_frame(results_dir, frame)
    write_text(out / "results.csv", frame.convert_dtypes().to_csv(index=False))  # integral counts print as ints
    write_text(out / "aggregate.csv", aggregate.convert_dtypes().to_csv(index=False))
    write_text(out / "curves.csv", curves.to_csv(index=False))
    with sns.axes_style("whitegrid"):  # a context, not set_theme: the engine's process keeps its style
        figures = figure_sections(make_plots(frame, aggregate, curves, results_dir, out))
    report = out / "report.md"
    per_class = per_class_frame(summaries)
    partial = partial_study(results_dir)
    write_text(report, report_markdown(recipe, results_dir, frame, aggregate, sweep, figures, per_class, partial))
    return report


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m harness.report results/<recipe> [--out reports]."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="results/<recipe>, one sub-folder per variant (or seed)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="reports root (default: reports)")
    args = parser.parse_args(argv)
    print(build_report(args.results_dir, args.out))
    partial = partial_study(args.results_dir)
    if partial:
        print(partial)
