"""What every harness command shares: its exit codes, its parser, and where a damaged file becomes one line.

    0  done: every run finished, the report or status is complete
    1  a run failed (its summary says why); the sweep went on
    2  bad input: a recipe, an override, an option or a folder that cannot be what the command needs
    3  stopped on a signal after saving a checkpoint (--resume continues)
    4  a run folder is being written by another launch
    5  a file the command cannot go on without is damaged (the last line names it and what is wrong)
    6  the study is incomplete: the report or status was made without runs that have not finished or whose
       files are unreadable (each listed)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from harness.results import DamagedFile

EXIT_OK, EXIT_FAILED_VARIANT, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_BUSY = 0, 1, 2, 3, 4
EXIT_DAMAGED, EXIT_INCOMPLETE = 5, 6


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The parser of `harness NAME`: its usage and errors name the subcommand, its help is the module's docstring."""
    return argparse.ArgumentParser(prog=f"harness {name}", description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def guarded(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command's main; a damaged file it could not go on without ends it with one line naming the file."""
    try:
        result = main(argv)
    except DamagedFile as damage:
        print(f"error: {damage}", file=sys.stderr)
        return EXIT_DAMAGED
    return result if isinstance(result, int) else EXIT_OK
