"""A tiny study as scheduler jobs: submit-to-report wall time, and seconds from a preemption signal to training again.

The study: CE (10 iterations) and RegionContrast (60 iterations) on 32x32 digit scenes, seeds 0 and 1,
four jobs submitted with `harness submit --max-parallel 2 --wait`. Once region (seed 0) has logged
iteration 20, its job is preempted as its scheduler does it (local executor: SIGUSR2 to the task
process; SLURM: `scancel --signal=TERM`, then `--signal=USR2`). It saves, is requeued and resumes;
"signal to training" is the time from the signal to its first new metrics record. A job SLURM
requeues becomes eligible about two minutes later; this releases it at once (`scontrol update
StartTime=now`), as the timing is of the harness, not of the cluster's policy.

    python -m benchmarks.study_jobs [--executor local slurm] [--root DIR]

tests/test_submit.py runs the same study and checks the interrupted run against one never interrupted.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import yaml

from harness.results import METRICS_FILE, StudyRun, read_metrics, read_study, read_summary

REPO = Path(__file__).resolve().parents[1]
# The jobs import this tree's harness, wherever an editable install points.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
PREEMPTED, PREEMPT_AT = "region/seed-0", 20
POLL_S = 0.2


def tiny_study(folder: Path, name: str = "study") -> Path:
    """Write the study's recipe (results and reports under `folder`); its path."""
    tree = {
        "run": {"name": name, "output_dir": str(folder / "results"), "reports_dir": str(folder / "reports"),
                "log_interval": 1, "cost_probe": False},  # the probe's 20 rounds would outlast these runs
        "data": {"dataset": "digit_scenes", "root": str(folder / "cache"), "crop_size": 32, "batch_size": 2,
                 "digit_scenes": {"train_images": 8, "val_images": 4, "image_size": 32, "digits_per_image": [1, 2]}},
        "model": {"backbone": "resnet18", "head_channels": 16, "aux_channels": 16},
        "loss": {"contrast": {"kind": "region"}},
        "optim": {"iterations": 60},
        "sweep": {"seeds": [0, 1], "variants": {"ce": {"loss.contrast.kind": "none", "optim.iterations": 10},
                                                "region": {}}},
    }
    path = folder / f"{name}.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def submit(recipe: Path, executor: str, *extra: str) -> subprocess.Popen:
    """`harness submit RECIPE --executor E --max-parallel 2 --wait`, started in the background."""
    command = [sys.executable, "-m", "harness.submit", str(recipe), "--executor", executor, "--max-parallel", "2",
               "--wait", *extra]
    return subprocess.Popen(command, cwd=recipe.parent, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wait_until(ready: Callable[[], object], timeout: float, what: str) -> object:
    """Poll `ready` until it returns something truthy; that value (TimeoutError naming `what` after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(POLL_S)
    raise TimeoutError(f"no {what} after {timeout:.0f} s")


def logged(folder: Path) -> int:
    """The last training iteration in a run's metrics log (0 before the first)."""
    path = folder / METRICS_FILE
    train = [record.iter for record in read_metrics(path) if record.kind == "train"] if path.exists() else []
    return train[-1] if train else 0


def study_entry(recipe_dir: Path, folder: str) -> StudyRun | None:
    """study.json's entry for a run folder (None before the manifest names it)."""
    study = read_study(recipe_dir)
    return next((run for run in study.runs if run.folder == folder), None) if study else None


def job_of(recipe_dir: Path, folder: str) -> str | None:
    """The job study.json names for a run folder, once it is written."""
    entry = study_entry(recipe_dir, folder)
    return entry.job_id if entry else None


def run_state(recipe_dir: Path, folder: str) -> str | None:
    """The state study.json gives a run folder."""
    entry = study_entry(recipe_dir, folder)
    return entry.state if entry else None


def preempt(executor: str, job_id: str) -> float:
    """Send the job the warning its scheduler sends on preemption; the time it was sent."""
    sent = time.time()
    if executor == "local":  # the task process, child of the local controller (which ignores it)
        os.kill(psutil.Process(int(job_id)).children()[0].pid, signal.SIGUSR2)
    else:
        for name in ("TERM", "USR2"):
            subprocess.run(["scancel", f"--signal={name}", job_id], check=True)
    return sent


def release_when_requeued(recipe_dir: Path, job_id: str, timeout: float) -> None:
    """Make a job SLURM requeued eligible now instead of in about two minutes (an error if it ended instead)."""
    def pending() -> bool:
        state = subprocess.run(["squeue", "--noheader", "--array", "--jobs", job_id, "--format=%T"],
                               capture_output=True, text=True).stdout.split()
        if not state and run_state(recipe_dir, PREEMPTED) in ("finished", "failed"):
            log = recipe_dir / ".submitit" / f"{job_id}_0_log.out"
            raise RuntimeError(f"job {job_id} ended instead of being requeued; its log ends:\n"
                               f"{log.read_text()[-3000:] if log.exists() else '(no log)'}")
        return state == ["PENDING"]

    wait_until(pending, timeout, f"requeued job {job_id}")
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)


def resumed(recipe_dir: Path, folder: Path) -> bool:
    """Whether an interrupted run is training again: a metrics record past the iteration its checkpoint holds."""
    summary = read_summary(folder)
    if run_state(recipe_dir, PREEMPTED) == "failed":
        raise RuntimeError(f"{PREEMPTED} failed instead of resuming: {summary.error or summary.status}")
    return summary.status == "interrupted" and logged(folder) > summary.iteration


def run_study(root: Path, executor: str, timeout: float = 1800) -> dict[str, float]:
    """Submit the study, preempt one run mid-training, wait for the report; the timings and the submit output."""
    recipe = tiny_study(root)
    recipe_dir, started = root / "results" / "study", time.time()
    process = submit(recipe, executor)
    folder = recipe_dir / PREEMPTED
    job_id = wait_until(lambda: job_of(recipe_dir, PREEMPTED), timeout, "job for the preempted run")
    wait_until(lambda: logged(folder) >= PREEMPT_AT, timeout, f"iteration {PREEMPT_AT} of {PREEMPTED}")
    sent = preempt(executor, job_id)
    if executor == "slurm":
        release_when_requeued(recipe_dir, job_id, timeout)
    wait_until(lambda: resumed(recipe_dir, folder), timeout, f"{PREEMPTED} training again")
    back = time.time()
    output, _ = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"harness submit exited {process.returncode}:\n{output[-3000:]}")
    return {"submit_to_report_s": time.time() - started, "signal_to_training_s": back - sent, "output": output}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executor", nargs="+", choices=("local", "slurm"), default=["local", "slurm"])
    parser.add_argument("--root", type=Path, default=None, help="where the studies go (default: a temporary folder)")
    args = parser.parse_args(argv)
    root = args.root or Path(tempfile.mkdtemp(prefix="study_jobs_"))
    print(f"{platform.node()}: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {time.ctime()}")
    print("| executor | submit to report (s) | signal to training again (s) |\n|---|---|---|")
    for executor in args.executor:
        figures = run_study(root / executor, executor)
        print(f"| {executor} | {figures['submit_to_report_s']:.1f} | {figures['signal_to_training_s']:.1f} |")
    print(f"load average after: {os.getloadavg()[0]:.1f}; studies under {root}")


if __name__ == "__main__":
    main()
