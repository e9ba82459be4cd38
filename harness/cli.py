"""`harness COMMAND [...]`: one entry point to the harness's commands; `harness COMMAND --help` for each one's options.

`python -m harness.<module>` runs the same command (the module is in COMMANDS); runs on several processes start with
`accelerate launch harness/run.py RECIPE` (README: Launching).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from harness.command import guarded

# command -> (the module whose main() it runs, what it does: the summary line of that module's docstring). The
# summaries are checked against the docstrings (tests/test_cli.py), and README's list of commands against these.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("harness.run", "train a recipe's sweep, each run in its folder"),
    "submit": ("harness.submit", "a study as scheduler jobs, one per run, and its report"),
    "status": ("harness.status", "where each run of a study stands, one line a run, then the totals"),
    "report": ("harness.report.build", "a study's report.md, tables and figures"),
    "plan": ("harness.report.plan", "a study as the pilot of the next one"),
    "evaluate": ("harness.evaluate", "evaluate a finished run's model again, or export its predictions"),
    "prepare": ("harness.prepare", "decode a recipe's real dataset once into its prepared stores"),
    "banks": ("benchmarks.bank_profile", "the banks' memory profile, predicted and measured"),
}


def listing() -> str:
    """The commands and what each does, for `harness --help`."""
    width = max(map(len, COMMANDS))
    return "commands:\n" + "\n".join(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__, epilog=listing(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND", help="one of the commands below")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's own arguments")
    args = parser.parse_args(argv)
    return guarded(importlib.import_module(COMMANDS[args.command][0]).main, args.args)


if __name__ == "__main__":
    sys.exit(main())
