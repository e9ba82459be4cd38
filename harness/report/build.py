"""`harness report RESULTS_DIR [--out reports]`: a study's report.md, tables and figures.

It writes reports/<recipe>/ (`python -m harness.report` runs the same): report.md, results.csv (one row per run),
aggregate.csv (one row per variant: means over seeds, the paired comparison with the CE baseline and the study
design's verdict), curves.csv and the plots.
"""

from __future__ import annotations

from pathlib import Path

import seaborn as sns

from harness.command import EXIT_INCOMPLETE, EXIT_OK, parser
from harness.report.planning import planning_section
from harness.report.plots import Look, figure_sections, make_plots
from harness.report.study import Study, load_study
from harness.report.tables import per_class_frame, report_markdown, split_words
from harness.results import write_text


def look_of(study: Study) -> Look:
    """What the figures say of the study: its split, and how much of it is in."""
    progress = study.progress()
    return Look(study.split, split_words(study.split), f" ({progress})" if progress else "")


def build_report(results_dir: Path, reports_root: Path = Path("reports")) -> Path:
    """Write reports/<recipe>/ (report.md, results.csv, aggregate.csv, curves.csv, plots); returns report.md's path."""
    return write_report(load_study(results_dir), reports_root)


def write_report(study: Study, reports_root: Path) -> Path:
    """Write a loaded study's reports/<recipe>/; report.md's path."""
    out = Path(reports_root) / study.name
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):  # a plot the data no longer supports must not linger
        stale.unlink()
    write_text(out / "results.csv", study.runs.convert_dtypes().to_csv(index=False))  # integral counts as ints
    write_text(out / "aggregate.csv", study.aggregate.convert_dtypes().to_csv(index=False))
    write_text(out / "curves.csv", study.curves.to_csv(index=False))
    look = look_of(study)
    with sns.axes_style("whitegrid"):  # a context, not set_theme: the engine's process keeps its style
        made = make_plots(study, out, look)
    report = out / "report.md"
    planning = planning_section(study.runs, study.aggregate, study.sweep)
    write_text(report, report_markdown(study, figure_sections(made, look), per_class_frame(study.summaries), planning))
    return report


def main(argv: list[str] | None = None) -> int:
    """CLI: harness report results/<recipe> [--out reports]; exit code 6 when the study is incomplete."""
    command = parser("report", __doc__)
    command.add_argument("results_dir", type=Path, help="results/<recipe>, one sub-folder per variant (or seed)")
    command.add_argument("--out", type=Path, default=Path("reports"), help="reports root (default: reports)")
    args = command.parse_args(argv)
    if not args.results_dir.is_dir():
        command.error(f"no such folder: {args.results_dir}")
    study = load_study(args.results_dir)
    print(write_report(study, args.out))
    lacking = study.lacking()
    for line in lacking:
        print(line)
    return EXIT_INCOMPLETE if lacking else EXIT_OK
