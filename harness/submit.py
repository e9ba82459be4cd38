"""`harness submit RECIPE --executor {slurm,local} [...]`: a study as scheduler jobs, one per run, and its report.

One submitit job per (variant, seed) of the expanded sweep runs what `accelerate launch harness/run.py
RECIPE --only NAME --seed K --resume` runs, on every GPU of its node(s): one task per GPU (or per CPU
rank), each a rank whose number, world and rendezvous come from the scheduler, with the ACCELERATE_*
settings of the launch config. A last job, started once all of them have ended (SLURM's afterany),
builds the report. results/<recipe>/study.json lists every expected run with its job and state;
submitting again skips finished runs and runs a live job holds, and resubmits the others, which
resume from their checkpoints. The jobs' pickles and logs are in results/<recipe>/.submitit/.

On the scheduler's warning (SLURM's SIGTERM on preemption, SIGUSR2 before the time limit) the run
saves an exact checkpoint at the next step boundary and returns EXIT_INTERRUPTED; the job then hands
the warning to submitit's own handler, which requeues it (`scontrol requeue`, or the local
executor's requeue), and the requeued job resumes the run exactly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable

from harness import run
from harness.command import EXIT_BAD_INPUT, EXIT_BUSY, EXIT_FAILED_VARIANT, EXIT_INTERRUPTED, EXIT_OK, guarded
from harness.command import parser as command_parser
from harness.progress import bar, on_terminal
from harness.recipe import RecipeError, SweepSpec, Variant, load_sweep
from harness.results import (
    DamagedFile,
    StudyManifest,
    StudyRun,
    finished,
    missing_runs,
    read_study,
    read_summary,
    run_dir,
    run_label,
    set_aside,
    study_lock,
    update_study_run,
    write_study,
    write_sweep,
)
from harness.status import live_jobs, local_job_alive, print_status

REPO = Path(__file__).resolve().parents[1]
JOBS_DIR = ".submitit"  # inside results/<recipe>/: submitit's pickles and the jobs' logs
CONTROLLERS_LOG = "local_controllers.log"  # in JOBS_DIR: what the local executor's job controllers print
# At most this many requeues at a job's time limit (preemptions are not counted): a run longer than --time-min
# resumes after each, a local job still waiting for its turn waits on.
MAX_TIMEOUTS = 20
REPORT_TIME_MIN = 60  # of a SLURM report job, which starts once the runs have ended
POLL_S = 5.0  # how often --wait and the local stand-in for dependencies look again


# ---------------------------------------------------------------- inside a job


def accelerate_environment(launch_config: Path) -> dict[str, str]:
    """The ACCELERATE_* variables `accelerate launch --config_file launch_config` gives its workers.

    Accelerate's own launcher code translates the config (mixed precision, DeepSpeed's settings,
    dynamo), so no key is translated twice; `_validate_launch_command` is the step of `accelerate
    launch` that merges the config file into its arguments (tests/test_submit.py pins the result).
    """
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import prepare_deepspeed_cmd_env, prepare_multi_gpu_env, prepare_simple_launcher_cmd_env

    # Port 0: the launcher picks a free one instead of checking the config's; the rendezvous is ours anyway.
    args = launch_command_parser().parse_args(["--config_file", str(launch_config), "--main_process_port", "0",
                                               "harness/run.py"])
    args, config, precision_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as launch_command tells DeepSpeed which settings the config file made
        args.deepspeed_fields_from_accelerate_config = ",".join(
            [*config.deepspeed_config, *(["mixed_precision"] if precision_from_config else [])])
        env = prepare_deepspeed_cmd_env(args)[1]
    elif args.multi_gpu:
        env = prepare_multi_gpu_env(args)
    else:
        env = prepare_simple_launcher_cmd_env(args)[1]
    return {key: value for key, value in env.items() if key.startswith("ACCELERATE_")}


def rendezvous_port(job_id: str) -> int:
    """A port every task of a job derives alike, different for jobs that share a host."""
    return 20000 + int(job_id) % 20000


def rank_environment(job: submitit.JobEnvironment, launch_config: Path, on_cpu: bool) -> dict[str, str]:
    """This task's environment, as `accelerate launch` and torchrun would give a worker of this job.

    Ranks, world and rendezvous come from the scheduler; one task alone without DeepSpeed runs
    without them, as `accelerate launch` runs one process.
    """
    env = accelerate_environment(launch_config)
    if on_cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    if job.num_tasks > 1 or env.get("ACCELERATE_USE_DEEPSPEED") == "true":
        env.update(RANK=str(job.global_rank), WORLD_SIZE=str(job.num_tasks), LOCAL_RANK=str(job.local_rank),
                   LOCAL_WORLD_SIZE=str(job.num_tasks // job.num_nodes), MASTER_ADDR=job.hostnames[0],
                   MASTER_PORT=str(rendezvous_port(job.raw_job_id)))
    return env


def wait_for_local_jobs(job_ids: tuple[str, ...]) -> None:
    """Block until these local jobs' controllers have exited: the local executor's stand-in for dependencies."""
    while any(local_job_alive(job_id) for job_id in job_ids):
        time.sleep(POLL_S)


def preemption_signal() -> signal.Signals:
    """The signal submitit's handler requeues on (SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise)."""
    return signal.Signals[f"SIG{submitit.JobEnvironment.USR_SIG}"]


@dataclass(frozen=True)
class RunJob(Checkpointable):
    """One run of a study as one job; every task of it is one rank of harness/run.py."""

    recipe: Path
    overrides: tuple[str, ...]
    variant: str
    seed: int | None
    launch_config: Path
    on_cpu: bool
    recipe_dir: Path
    after: tuple[str, ...] = ()  # local jobs to wait for (--max-parallel under the local executor)

    @property
    def folder(self) -> str:
        """The run's folder, relative to results/<recipe>/ as study.json names it."""
        return run_dir(Path(), self.variant, self.seed).as_posix()

    def argv(self) -> list[str]:
        """harness/run.py's arguments for this one run."""
        overrides = [word for override in self.overrides for word in ("--set", override)]
        seed = [] if self.seed is None else ["--seed", str(self.seed)]
        return [str(self.recipe), *overrides, "--only", self.variant, *seed, "--resume", "--no-report"]

    def __call__(self) -> None:
        """Run the run as this task's rank; on the scheduler's warning, requeue the job through submitit.

        The job's exit code is harness/run.py's (0 when the run finished or had finished already).
        """
        wait_for_local_jobs(self.after)
        job = submitit.JobEnvironment()
        os.environ.update(rank_environment(job, self.launch_config, self.on_cpu))
        main_rank = job.global_rank == 0
        preempted = preemption_signal()
        requeue: Callable[[int, Any], None] = signal.getsignal(preempted)  # submitit's, installed before this call
        if main_rank:
            update_study_run(self.recipe_dir, self.folder, job.job_id, "running")
        code = run.main(self.argv())
        if code == EXIT_INTERRUPTED:
            if main_rank:
                update_study_run(self.recipe_dir, self.folder, job.job_id, "requeued", requeued=True)
            for signum in (signal.SIGTERM, preempted):  # the checkpoint is saved: later warnings change nothing
                signal.signal(signum, signal.SIG_IGN)
            # submitit saves this same callable for the requeued job and requeues it (the main rank exits there);
            # the other ranks leave without a result, and the requeued job starts them again.
            requeue(preempted, None)
            sys.exit(0)
        if main_rank and code != EXIT_BUSY:  # a busy folder is another launch's: so is its entry
            update_study_run(self.recipe_dir, self.folder, job.job_id, "finished" if code == 0 else "failed")
        if code != 0:
            sys.exit(code)  # run.py said why (a busy folder's holder, a failure's error in its summary)


@dataclass(frozen=True)
class ReportJob(Checkpointable):
    """The study's last job: the report of whatever finished (`harness report`).

    Locally it waits for the runs inside its own time; past its limit it is requeued, as a run is.
    """

    recipe_dir: Path
    reports_dir: Path
    after: tuple[str, ...] = ()  # local jobs to wait for (SLURM waits through the job's dependency)

    def __call__(self) -> None:
        from harness.report import main as report_main  # pandas and seaborn: the report job's alone

        wait_for_local_jobs(self.after)
        report_main([str(self.recipe_dir), "--out", str(self.reports_dir)])


@dataclass(frozen=True)
class ControllerJob(Checkpointable):
    """A sequential study's controller (`--until-decided`): it submits the next look's runs of every undecided
    variant (and the baseline's, as far as any variant needs them), waits for them, decides again, and ends with
    the report once every variant is decided or at max_seeds.

    It keeps no state of its own: what to run next follows from the run folders through the report's decision
    code. Requeued on preemption or at its time limit, as a run is, it simply looks again; so does a new one that
    `harness submit --until-decided` starts after it ended.
    """

    args: argparse.Namespace
    recipe_dir: Path
    reports_dir: Path

    def __call__(self) -> int:
        every_run, sweep = load_sweep(self.args.recipe, self.args.overrides)
        return until_decided(self.args, run.select(every_run, self.args.only), sweep, self.recipe_dir,
                             self.reports_dir)


def seeds_wanted(sweep: SweepSpec, recipe_dir: Path, variants: list[str]) -> dict[str, int]:
    """How many of the sweep's seeds (in its order) each variant needs now: an undecided variant those of its next
    look (aggregate.csv's next_look, 0 once decided), a decided one none more, one the design cannot read yet (no
    finished pair) its first look's; the baseline as many as any variant needs."""
    from harness.report.study import load_study  # pandas: the controller's alone

    try:
        aggregate = load_study(recipe_dir).aggregate.set_index("variant")
    except FileNotFoundError:  # not one run folder yet
        aggregate = None
    wanted = {}
    for name in variants:
        if name == sweep.baseline:
            continue
        row = aggregate.loc[name] if aggregate is not None and name in aggregate.index else None
        if row is not None and row["next_look"] > 0:  # 0 once decided; NaN (no reading) compares false
            wanted[name] = int(row["next_look"])
        elif row is not None and isinstance(row["stopped"], str) and row["stopped"]:  # decided, or at max_seeds
            wanted[name] = 0
        else:
            wanted[name] = sweep.looks[0]
    wanted[sweep.baseline] = max(wanted.values(), default=0)
    return wanted


def until_decided(args: argparse.Namespace, runs: list[Variant], sweep: SweepSpec, recipe_dir: Path,
                  reports_dir: Path) -> int:
    """Submit look after look until every variant is decided; the report at the end. 0, or EXIT_FAILED_VARIANT
    when a run a look needs failed (the study waits for a person: submitting again retries it)."""
    while True:
        wanted = seeds_wanted(sweep, recipe_dir, list(dict.fromkeys(variant.name for variant in runs)))
        look = [variant for variant in runs if variant.seed in sweep.seeds[:wanted[variant.name]]]
        todo = [variant for variant in look if not finished(run_dir(recipe_dir, variant.name, variant.seed))]
        if not todo:
            break
        print(f"next look: {', '.join(f'{name} {count} seeds' for name, count in wanted.items() if count)}",
              flush=True)
        with study_lock(recipe_dir):
            submit_study(args, todo, recipe_dir, reports_dir, report=False)
        wait_for_runs(recipe_dir, todo)
        failed = [variant for variant in todo if not finished(run_dir(recipe_dir, variant.name, variant.seed))]
        if failed:
            print(f"{len(failed)} runs of the look did not finish: "
                  f"{', '.join(run_label(variant.name, variant.seed) for variant in failed)}; the study waits: "
                  "fix them and submit again (finished runs are kept)", flush=True)
            return report_and_answer(recipe_dir, reports_dir, EXIT_FAILED_VARIANT)
    return report_and_answer(recipe_dir, reports_dir, EXIT_OK)


def wait_for_runs(recipe_dir: Path, runs: list[Variant]) -> None:
    """Block until no job of the manifest holds one of `runs` any more."""
    folders = {run_dir(Path(), variant.name, variant.seed).as_posix() for variant in runs}
    while True:
        study = read_study(recipe_dir)
        jobs = {entry.job_id for entry in study.runs if entry.folder in folders and entry.job_id is not None}
        live = live_jobs(study)
        if live is not None and not jobs & live:
            return
        time.sleep(POLL_S)


def report_and_answer(recipe_dir: Path, reports_dir: Path, code: int) -> int:
    """Build the study's report and print its answer; `code`."""
    run.report_and_answer(recipe_dir, reports_dir)
    return code


# ---------------------------------------------------------------- submitting


def key_value(text: str) -> tuple[str, str]:
    """argparse type of --slurm-extra: `key=value`."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def at_least(low: int) -> Callable[[str], int]:
    """argparse type of a count option: an integer of at least `low`, else a one-line error naming the option."""
    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return count


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = command_parser("submit", __doc__)
    run.add_recipe_arguments(parser, "submit")
    parser.add_argument("--executor", choices=("slurm", "local"), required=True,
                        help="slurm: sbatch; local: submitit's local executor on this machine")
    parser.add_argument("--nodes", type=at_least(1), default=1, help="nodes per run (default 1)")
    parser.add_argument("--gpus-per-node", type=at_least(0), default=0, help="GPUs per node, one task each (default 0: CPU)")
    parser.add_argument("--tasks-per-node", type=at_least(1), default=None,
                        help="CPU ranks per node when there are no GPUs (default 1)")
    parser.add_argument("--time-min", type=at_least(1), default=24 * 60,
                        help="time limit of a job in minutes (default 1440); a run longer than it is requeued")
    parser.add_argument("--max-parallel", type=at_least(1), default=None, metavar="K",
                        help="runs at once (SLURM: the array's throttle; default: all on SLURM, 1 locally)")
    parser.add_argument("--partition", help="SLURM partition")
    parser.add_argument("--account", help="SLURM account")
    parser.add_argument("--qos", help="SLURM quality of service")
    parser.add_argument("--slurm-extra", action="append", default=[], type=key_value, metavar="KEY=VALUE",
                        help="any other sbatch option, e.g. cpus-per-task=16 (repeatable)")
    parser.add_argument("--launch-config", type=Path, default=None,
                        help="Accelerate config of each run (default: README's for the device: "
                             "accelerate_config.yaml, launch/gpu.yaml, multi_gpu.yaml or multi_node.yaml)")
    parser.add_argument("--until-decided", action="store_true",
                        help="a sequential study (sweep.design: sequential): a controller job submits each look's "
                             "runs of the variants still undecided, until every one is decided or at max_seeds")
    parser.add_argument("--wait", action="store_true", help="follow the jobs until the report is built")
    args = parser.parse_args(argv)
    if args.gpus_per_node and args.tasks_per_node not in (None, args.gpus_per_node):
        parser.error("with GPUs every task drives one: --tasks-per-node must equal --gpus-per-node")
    if args.executor == "local" and args.nodes != 1:
        parser.error("the local executor runs on this machine alone: --nodes 1")
    return args


def default_launch_config(gpus_per_node: int, nodes: int) -> Path:
    """The config README's Launching table names for the device."""
    if not gpus_per_node:
        return REPO / "accelerate_config.yaml"
    if nodes > 1:
        return REPO / "launch" / "multi_node.yaml"
    return REPO / "launch" / ("multi_gpu.yaml" if gpus_per_node > 1 else "gpu.yaml")


@contextmanager
def streams_to(log: Path) -> Iterator[None]:
    """While entered, the processes we start read nothing and write `log` instead of our stdout and stderr."""
    sys.stdout.flush()
    sys.stderr.flush()
    ours = [os.dup(fd) for fd in (0, 1, 2)]  # copies no child inherits
    try:
        with open(os.devnull, "rb") as nothing, log.open("ab") as out:
            for fd, target in ((0, nothing), (1, out), (2, out)):
                os.dup2(target.fileno(), fd)
            yield
    finally:
        for fd, saved in enumerate(ours):
            os.dup2(saved, fd)
            os.close(saved)


class LocalExecutor(submitit.LocalExecutor):
    """submitit's local executor, whose job controllers hold none of our standard streams.

    submitit starts a job's controller with our stdin, stdout and stderr, and the controller outlives us:
    `harness submit ... | tee log` returned only when the whole study had ended. Each task already writes
    its own log in the jobs folder, as a SLURM job does; a controller's own lines (only ever a crash) go
    to CONTROLLERS_LOG there.
    """

    def _submit_command(self, command: str) -> submitit.LocalJob:
        with streams_to(self.folder / CONTROLLERS_LOG):
            return super()._submit_command(command)


def executor_for(args: argparse.Namespace, jobs_dir: Path, name: str, nodes: int, tasks: int, gpus: int,
                 time_min: int, **slurm: Any) -> submitit.Executor:
    """A submitit executor for jobs of this shape; `slurm` adds sbatch options (array throttle, dependency)."""
    if args.executor == "local":
        executor = LocalExecutor(jobs_dir, max_num_timeout=MAX_TIMEOUTS)
        executor.update_parameters(timeout_min=time_min, tasks_per_node=tasks, gpus_per_node=gpus,
                                   stderr_to_stdout=True)  # one log a task, progress lines among the prints
        return executor
    executor = submitit.SlurmExecutor(jobs_dir, max_num_timeout=MAX_TIMEOUTS)
    chosen = {"partition": args.partition, "account": args.account, "qos": args.qos, "gpus_per_node": gpus or None}
    executor.update_parameters(job_name=name, nodes=nodes, ntasks_per_node=tasks, time=time_min,
                               stderr_to_stdout=True, additional_parameters=dict(args.slurm_extra),
                               **{key: value for key, value in chosen.items() if value is not None}, **slurm)
    return executor


def submit_runs(args: argparse.Namespace, runs: list[Variant], recipe_dir: Path, name: str) -> list[str]:
    """One job per run; their ids."""
    tasks = args.gpus_per_node or args.tasks_per_node or 1
    launch_config = (args.launch_config or default_launch_config(args.gpus_per_node, args.nodes)).resolve()
    throttle = {} if args.max_parallel is None else {"array_parallelism": args.max_parallel}
    executor = executor_for(args, recipe_dir / JOBS_DIR, name, args.nodes, tasks, args.gpus_per_node,
                            args.time_min, **throttle)

    def job(variant: Variant, after: tuple[str, ...] = ()) -> RunJob:
        return RunJob(args.recipe.resolve(), tuple(args.overrides), variant.name, variant.seed, launch_config,
                      not args.gpus_per_node, recipe_dir, after)

    if args.executor == "slurm":
        with executor.batch():  # one array, throttled to --max-parallel
            jobs = [executor.submit(job(variant)) for variant in runs]
        return [submitted.job_id for submitted in jobs]
    lanes, ids = args.max_parallel or 1, []
    for index, variant in enumerate(runs):  # K lanes: each job waits for the one K places before it
        after = (ids[index - lanes],) if index >= lanes else ()
        ids.append(executor.submit(job(variant, after)).job_id)
    return ids


def submit_report(args: argparse.Namespace, recipe_dir: Path, reports_dir: Path, name: str,
                  after: list[str]) -> str:
    """The job that builds the report once every job in `after` has ended; its id."""
    if args.executor == "slurm":
        executor = executor_for(args, recipe_dir / JOBS_DIR, f"{name}-report", 1, 1, 0, REPORT_TIME_MIN,
                                dependency=f"afterany:{':'.join(after)}")
        return executor.submit(ReportJob(recipe_dir, reports_dir)).job_id
    executor = executor_for(args, recipe_dir / JOBS_DIR, f"{name}-report", 1, 1, 0, args.time_min)
    return executor.submit(ReportJob(recipe_dir, reports_dir, tuple(after))).job_id


def private_folder(recipe_dir: Path) -> None:
    """Create the study's results folder writable by its owner alone: its .submitit/ holds the jobs' pickles,
    which run as code. An existing folder others may write to is left as it is, with a warning."""
    if not recipe_dir.exists():
        recipe_dir.parent.mkdir(parents=True, exist_ok=True)
        recipe_dir.mkdir(mode=0o700)
    elif recipe_dir.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        print(f"warning: others may write to {recipe_dir}, and its .submitit/ pickles run as code in every job: "
              f"chmod go-w {recipe_dir}", file=sys.stderr)


def current_manifest(recipe_dir: Path, args: argparse.Namespace) -> StudyManifest:
    """study.json as the submission finds it; a damaged one is set aside and rebuilt from the run folders (the
    folders are the truth: the jobs it named are looked up again by nobody, so their runs count as not held)."""
    try:
        study = read_study(recipe_dir)
    except DamagedFile as damage:
        print(f"{damage}: set aside as {set_aside(damage.path).name}; rebuilt from the run folders")
        study = None
    return study or StudyManifest(recipe=str(args.recipe.resolve()), executor=args.executor, jobs_dir=JOBS_DIR)


def run_is_finished(folder: Path) -> bool:
    """Whether a run finished; a damaged summary is set aside (never deleted), so that its run is done again."""
    try:
        return read_summary(folder).status == "ok"
    except DamagedFile as damage:
        print(f"{damage}: set aside as {set_aside(damage.path).name}; the run resumes or trains again")
        return False


def submit_study(
    args: argparse.Namespace, runs: list[Variant], recipe_dir: Path, reports_dir: Path, report: bool = True
) -> int:
    """Submit the runs neither finished nor held by a live job, then (with `report`) the report job; write study.json.

    Returns how many runs were submitted.
    """
    name = runs[0].recipe.run.name
    study = current_manifest(recipe_dir, args)
    live = live_jobs(study) if study.runs else set()
    entries = {entry.folder: entry for entry in study.runs}
    todo, held = [], []
    for variant in runs:
        folder = run_dir(Path(), variant.name, variant.seed).as_posix()
        entry = entries.setdefault(folder, StudyRun(variant=variant.name, seed=variant.seed, folder=folder))
        if run_is_finished(recipe_dir / folder):
            entry.state = "finished"
        elif entry.job_id is not None and entry.state in ("pending", "running", "requeued") and (
                live is None or entry.job_id in live):  # with no answer from the scheduler, assume it lives
            held.append(entry.job_id)
            print(f"{run_label(variant.name, variant.seed)}: held by live job {entry.job_id}, not submitted again")
        else:
            todo.append(variant)
    report_id = study.report_job_id
    if todo:
        ids = submit_runs(args, todo, recipe_dir, name)
        for variant, job_id in zip(todo, ids, strict=True):
            entry = entries[run_dir(Path(), variant.name, variant.seed).as_posix()]
            entry.job_id, entry.state = job_id, "pending"
            print(f"{run_label(variant.name, variant.seed)}: job {job_id}")
        if report:
            report_id = submit_report(args, recipe_dir, reports_dir, name, held + ids)
            print(f"report: job {report_id} builds {reports_dir / recipe_dir.name}/ once they have ended")
    else:
        print(f"nothing to submit: {len(runs) - len(held)} of {len(runs)} runs finished, {len(held)} held")
    write_study(recipe_dir, study.model_copy(update={
        "recipe": str(args.recipe.resolve()), "overrides": args.overrides, "executor": args.executor,
        "jobs_dir": JOBS_DIR, "report_job_id": report_id, "runs": list(entries.values()),
    }))
    return len(todo)


def submit_controller(args: argparse.Namespace, recipe_dir: Path, reports_dir: Path, name: str) -> int:
    """Start the controller job of a sequential study unless a live one holds it; 1 if it started one, else 0."""
    study = current_manifest(recipe_dir, args)
    live = live_jobs(study) if study.controller_job_id else set()
    if study.controller_job_id is not None and (live is None or study.controller_job_id in live):
        print(f"held by live controller job {study.controller_job_id}, not submitted again")
        return 0
    executor = executor_for(args, recipe_dir / JOBS_DIR, f"{name}-controller", 1, 1, 0, args.time_min)
    job_id = executor.submit(ControllerJob(args, recipe_dir, reports_dir)).job_id
    print(f"controller: job {job_id} submits each look's runs until every variant is decided, then the report")
    write_study(recipe_dir, study.model_copy(update={
        "recipe": str(args.recipe.resolve()), "overrides": args.overrides, "executor": args.executor,
        "jobs_dir": JOBS_DIR, "controller_job_id": job_id,
    }))
    return 1


def follow(recipe_dir: Path, report: Path) -> int:
    """A bar of finished runs until the study's last job (its controller, else its report job) has ended; 0 when
    every submitted run finished and the report exists."""
    shown = 0
    with bar(desc="runs finished", unit="run") as progress:
        while True:
            study = read_study(recipe_dir)  # a controller adds each look's runs as it goes
            progress.total, done = len(study.runs), len(study.runs) - len(missing_runs(recipe_dir, study))
            if done != shown:
                progress.update(done - shown)
                if not on_terminal():  # a log file gets a line per change, not a redrawn bar
                    print(f"{done} of {len(study.runs)} runs finished", flush=True)
                shown = done
            live = live_jobs(study)
            if live is not None and (study.controller_job_id or study.report_job_id) not in live:
                break
            time.sleep(POLL_S)
    print_status(recipe_dir)
    return 0 if report.exists() and not missing_runs(recipe_dir, study) else EXIT_FAILED_VARIANT


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        every_run, sweep = load_sweep(args.recipe, args.overrides)
        runs = run.select(every_run, args.only)
        run.check_variants(runs)
    except RecipeError as error:
        return run.bad_recipe(error, args.recipe)
    run_cfg = runs[0].recipe.run
    recipe_dir = (run_cfg.output_dir / run_cfg.name).resolve()  # the manifest's jobs may start anywhere
    reports_dir = run_cfg.reports_dir.resolve()
    started = time.time()
    if (sweep.design == "sequential") != args.until_decided:
        print(f"error: {args.recipe}: sweep.design is {sweep.design}: "
              + ("submit it with --until-decided" if sweep.design == "sequential" else
                 "--until-decided needs sweep.design: sequential (with its looks)"), file=sys.stderr)
        return EXIT_BAD_INPUT
    private_folder(recipe_dir)
    run.say(write_sweep(recipe_dir, sweep))
    with study_lock(recipe_dir):  # a second submission waits here, then finds these runs held
        if args.until_decided:
            submitted = submit_controller(args, recipe_dir, reports_dir, run_cfg.name)
        else:
            submitted = submit_study(args, runs, recipe_dir, reports_dir)
    print(f"results: {recipe_dir}  (harness status {recipe_dir}; logs in {recipe_dir / JOBS_DIR})")
    if not args.wait or not submitted:
        return 0
    code = follow(recipe_dir, reports_dir / recipe_dir.name / "report.md")
    print(f"submit to report: {time.time() - started:.1f} s")
    return code


if __name__ == "__main__":
    # Jobs must pickle RunJob as harness.submit.RunJob, importable in the job, not as this __main__'s copy.
    sys.exit(guarded(importlib.import_module("harness.submit").main))
