"""harness submit / status: a study as scheduler jobs through submitit's local executor and a real SLURM,
preempted, requeued and resumed exactly; its manifest, status and report; one writer per run folder;
each task a rank as accelerate launch and torchrun make one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import yaml

from benchmarks.study_jobs import ENV, PREEMPTED, job_of, logged, run_study, tiny_study, wait_until
from harness import cli, load_study, submit
from harness.results import (
    StudyManifest,
    expected_runs,
    missing_runs,
    read_metrics,
    read_study,
    update_study_run,
    write_json,
    write_study,
    write_sweep,
)
from harness.status import study_status, totals
from tests.conftest import CPU_ENV, REPO, RUN, check, torchrun


def manifest(recipe_dir: Path) -> dict:
    """study.json as the harness reads it, as a mapping."""
    return read_study(recipe_dir).to_json()


STUDY_TIMEOUT_S = 1800  # a loaded 2-core machine; unloaded, a study takes a few minutes
NO_PID = 4_000_000_000  # above any pid_max: the local "jobs" of a made-up study are long gone


# ---------------------------------------------------------------- each task's environment


@pytest.mark.parametrize(("config", "expected"), [
    ("accelerate_config.yaml", {"ACCELERATE_MIXED_PRECISION": "no"}),
    ("launch/gpu.yaml", {"ACCELERATE_MIXED_PRECISION": "bf16"}),
    ("launch/multi_node.yaml", {"ACCELERATE_MIXED_PRECISION": "bf16"}),
    ("launch/deepspeed_zero2_bf16.yaml", {"ACCELERATE_MIXED_PRECISION": "bf16", "ACCELERATE_USE_DEEPSPEED": "true",
                                          "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}),
])
def test_a_launch_config_gives_the_environment_accelerate_launch_gives(config: str, expected: dict) -> None:
    env = submit.accelerate_environment(REPO / config)
    assert expected.items() <= env.items() and all(key.startswith("ACCELERATE_") for key in env)


def test_a_task_is_the_rank_the_scheduler_says() -> None:
    task = SimpleNamespace(num_tasks=4, num_nodes=2, global_rank=3, local_rank=1, hostnames=["node7", "node8"],
                           raw_job_id="123")
    env = submit.rank_environment(task, REPO / "accelerate_config.yaml", on_cpu=True)
    assert {key: env[key] for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")} == {
        "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "node7"}
    assert env["MASTER_PORT"] == str(submit.rendezvous_port("123")) and env["ACCELERATE_USE_CPU"] == "1"
    alone = submit.rank_environment(SimpleNamespace(**{**vars(task), "num_tasks": 1, "num_nodes": 1}),
                                    REPO / "launch" / "gpu.yaml", on_cpu=False)
    assert "RANK" not in alone and alone["ACCELERATE_USE_CPU"] == "False"  # one process, as accelerate launch runs it
    assert submit.default_launch_config(0, 1).name == "accelerate_config.yaml"
    assert submit.default_launch_config(8, 2).name == "multi_node.yaml"


# ---------------------------------------------------------------- manifest, status, report (no jobs)


def fake_study(root: Path) -> Path:
    """results/<recipe>/ of a 2 x 2 study as jobs left it: one run finished, one failed, one running, one queued."""
    recipe_dir = root / "results" / "fake"
    runs = [{"variant": variant, "seed": seed, "folder": f"{variant}/seed-{seed}", "job_id": str(NO_PID + index),
             "state": "pending", "requeue_count": 0}
            for index, (variant, seed) in enumerate([("ce", 0), ("ce", 1), ("region", 0), ("region", 1)])]
    write_study(recipe_dir, StudyManifest.model_validate({
        "recipe": "x.yaml", "overrides": [], "executor": "local", "jobs_dir": ".submitit", "report_job_id": None,
        "runs": runs}))
    write_sweep(recipe_dir, SimpleNamespace(baseline="ce", seeds=[0, 1], target_delta=0.005,
                                            equivalence_margin=0.005))
    write_json(recipe_dir / "ce" / "seed-0" / "summary.json", {"status": "ok", "val_miou": 0.5, "requeue_count": 1})
    write_json(recipe_dir / "ce" / "seed-1" / "summary.json", {"status": "failed", "error": "NonFinite: loss\nmore"})
    (recipe_dir / "region" / "seed-0").mkdir(parents=True)
    (recipe_dir / "region" / "seed-0" / "recipe.yaml").write_text("optim: {iterations: 60}\n")
    (recipe_dir / "region" / "seed-0" / "metrics.jsonl").write_text(
        "".join(json.dumps({"kind": "train", "iter": it, "step_time": 0.5}) + "\n" for it in (1, 2, 3)))
    return recipe_dir


def test_only_the_job_that_owns_a_run_changes_its_entry(tmp_path: Path) -> None:
    recipe_dir = fake_study(tmp_path)
    assert not update_study_run(recipe_dir, "ce/seed-0", "777", "running")  # a stray job
    assert update_study_run(recipe_dir, "region/seed-0", str(NO_PID + 2), "requeued", requeued=True)
    entry = next(run for run in manifest(recipe_dir)["runs"] if run["folder"] == "region/seed-0")
    assert (entry["state"], entry["requeue_count"]) == ("requeued", 1)


def test_status_and_a_partial_report_say_what_the_folder_holds(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    recipe_dir = fake_study(tmp_path)
    update_study_run(recipe_dir, "region/seed-0", str(NO_PID + 2), "running")
    statuses, _, source = study_status(recipe_dir)  # the local scheduler answers: every job has ended
    assert source == "local jobs"
    assert [(status.label, status.state) for status in statuses] == [
        ("ce (seed 0)", "finished"), ("ce (seed 1)", "failed"), ("region (seed 0)", "failed"),
        ("region (seed 1)", "failed")]
    assert (statuses[0].detail, statuses[0].requeues) == ("val mIoU 50.00", 1) and "NonFinite: loss" in statuses[1].detail
    assert statuses[2].job == str(NO_PID + 2) and "ended before the run finished" in statuses[2].detail
    monkeypatch.setenv("PATH", str(tmp_path))  # a SLURM study whose squeue does not answer: the manifest decides
    write_study(recipe_dir, StudyManifest.model_validate({**manifest(recipe_dir), "executor": "slurm"}))
    statuses, _, source = study_status(recipe_dir)
    assert source == "slurm jobs, from the folder alone: the scheduler does not answer"
    assert [status.state for status in statuses] == ["finished", "failed", "running", "pending"]
    (recipe_dir / "study.json").unlink()  # launched otherwise: the folder alone decides
    statuses, _, source = study_status(recipe_dir)
    assert source == "from the folder (no study.json)"
    assert statuses[2].state == "running" and statuses[2].detail.startswith("iteration 3/60,")
    assert "ETA 0:00:28" in statuses[2].detail  # 57 iterations at 0.5 s
    assert totals(statuses) == "4 runs: 1 finished, 1 running, 1 pending, 1 failed; 1 requeue"
    assert expected_runs(recipe_dir, None) == [("ce", 0), ("ce", 1), ("region", 0), ("region", 1)]
    assert missing_runs(recipe_dir, None) == ["ce (seed 1)", "region (seed 0)", "region (seed 1)"]
    assert load_study(recipe_dir).progress() == "1 of 4 runs finished"


def test_a_bad_recipe_or_option_stops_before_any_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tiny_study(tmp_path)
    assert cli.main(["submit", str(recipe), "--executor", "local", "--set", "model.colour=red"]) == 2
    assert "model.colour" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["submit", str(recipe), "--executor", "local", "--gpus-per-node", "2", "--tasks-per-node", "3"])
    assert not (tmp_path / "results" / "study" / ".submitit").exists()


# ---------------------------------------------------------------- real jobs


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the preempted run (region, seed 0) trained in one go by a plain harness/run.py."""
    root = tmp_path_factory.mktemp("uninterrupted")
    recipe = tiny_study(root)
    done = subprocess.run([sys.executable, RUN, str(recipe), "--only", "region", "--seed", "0", "--no-report"],
                          cwd=root, env=ENV, capture_output=True, text=True)
    check(done)
    return root / "results" / "study" / PREEMPTED


def same_run(folder: Path, reference: Path) -> None:
    """Two runs ended alike: mIoU, bank digest and every logged loss."""
    summaries = [json.loads((path / "summary.json").read_text()) for path in (folder, reference)]
    assert summaries[0]["miou"] == summaries[1]["miou"]
    assert summaries[0]["bank_digest"] == summaries[1]["bank_digest"]
    losses = [[(r.iter, r.numbers()["loss"]) for r in read_metrics(path / "metrics.jsonl") if r.kind == "train"]
              for path in (folder, reference)]
    assert losses[0] == losses[1] and losses[0]


def check_preempted_study(root: Path, uninterrupted: Path, output: str) -> None:
    """All four runs finished, the preempted one requeued once and equal to the uninterrupted one;
    status, manifest and report agree with the folder."""
    recipe_dir = root / "results" / "study"
    study = manifest(recipe_dir)
    assert [run["state"] for run in study["runs"]] == ["finished"] * 4, output[-3000:]
    assert {run["folder"]: run["requeue_count"] for run in study["runs"]}[PREEMPTED] == 1
    assert sum(run["requeue_count"] for run in study["runs"]) == 1
    assert json.loads((recipe_dir / PREEMPTED / "summary.json").read_text())["requeue_count"] == 1
    same_run(recipe_dir / PREEMPTED, uninterrupted)
    statuses, _, _ = study_status(recipe_dir)
    assert [status.state for status in statuses] == ["finished"] * 4
    assert totals(statuses) == "4 runs: 4 finished, 0 running, 0 pending, 0 failed; 1 requeue"
    # --wait ends with the status table: the preempted run's row ends with its one requeue
    rows = [line.split() for line in output.splitlines() if line.startswith("region (seed 0) ")]
    assert len(rows) == 1 and rows[0][3] == "finished" and rows[0][-1] == "1", output[-3000:]
    report = (root / "reports" / "study" / "report.md").read_text()
    assert "4 runs of 2 variants (4 ok" in report and "Partial study" not in report


@pytest.mark.slow
@pytest.mark.distributed
def test_a_local_study_survives_preemption_and_reports(tmp_path: Path, uninterrupted: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    figures = run_study(tmp_path, "local", STUDY_TIMEOUT_S)
    check_preempted_study(tmp_path, uninterrupted, figures["output"])
    # A report of the study with one run lost says what it lacks.
    partial = tmp_path / "partial"
    shutil.copytree(tmp_path / "results" / "study", partial / "study")
    (partial / "study" / "region" / "seed-1" / "summary.json").unlink()
    capsys.readouterr()
    cli.main(["report", str(partial / "study"), "--out", str(partial / "reports")])
    assert "3 of 4 runs finished; missing: region (seed 1)" in capsys.readouterr().out
    assert "**Partial study: 3 of 4 runs finished" in (partial / "reports" / "study" / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.distributed
def test_two_submissions_at_once_never_write_a_run_folder_twice(tmp_path: Path) -> None:
    recipe = tiny_study(tmp_path)
    command = [sys.executable, "-m", "harness.submit", str(recipe), "--executor", "local", "--only", "region",
               "--max-parallel", "2"]
    # Files, not pipes: the local jobs' controllers inherit the submitter's stdout and outlive it.
    logs = [tmp_path / f"submit-{index}.log" for index in range(2)]
    with logs[0].open("w") as out_first, logs[1].open("w") as out_second:
        first, second = (subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=out, stderr=subprocess.STDOUT)
                         for out in (out_first, out_second))
        assert first.wait(timeout=600) == second.wait(timeout=600) == 0
    outputs = [log.read_text() for log in logs]
    submitted = [output for output in outputs if "report: job" in output]
    refused = [output for output in outputs if "report: job" not in output]
    assert len(submitted) == len(refused) == 1, outputs
    assert refused[0].count("held by live job") == 2 and "nothing to submit" in refused[0]
    recipe_dir = tmp_path / "results" / "study"
    study = manifest(recipe_dir)
    folder = recipe_dir / "region" / "seed-0"
    wait_until(lambda: logged(folder) >= 1, STUDY_TIMEOUT_S, "training of region (seed 0)")
    # A plain launch on the folder the job holds stops at once, naming the holder, and touches nothing.
    # The job's task is paused meanwhile, so it still holds the folder however fast the machine is.
    task = psutil.Process(int(job_of(recipe_dir, "region/seed-0"))).children()[0]
    assert task.environ().get("OMP_WAIT_POLICY") == "PASSIVE"  # CPU jobs share the cores: threads sleep, not spin
    holder, recipe_written = (folder / ".lock.json").read_text(), (folder / "recipe.yaml").stat().st_mtime_ns
    task.suspend()
    try:
        intruder = subprocess.run([sys.executable, RUN, str(recipe), "--only", "region", "--seed", "0", "--resume",
                                   "--no-report"], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    finally:
        task.resume()
    assert intruder.returncode == 4, intruder.stderr
    errors = [line for line in intruder.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "being written by pid" in errors[0]
    assert (folder / ".lock.json").read_text() == holder
    assert (folder / "recipe.yaml").stat().st_mtime_ns == recipe_written
    report = Path(tmp_path / "reports" / "study" / "report.md")
    wait_until(report.exists, STUDY_TIMEOUT_S, "report")
    assert manifest(recipe_dir)["runs"] == [{**run, "state": "finished"} for run in study["runs"]]
    for seed in (0, 1):  # one writer: every iteration logged once
        train = [r.iter for r in read_metrics(recipe_dir / "region" / f"seed-{seed}" / "metrics.jsonl")
                 if r.kind == "train"]
        assert train == list(range(1, 61))


@pytest.mark.slow
@pytest.mark.distributed
def test_a_two_task_cpu_job_trains_as_torchrun_does(tmp_path: Path) -> None:
    tree = yaml.safe_load(tiny_study(tmp_path).read_text())
    tree.pop("sweep")
    tree["optim"]["iterations"] = 4
    recipe = tmp_path / "one.yaml"
    recipe.write_text(yaml.safe_dump(tree, sort_keys=False))
    done = subprocess.run([sys.executable, "-m", "harness.submit", str(recipe), "--executor", "local",
                           "--tasks-per-node", "2", "--wait"], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=STUDY_TIMEOUT_S)
    check(done)
    check(subprocess.run(torchrun(RUN, str(recipe), "--set", f"run.output_dir={tmp_path / 'torchrun'}",
                                  "--no-report"), cwd=tmp_path, env=CPU_ENV, capture_output=True, text=True))
    job, reference = (folder / "study" / "default" for folder in (tmp_path / "results", tmp_path / "torchrun"))
    summaries = [json.loads((folder / "summary.json").read_text()) for folder in (job, reference)]
    assert [(s["world_size"], s["distributed_type"]) for s in summaries] == [(2, "MULTI_CPU")] * 2
    same_run(job, reference)


# ---------------------------------------------------------------- a real SLURM


@pytest.fixture(scope="module")
def slurm() -> None:
    """A SLURM that answers: this machine's, or a single-node one .ci/slurm-up.sh starts where it can (root)."""
    if shutil.which("sinfo") and subprocess.run(["sinfo"], capture_output=True).returncode == 0:
        return
    if os.geteuid() != 0:
        pytest.skip("no SLURM answers here, and starting one (.ci/slurm-up.sh) needs root")
    started = subprocess.run([str(REPO / ".ci" / "slurm-up.sh")], capture_output=True, text=True)
    if started.returncode != 0:
        pytest.skip(f"no SLURM answers here and .ci/slurm-up.sh could not start one: {started.stderr.strip()}")


@pytest.mark.slow
@pytest.mark.cluster
def test_a_slurm_study_survives_preemption_and_reports(slurm: None, tmp_path: Path, uninterrupted: Path) -> None:
    started = time.time()
    figures = run_study(tmp_path, "slurm", STUDY_TIMEOUT_S)
    check_preempted_study(tmp_path, uninterrupted, figures["output"])
    study = manifest(tmp_path / "results" / "study")
    assert study["executor"] == "slurm" and "_" in study["runs"][0]["job_id"]  # one array, throttled
    report_log = tmp_path / "results" / "study" / ".submitit" / f"{study['report_job_id']}_0_log.out"
    assert "report.md" in report_log.read_text()  # built by the dependent job, not by the submitter
    assert time.time() - started < STUDY_TIMEOUT_S


def test_status_prints_aligned_columns_with_the_studys_own_jobs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe_dir = fake_study(tmp_path)
    write_study(recipe_dir, StudyManifest.model_validate({**manifest(recipe_dir), "report_job_id": str(NO_PID + 9)}))
    assert cli.main(["status", str(recipe_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[1], lines[2:7]
    assert header.split() == ["run", "state", "detail", "job", "requeues"]
    for column in ("state", "detail", "job"):  # every row's cell starts where its header does
        start = header.index(column)
        assert all(row[start - 1] == " " and row[start] != " " for row in rows if row[start:].strip()), column
    assert rows[-1].split()[:2] == ["report", "ended"] and str(NO_PID + 9) in rows[-1]


def test_a_submission_keeps_its_results_folder_to_its_owner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fresh = tmp_path / "results" / "study"
    submit.private_folder(fresh)
    assert fresh.stat().st_mode & 0o777 == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    submit.private_folder(shared)
    assert "others may write to" in capsys.readouterr().err and shared.stat().st_mode & 0o777 == 0o777


def test_every_count_option_is_checked_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tiny_study(tmp_path)
    for option, value in (("--max-parallel", "0"), ("--max-parallel", "-1"), ("--nodes", "0"), ("--time-min", "x")):
        with pytest.raises(SystemExit) as stopped:
            cli.main(["submit", str(recipe), "--executor", "local", option, value])
        assert stopped.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"harness submit: error: argument {option}:"), err
    assert not (tmp_path / "results").exists()


def test_status_of_a_sequential_study_names_each_variants_decision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.report_fixtures import SEQUENTIAL_MIOU, SEQUENTIAL_SWEEP, build_seeded_results

    results_dir = build_seeded_results(tmp_path, SEQUENTIAL_MIOU, sweep=SEQUENTIAL_SWEEP)
    assert cli.main(["status", str(results_dir)]) == 0
    decisions = capsys.readouterr().out.split("decisions (sequential design):\n")[1].splitlines()
    assert [line.split()[0] for line in decisions] == ["early", "undecided", "waiting"]
    assert "better" in decisions[0] and "continue (next look at 10 seeds" in decisions[2]
    only_baseline = tmp_path / "only_baseline"
    build_seeded_results(only_baseline, {"ce": SEQUENTIAL_MIOU["ce"]}, sweep=SEQUENTIAL_SWEEP)
    assert cli.main(["status", str(next(only_baseline.glob("results/*")))]) == 0  # no variant folder yet: no line
