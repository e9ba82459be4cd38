"""`harness plan RESULTS_DIR [--design fixed|sequential]`: a study as the pilot of the next one.

Fixed: per variant, the seeds a paired t-test at the family's level (α / V) needs to detect the study's target Δ with
80 % power, at the pilot's SD of Δ and at that SD's 80 % upper confidence limit, and the training hours of a study of
that many seeds. Sequential: per variant, the group-sequential design of the same power and its expected seeds and
hours to a decision for true Δ = 0, target and 2 x target (simulated through harness.report.design), next to the fixed
design's, and the looks to write in a recipe. report.md's Planning section is the same text (planning.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.command import guarded, parser
from harness.report.planning import planning_lines
from harness.report.study import load_study

DESIGNS = ("fixed", "sequential")


def plan_text(results_dir: Path, target_delta: float | None = None, design_name: str | None = None) -> str:
    """The planning view of a study; `target_delta` overrides sweep.json's, `design_name` the study's design."""
    study = load_study(results_dir)
    sweep = study.sweep if target_delta is None else study.sweep.model_copy(update={"target_delta": target_delta})
    lines = planning_lines(study.runs, study.aggregate, sweep, design_name or sweep.design)
    if not lines:
        return (f"{results_dir}: no variant has two seeds paired with a baseline and no collapsed run: no SD of Δ "
                "to plan from")
    return f"{results_dir}: " + "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """CLI: harness plan results/<recipe> [--target-delta 0.005] [--design sequential]."""
    command = parser("plan", __doc__)
    command.add_argument("results_dir", type=Path, help="results/<recipe> of the pilot study")
    command.add_argument("--target-delta", type=float, default=None, help="the true Δ mIoU to detect, a fraction "
                         "(0.005 = 0.5 pp; default: the study's sweep.target_delta)")
    command.add_argument("--design", choices=DESIGNS, default=None,
                         help="the next study's design (default: the pilot's sweep.design)")
    args = command.parse_args(argv)
    if args.target_delta is not None and not args.target_delta > 0:
        command.error("--target-delta must be above 0, like sweep.target_delta")
    print(plan_text(args.results_dir, args.target_delta, args.design))


if __name__ == "__main__":
    sys.exit(guarded(main))
