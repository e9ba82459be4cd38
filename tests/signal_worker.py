"""Started by tests/test_faults.py under torchrun: harness/run.py, with one rank sending itself a stop signal.

HARNESS_TEST_SIGNAL_RANK names the rank and HARNESS_TEST_SIGNAL_AT the iteration during whose step it
receives SIGUSR2, as a scheduler's warning that reaches one task first would arrive.
"""

from __future__ import annotations

import os
import signal
import sys

from harness import run
from harness.engine.step import Trainer


def signal_one_rank(rank: int, iteration: int) -> None:
    """Wrap Trainer.step so that `rank` receives SIGUSR2 during the step of `iteration`."""
    step = Trainer.step

    def step_and_signal(self: Trainer, batch: dict, it: int) -> dict:
        if it == iteration and self.accelerator.process_index == rank:
            os.kill(os.getpid(), signal.SIGUSR2)
        return step(self, batch, it)

    Trainer.step = step_and_signal


if __name__ == "__main__":
    signal_one_rank(int(os.environ["HARNESS_TEST_SIGNAL_RANK"]), int(os.environ["HARNESS_TEST_SIGNAL_AT"]))
    sys.exit(run.main(sys.argv[1:]))
