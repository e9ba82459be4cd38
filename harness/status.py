"""`harness status RESULTS_DIR`: where each run of a study stands, one line a run, then the totals.

A run is pending, running (iteration, elapsed, ETA from its metrics log), finished (mIoU), failed
(the error's first line) or unreadable (which file, and what is wrong with it), and says how often it
was requeued. The runs are study.json's (a study
submitted with `harness submit`) or, for one launched otherwise, every variant's folder once per
seed. The scheduler (squeue, or the local executor's controller processes) tells whether a job
still lives; when none answers, the folder alone decides.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from submitit.core.utils import JobPaths

from harness.command import guarded
from harness.command import parser as command_parser
from harness.results import (
    METRICS_FILE,
    RECIPE_FILE,
    DamagedFile,
    StudyManifest,
    StudyRun,
    expected_runs,
    read_metrics,
    read_study,
    read_summary,
    run_dir,
    run_label,
)

# SLURM states after which a job never runs again (a requeued job passes through PENDING instead).
ENDED_STATES = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                "PREEMPTED", "TIMEOUT"}
STEP_TIMES_FOR_ETA = 20  # the last logged step times a run's ETA is the median of


# ---------------------------------------------------------------- the scheduler


def slurm_live_jobs() -> set[str] | None:
    """Ids of this user's SLURM jobs (array elements as <array>_<index>) that may still run; None when squeue fails."""
    try:
        done = subprocess.run(["squeue", "--noheader", "--me", "--array", "--states=all", "--format=%i|%T"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    rows = (line.split("|", 1) for line in done.stdout.split())
    return {job_id for job_id, state in rows if state not in ENDED_STATES}


def local_job_alive(job_id: str) -> bool:
    """Whether a local job's controller (the local executor's job id is its pid) still runs."""
    try:
        return psutil.Process(int(job_id)).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def live_jobs(study: StudyManifest) -> set[str] | None:
    """The study's jobs its scheduler says may still run; None when the scheduler does not answer."""
    ids = {run.job_id for run in study.runs} | {study.report_job_id, study.controller_job_id}
    ids.discard(None)
    if study.executor == "local":
        return {job_id for job_id in ids if local_job_alive(job_id)}
    live = slurm_live_jobs()
    return None if live is None else ids & live


# ---------------------------------------------------------------- one run


@dataclass(frozen=True)
class RunStatus:
    """One run's line: its label, its state (pending, running, finished, failed), what to add, its requeues."""

    label: str
    state: str
    detail: str
    requeues: int

    def line(self) -> str:
        requeued = f" (requeued {self.requeues} time{'s' * (self.requeues != 1)})" if self.requeues else ""
        return f"{self.label:<28} {self.state:<9} {self.detail}{requeued}".rstrip()


def clock(seconds: float) -> str:
    """Seconds as h:mm:ss."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress(folder: Path, iterations: int | None) -> str:
    """Iteration, time since the run (re)started and the ETA, from its metrics log."""
    path = folder / METRICS_FILE
    try:
        train = [record for record in read_metrics(path) if record.kind == "train"] if path.exists() else []
    except DamagedFile as damage:
        return f"progress unknown ({damage})"
    if not train:
        return "starting"
    iteration = train[-1].iter
    elapsed = time.time() - (folder / RECIPE_FILE).stat().st_mtime  # recipe.yaml is written as each launch starts
    steps = [record.numbers().get("step_time") for record in train[-STEP_TIMES_FOR_ETA:]]
    steps = [step for step in steps if step]
    eta = f", ETA {clock((iterations - iteration) * statistics.median(steps))}" if steps and iterations else ""
    return f"iteration {iteration}/{iterations}, {clock(elapsed)} elapsed{eta}"


def run_status(results_dir: Path, entry: StudyRun, live: set[str] | None, jobs_dir: Path | None) -> RunStatus:
    """One run's state from its folder, its manifest entry and (when it answers) its scheduler."""
    folder = run_dir(results_dir, entry.variant, entry.seed)
    label = run_label(entry.variant, entry.seed)
    try:
        summary = read_summary(folder)
    except DamagedFile as damage:
        return RunStatus(label, "unreadable", str(damage), entry.requeue_count)
    requeues = max(entry.requeue_count, summary.requeue_count)
    if summary.status == "ok":
        return RunStatus(label, "finished", f"mIoU {100 * summary.miou:.2f}", requeues)
    if summary.status == "failed":
        return RunStatus(label, "failed", (summary.error or "").splitlines()[0] if summary.error else "", requeues)
    job_id = entry.job_id
    job = f"job {job_id}" if job_id else ""
    if live is not None and job_id is not None and job_id not in live:
        log = f"; log: {JobPaths(jobs_dir, job_id).stdout}" if jobs_dir else ""
        return RunStatus(label, "failed", f"{job} ended before the run finished{log}", requeues)
    state = entry.state if job_id else None  # a run of a study launched without jobs has no manifest state
    if state == "requeued" or (state is None and summary.status == "interrupted"):
        return RunStatus(label, "pending", f"{job} requeued, resumes from its checkpoint".strip(), requeues)
    if state == "running" or (state is None and (folder / METRICS_FILE).exists()):
        return RunStatus(label, "running", f"{progress(folder, summary.iterations)} {job}".strip(), requeues)
    return RunStatus(label, "pending", job, requeues)


# ---------------------------------------------------------------- a study


def study_status(results_dir: Path) -> tuple[list[RunStatus], str]:
    """Every expected run's status, and where the states came from."""
    results_dir = Path(results_dir)
    try:
        study, source = read_study(results_dir), "from the folder (no study.json)"
    except DamagedFile as damage:
        study, source = None, f"from the folder: {damage}"
    if study is None:
        entries = [StudyRun(variant=variant, seed=seed, folder="") for variant, seed in expected_runs(results_dir, None)]
        return [run_status(results_dir, entry, None, None) for entry in entries], source
    live = live_jobs(study)
    silent = ", from the folder alone: the scheduler does not answer" if live is None else ""
    source = f"{study.executor} jobs{silent}"
    jobs_dir = results_dir / study.jobs_dir
    return [run_status(results_dir, entry, live, jobs_dir) for entry in study.runs], source


def totals(statuses: list[RunStatus]) -> str:
    """`4 runs: 2 finished, 1 running, 1 pending, 0 failed; 1 requeue`."""
    counts = ", ".join(f"{sum(s.state == state for s in statuses)} {state}"
                       for state in ("finished", "running", "pending", "failed", "unreadable")
                       if state != "unreadable" or any(s.state == state for s in statuses))
    requeues = sum(status.requeues for status in statuses)
    return f"{len(statuses)} runs: {counts}; {requeues} requeue{'s' * (requeues != 1)}"


def print_status(results_dir: Path) -> list[RunStatus]:
    """Print the study's lines and totals; its statuses."""
    statuses, source = study_status(results_dir)
    print(f"{results_dir} ({source})")
    for status in statuses:
        print(status.line())
    print(totals(statuses))
    return statuses


def main(argv: list[str] | None = None) -> int:
    """CLI: harness status RESULTS_DIR."""
    parser = command_parser("status", __doc__)
    parser.add_argument("results_dir", type=Path, help="results/<recipe> of a study")
    args = parser.parse_args(argv)
    if not args.results_dir.is_dir():
        parser.error(f"no such folder: {args.results_dir}")
    print_status(args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))
