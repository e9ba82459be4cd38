"""Results -> statistics, tables and plots: reports/<recipe>/ from results/<recipe>/.

It reads only files under results/, through the contract in harness/results.py, and imports no
torch, so a report can be rebuilt anywhere.

    build.py      build_report and the command line (`python -m harness.report`, `harness report`)
    study.py      load_study: a study read once (runs, variants, curves, sweep, manifest, what is missing)
    design.py     the decision code of both designs (fixed: one Holm-Shaffer family of every variant's
                  superiority and equivalence claims; sequential: repeated t CIs at planned looks), their
                  simulation and planning; torch- and pandas-free
    decisions.py  a study's runs through design.py: Δ per seed, the design's reading, the verdict or why none
    stats.py      what decides nothing: Student-t intervals, MDE, seeds for a target Δ, the SD's upper limit,
                  the exact sign-flip p, the cost over CE (the runs' in-run probe, else the wall clock)
    tables.py     tidy frames (runs, variants, curves, per-class IoU) and report.md's markdown
    plots.py      the seaborn / matplotlib figures, t-SNE and qualitative included
    planning.py   a study as the pilot of the next one, fixed or sequential (report.md's Planning section)
    plan.py       `harness plan RESULTS_DIR`: the same, printed
    answer.py     a study's answer in a few lines, printed where a sweep or a study ends
"""

from harness.report.build import build_report, main
from harness.report.plots import save
from harness.report.tables import markdown_table

__all__ = ["build_report", "main", "markdown_table", "save"]  # markdown_table, save: benchmarks/bank_profile.py
