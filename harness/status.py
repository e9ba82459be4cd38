"""`harness status RESULTS_DIR`: where each run of a study stands, one line a run, then the totals.

A run is pending, running (iteration, elapsed, ETA from its metrics log), finished (mIoU), failed
(the error's first line) or unreadable (which file, and what is wrong with it), and says how often it
was requeued. The runs are study.json's (a study
submitted with `harness submit`) or, for one launched otherwise, every variant's folder once per
seed. The scheduler (squeue, or the local executor's controller processes) tells whether a job
still lives; when none answers, the folder alone decides.
"""

from __future__ import annotations

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
    read_sweep,
    run_dir,
    run_folders,
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
    """One run's row: its label, its state (pending, running, finished, failed, unreadable), what to add, its job and
    its requeues."""

    label: str
    state: str
    detail: str
    job: str = ""
    requeues: int = 0


COLUMNS = ("run", "state", "detail", "job", "requeues")


def table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows of cells as aligned columns, a header first; the last column unpadded."""
    widths = [max(len(row[index]) for row in [COLUMNS, *rows]) for index in range(len(COLUMNS) - 1)]
    return [" ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]).rstrip()
            for row in [COLUMNS, *rows]]


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
    label, job = run_label(entry.variant, entry.seed), entry.job_id or ""
    try:
        summary = read_summary(folder)
    except DamagedFile as damage:
        return RunStatus(label, "unreadable", str(damage), job, entry.requeue_count)
    requeues = max(entry.requeue_count, summary.requeue_count)
    if summary.status == "ok":
        return RunStatus(label, "finished", f"{summary.eval_split} mIoU {100 * summary.miou:.2f}", job, requeues)
    if summary.status == "failed":
        return RunStatus(label, "failed", (summary.error or "no error recorded").splitlines()[0], job, requeues)
    if live is not None and entry.job_id is not None and entry.job_id not in live:
        log = f"; log: {JobPaths(jobs_dir, entry.job_id).stdout}" if jobs_dir else ""
        return RunStatus(label, "failed", f"its job ended before the run finished{log}", job, requeues)
    state = entry.state if entry.job_id else None  # a run of a study launched without jobs has no manifest state
    if state == "requeued" or (state is None and summary.status == "interrupted"):
        return RunStatus(label, "pending", "requeued, resumes from its checkpoint", job, requeues)
    if state == "running" or (state is None and (folder / METRICS_FILE).exists()):
        return RunStatus(label, "running", progress(folder, summary.iterations), job, requeues)
    return RunStatus(label, "pending", "", job, requeues)


def job_status(role: str, job_id: str | None, live: set[str] | None, what: str) -> RunStatus | None:
    """The row of a study's own job (its report job, its controller): running or ended, per its scheduler."""
    if job_id is None:
        return None
    state = "unknown" if live is None else "running" if job_id in live else "ended"
    return RunStatus(role, state, what, job_id)


# ---------------------------------------------------------------- a study


def study_status(results_dir: Path) -> tuple[list[RunStatus], list[RunStatus], str]:
    """Every expected run's status, the study's own jobs' (controller, report), and where the states came from."""
    results_dir = Path(results_dir)
    try:
        study, source = read_study(results_dir), "from the folder (no study.json)"
    except DamagedFile as damage:
        study, source = None, f"from the folder: {damage}"
    if study is None:
        entries = [StudyRun(variant=variant, seed=seed, folder="") for variant, seed in expected_runs(results_dir, None)]
        return [run_status(results_dir, entry, None, None) for entry in entries], [], source
    live = live_jobs(study)
    silent = ", from the folder alone: the scheduler does not answer" if live is None else ""
    jobs_dir = results_dir / study.jobs_dir
    runs = [run_status(results_dir, entry, live, jobs_dir) for entry in study.runs]
    jobs = [job_status("controller", study.controller_job_id, live, "submits each look's runs until decided"),
            job_status("report", study.report_job_id, live, "builds the report once the runs have ended")]
    return runs, [job for job in jobs if job is not None], f"{study.executor} jobs{silent}"


def totals(statuses: list[RunStatus]) -> str:
    """`4 runs: 2 finished, 1 running, 1 pending, 0 failed; 1 requeue`."""
    counts = ", ".join(f"{sum(s.state == state for s in statuses)} {state}"
                       for state in ("finished", "running", "pending", "failed", "unreadable")
                       if state != "unreadable" or any(s.state == state for s in statuses))
    requeues = sum(status.requeues for status in statuses)
    return f"{len(statuses)} runs: {counts}; {requeues} requeue{'s' * (requeues != 1)}"


def decision_lines(results_dir: Path) -> list[str]:
    """A sequential study's decisions so far, a line per variant; none for a fixed design."""
    try:
        sequential = read_sweep(results_dir).design == "sequential"
    except DamagedFile as damage:
        return [f"unreadable: {damage}"]
    if not sequential or not run_folders(results_dir):
        return []
    from harness.report.study import load_study  # pandas, for sequential studies only

    aggregate = load_study(results_dir).aggregate
    rows = aggregate[~aggregate["is_baseline"]]
    if rows.empty:  # no variant but the baseline has a folder yet
        return []
    width = max(len(name) for name in rows["variant"])
    return ["decisions (sequential design):", *(f"  {name:<{width}}  {verdict}"
                                                for name, verdict in zip(rows["variant"], rows["verdict"]))]


def print_status(results_dir: Path) -> list[RunStatus]:
    """Print the study's table (its runs, then its own jobs), the totals and a sequential study's decisions; the
    runs' statuses."""
    statuses, jobs, source = study_status(results_dir)
    print(f"{results_dir} ({source})")
    rows = [(status.label, status.state, status.detail, status.job, str(status.requeues) if status.requeues else "")
            for status in [*statuses, *jobs]]
    print("\n".join(table(rows)))
    print(totals(statuses))
    for line in decision_lines(results_dir):
        print(line)
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
