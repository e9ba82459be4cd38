"""Results -> statistics, tables and plots: reports/<recipe>/ from results/<recipe>/.

It reads only files under results/, through the contract in harness/results.py, and imports no
torch, so a report can be rebuilt anywhere.

    build.py    build_report and the command line (`python -m harness.report`, `harness report`)
    stats.py    Student-t intervals, the paired comparison with the baseline, Holm, what it can detect
                (noncentral-t power, MDE, seeds for a target Δ, the exact sign-flip p), verdicts, the
                cost over CE (the runs' in-run probe, else the wall clock)
    tables.py   tidy frames (runs, variants, curves, per-class IoU, the plan) and report.md's markdown
    plots.py    the seaborn / matplotlib figures, t-SNE and qualitative included
    plan.py     `harness plan RESULTS_DIR`: seeds and training hours the next study needs
"""

from harness.report.build import build_report, main
from harness.report.plots import save
from harness.report.tables import markdown_table

__all__ = ["build_report", "main", "markdown_table", "save"]  # markdown_table, save: benchmarks/bank_profile.py
