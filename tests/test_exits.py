"""No exit hangs: whatever ends a run's main process ends its DataLoader workers with it, and a local study's
jobs never hold the output of the command that submitted them.

Each case is a real process in a session of its own, with a timeout, so that a regression fails
instead of hanging; whatever it leaves running is killed at the end.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import psutil
import pytest

from benchmarks.study_jobs import ENV, tiny_study
from harness.submit import CONTROLLERS_LOG, JOBS_DIR
from tests.test_run import tiny_recipe, write

# torch's teardown alone takes seconds on a loaded 2-core machine; a hang takes forever.
EXIT_S = 30
START_S = 300  # imports, data and model before the first step, on the same loaded machine

# A run that, in its third training step, with its loader's worker alive, is stopped by two Ctrl-C (sent to
# every process of the group, as a terminal does; the handler runs between them) or fails.
STOPPED_RUN = '''
import os, signal, sys, time
import psutil
from harness import run
from harness.engine.step import Trainer

step = Trainer.step

def stepped(self, batch, iteration):
    if iteration == 3:
        print("workers", *(child.pid for child in psutil.Process().children()), flush=True)
        if sys.argv[2] == "raise":
            raise RuntimeError("a failure mid-training")
        for _ in range(2):
            os.killpg(0, signal.SIGINT)
            time.sleep(0.5)
    return step(self, batch, iteration)

Trainer.step = stepped
sys.exit(run.main([sys.argv[1], "--no-report"]))
'''

# A script that takes one batch from a run's endless batches and ends with them live: returning or raising.
LIVE_BATCHES = '''
import sys
from pathlib import Path
import psutil
from harness import engine
from harness.recipe import load_sweep

recipe = load_sweep(Path(sys.argv[1]), [])[0][0].recipe
setup = engine.set_up(engine.make_accelerator(recipe), recipe)
batches = engine.endless(setup.train_loader, setup.train_set, 0)
next(batches)
print("workers", *(child.pid for child in psutil.Process().children()), flush=True)
if sys.argv[2] == "raise":
    raise RuntimeError("an error with the batches live")
'''


def ended(pid: int) -> bool:
    """Whether a process is gone (a zombie has ended: only its exit status is left)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def printed_line(log: Path, start: str, process: subprocess.Popen, timeout: float) -> str:
    """The first line of `log` that starts with `start`, once the process has written it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in log.read_text().splitlines() if line.startswith(start)]
        if lines:
            return lines[0]
        assert process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    raise TimeoutError(f"no '{start}' line after {timeout} s: {log.read_text()[-3000:]}")


@pytest.fixture
def session() -> Iterator[list[subprocess.Popen]]:
    """Processes each started in a session of their own; whatever is left of their groups is killed at the end."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


@pytest.mark.slow
@pytest.mark.parametrize(("script", "action", "code"), [
    (STOPPED_RUN, "ctrl-c-twice", -signal.SIGINT),  # KeyboardInterrupt: Python ends itself by SIGINT
    (STOPPED_RUN, "raise", 1),  # the run is recorded as failed, the sweep ends with exit code 1
    (LIVE_BATCHES, "return", 0),
    (LIVE_BATCHES, "raise", 1),
], ids=["second-ctrl-c", "failed-run", "script-ends", "script-raises"])
def test_the_loader_workers_end_with_their_main_process(tmp_path: Path, session: list[subprocess.Popen],
                                                        script: str, action: str, code: int) -> None:
    recipe = write(tmp_path, tiny_recipe(tmp_path, data={"num_workers": 1}, optim={"iterations": 50}))
    (tmp_path / "script.py").write_text(script)
    log = tmp_path / "output.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, str(tmp_path / "script.py"), str(recipe), action], cwd=tmp_path,
                                   env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    session.append(process)
    workers = [int(pid) for pid in printed_line(log, "workers", process, START_S).split()[1:]]
    assert workers, "the recipe should load with a worker process"
    assert process.wait(timeout=EXIT_S) == code, log.read_text()[-3000:]
    assert all(ended(pid) for pid in workers), "a loader worker outlived its main process"


@pytest.mark.slow
@pytest.mark.distributed
def test_a_local_submission_through_a_pipe_returns_while_its_jobs_run(tmp_path: Path) -> None:
    recipe = tiny_study(tmp_path)
    command = [sys.executable, "-m", "harness.submit", str(recipe), "--executor", "local", "--only", "ce"]
    jobs_dir = tmp_path / "results" / "study" / JOBS_DIR
    try:
        # As `harness submit ... | tee log`: the pipe ends when every holder of its writing end has closed it.
        done = subprocess.run(command, cwd=tmp_path, env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=120)
        assert done.returncode == 0, done.stdout[-3000:]
        report_job = int(re.search(r"^report: job (\d+)", done.stdout, re.MULTILINE).group(1))
        # The report job waits for both runs, and the second run for the first (one lane): still running.
        assert not ended(report_job), done.stdout
        assert (jobs_dir / CONTROLLERS_LOG).is_file()
    finally:
        cancel([int(path.name.split("_")[0]) for path in jobs_dir.glob("*_submitted.pkl")])


def cancel(job_ids: list[int]) -> None:
    """End local jobs as submitit's LocalJob.cancel does (SIGINT to the controller), then kill what is left."""
    tree: list[psutil.Process] = []
    for job_id in job_ids:
        with suppress(psutil.NoSuchProcess):
            controller = psutil.Process(job_id)
            tree += [controller, *controller.children(recursive=True)]
            controller.send_signal(signal.SIGINT)
    deadline = time.monotonic() + EXIT_S  # polled: an orphan's zombie may wait for a reaper that never comes
    while time.monotonic() < deadline and not all(ended(process.pid) for process in tree):
        time.sleep(0.2)
    for process in tree:
        with suppress(psutil.NoSuchProcess):
            process.kill()
