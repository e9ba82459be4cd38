"""`harness plan RESULTS_DIR`: a finished study as the pilot of the next one.

Per variant: the seeds its paired t-test needs to detect the study's target Δ with 80 % power at the SD of Δ
seen in the pilot, and the training hours a study of that many seeds of the variant and of the baseline takes
(report.md's Planning section, printed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.exitcodes import guarded
from harness.report.stats import ALPHA, POWER
from harness.report.study import load_study
from harness.report.tables import (
    aggregate_frame,
    machine_text,
    percent_text,
    plan_frame,
    plan_table,
    pp_text,
)


def plan_text(results_dir: Path, target_delta: float | None = None) -> str:
    """The planning table of a study, after a line saying what it plans for; `target_delta` overrides sweep.json's."""
    study = load_study(results_dir)
    target = study.sweep.target_delta if target_delta is None else target_delta
    plan = plan_frame(aggregate_frame(study.runs, target, study.sweep.equivalence_margin))
    if plan.empty:
        return f"{results_dir}: no variant has two seeds paired with a baseline: no SD of Δ to plan from"
    return (
        f"{results_dir}: seeds for {percent_text(POWER)} power against a true Δ of {pp_text(target)} (paired "
        f"t-test, two-sided α = {ALPHA:.2f}, at each variant's SD of Δ); hours of training, wall-clock on "
        f"{machine_text(study.runs)}\n\n{plan_table(plan, target)}"
    )


def main(argv: list[str] | None = None) -> None:
    """CLI: harness plan results/<recipe> [--target-delta 0.005]."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="results/<recipe> of the pilot study")
    parser.add_argument("--target-delta", type=float, default=None, help="the true Δ mIoU to detect, a fraction "
                        "(0.005 = 0.5 pp; default: the study's sweep.target_delta)")
    args = parser.parse_args(argv)
    if args.target_delta is not None and not args.target_delta > 0:
        parser.error("--target-delta must be above 0, like sweep.target_delta")
    print(plan_text(args.results_dir, args.target_delta))


if __name__ == "__main__":
    sys.exit(guarded(main))
