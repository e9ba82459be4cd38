"""The `harness` command: one entry point to the harness's command-line modules.

    harness run RECIPE [...]           train a recipe's sweep (harness/run.py); on several processes
                                       the documented way stays `accelerate launch harness/run.py RECIPE`
    harness evaluate RESULTS_DIR [...] re-evaluate or export a finished run (harness/evaluate.py)
    harness report RESULTS_DIR [...]   tables and plots of a recipe's results (harness/report/)
    harness plan RESULTS_DIR [...]     seeds and training hours a study needs, from a pilot (harness/report/plan.py)
    harness prepare RECIPE [...]       decode a recipe's real dataset once into its prepared store (harness/prepare.py)
    harness submit RECIPE [...]        a study as scheduler jobs, one per run, and its report (harness/submit.py)
    harness status RESULTS_DIR         where each run of a study stands (harness/status.py)
    harness banks [...]                the banks' memory profile (benchmarks/bank_profile.py)

Everything after the subcommand goes to that module's own options (`harness run --help`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from harness.exitcodes import guarded

COMMANDS: dict[str, str] = {
    "run": "harness.run", "evaluate": "harness.evaluate", "report": "harness.report", "banks": "benchmarks.bank_profile",
    "plan": "harness.report.plan", "submit": "harness.submit", "status": "harness.status",
    "prepare": "harness.prepare",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the subcommand's own arguments")
    args = parser.parse_args(argv)
    return guarded(importlib.import_module(COMMANDS[args.command]).main, args.args)


if __name__ == "__main__":
    sys.exit(main())
