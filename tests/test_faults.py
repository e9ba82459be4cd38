"""Nothing lost, nothing mixed: resumes that check the recipe, stops on signals, and failure paths that keep work.

Each case runs the tiny recipe of tests/test_run.py in this process (or, for the rank agreement, on
two gloo ranks) and checks what a user on a shared cluster would look at: the exit code, the one
line printed, and what the run folder holds afterwards.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from harness import engine, run
from harness.command import EXIT_BAD_INPUT, EXIT_BUSY, EXIT_FAILED_VARIANT, EXIT_INTERRUPTED
from harness.engine import checkpoint, loop
from harness.engine.step import Trainer
from harness.results import publish
from harness.runfolder import FolderBusy, FolderLock
from tests.conftest import CPU_ENV, RUN, check, torchrun
from tests.test_run import tiny_recipe, write

ITERATIONS = 8


def recipe_file(tmp_path: Path, **sections: dict) -> Path:
    """The tiny RegionContrast recipe, ITERATIONS long, logging every iteration."""
    tree = tiny_recipe(tmp_path, optim={"iterations": ITERATIONS}, loss={"contrast": {"kind": "region"}},
                       run={"log_interval": 1, "deterministic": True})
    for name, values in sections.items():
        tree[name] = {**tree.get(name, {}), **values}
    return write(tmp_path, tree)


def folder_of(tmp_path: Path) -> Path:
    return tmp_path / "results" / "tiny" / "default"


def summary(tmp_path: Path) -> dict:
    return json.loads((folder_of(tmp_path) / "summary.json").read_text())


def losses(tmp_path: Path) -> list[float]:
    lines = (folder_of(tmp_path) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if json.loads(line)["kind"] == "train"]


def signal_at(monkeypatch: pytest.MonkeyPatch, iteration: int, signum: int = signal.SIGTERM, times: int = 1) -> None:
    """Make this process receive `signum` (`times` times) during the training step of `iteration`."""
    step = Trainer.step

    def step_and_signal(self: Trainer, batch: dict, it: int) -> dict:
        if it == iteration:
            for _ in range(times):
                os.kill(os.getpid(), signum)
        return step(self, batch, it)

    monkeypatch.setattr(Trainer, "step", step_and_signal)


def signal_workers_at(monkeypatch: pytest.MonkeyPatch, iteration: int, signum: int) -> None:
    """Send this process's DataLoader workers `signum` during the training step of `iteration`."""
    step = Trainer.step

    def step_and_signal(self: Trainer, batch: dict, it: int) -> dict:
        if it == iteration:
            workers = psutil.Process().children(recursive=True)
            assert workers, "the recipe should load with worker processes"
            for worker in workers:
                worker.send_signal(signum)
            time.sleep(0.5)  # a worker that dies of it is gone before the loop asks for the next batch
        return step(self, batch, it)

    monkeypatch.setattr(Trainer, "step", step_and_signal)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run trained without interruption, for comparison."""
    tmp_path = tmp_path_factory.mktemp("whole")
    assert run.main([str(recipe_file(tmp_path)), "--no-report"]) == 0
    return tmp_path


# ---------------------------------------------------------------- signals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT])
def test_a_stop_signal_saves_and_resume_continues_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted: Path, signum: int
) -> None:
    path = recipe_file(tmp_path)  # no checkpoint interval: the signal alone makes the checkpoint
    handler = signal.getsignal(signum)
    signal_at(monkeypatch, 3, signum)
    assert run.main([str(path), "--no-report"]) == EXIT_INTERRUPTED
    stopped = summary(tmp_path)
    assert stopped["status"] == "interrupted" and stopped["iteration"] == 4
    assert stopped["signal"] == signal.Signals(signum).name
    manifest = json.loads((folder_of(tmp_path) / "checkpoint" / "manifest.json").read_text())
    assert manifest["reason"] == "signal" and manifest["iteration"] == 4
    assert signal.getsignal(signum) == handler  # the process's own handler is back
    monkeypatch.undo()
    assert run.main([str(path), "--no-report", "--resume"]) == 0
    resumed, whole = summary(tmp_path), summary(uninterrupted)
    assert resumed["status"] == "ok" and resumed["requeue_count"] == 1 and resumed["resume_exact"] is True
    for key in ("miou", "per_class_iou", "bank_digest", "model_sha256"):
        assert resumed[key] == whole[key], key
    assert losses(tmp_path) == losses(uninterrupted)
    assert not (folder_of(tmp_path) / "checkpoint").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2])
def test_loader_workers_leave_a_stop_signal_to_the_main_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted: Path, signum: int
) -> None:
    # A scheduler signals every process of a job step; a worker that died of it would fail the run.
    path = recipe_file(tmp_path, data={"num_workers": 1})
    signal_workers_at(monkeypatch, 3, signum)
    assert run.main([str(path), "--no-report"]) == 0
    assert losses(tmp_path) == losses(uninterrupted)


def test_a_second_sigint_stops_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    signal_at(monkeypatch, 2, signal.SIGINT, times=2)
    with pytest.raises(KeyboardInterrupt):
        run.main([str(recipe_file(tmp_path)), "--no-report"])
    assert not (folder_of(tmp_path) / "checkpoint").exists()


def test_checkpoint_minutes_save_by_the_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = []
    save = checkpoint.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", lambda *args: saved.append(args[-2:]) or save(*args))
    path = recipe_file(tmp_path, run={"checkpoint_minutes": 1e-6})  # due at every boundary
    assert run.main([str(path), "--no-report"]) == 0
    assert saved == [(iteration, "interval") for iteration in range(1, ITERATIONS)] + [(ITERATIONS, "final")]


@pytest.mark.slow
@pytest.mark.distributed
def test_ranks_agree_to_stop_when_one_rank_is_signalled(tmp_path: Path) -> None:
    """SIGUSR2 reaches rank 1 only; both ranks save the same checkpoint and stop; --resume ends as a whole run."""
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    for folder in (whole, stopped):
        folder.mkdir()
        recipe_file(folder, optim={"iterations": 12})
    check(subprocess.run(torchrun(RUN, "recipe.yaml", "--no-report"), cwd=whole, env=CPU_ENV,
                         capture_output=True, text=True, timeout=600))
    env = {**CPU_ENV, "HARNESS_TEST_SIGNAL_RANK": "1", "HARNESS_TEST_SIGNAL_AT": "5"}
    done = subprocess.run(torchrun(str(Path(__file__).with_name("signal_worker.py")), "recipe.yaml", "--no-report"),
                          cwd=stopped, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0, done.stdout[-2000:]
    interrupted = summary(stopped)
    assert interrupted["status"] == "interrupted" and interrupted["iteration"] in (6, 7)
    check(subprocess.run(torchrun(RUN, "recipe.yaml", "--no-report", "--resume"), cwd=stopped, env=CPU_ENV,
                         capture_output=True, text=True, timeout=600))
    for key in ("miou", "bank_digest", "model_sha256"):
        assert summary(stopped)[key] == summary(whole)[key], key
    assert summary(stopped)["requeue_count"] == 1 and losses(stopped) == losses(whole)


# ---------------------------------------------------------------- a resume checks the recipe


@pytest.fixture
def interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run stopped by SIGTERM at iteration 4, with its checkpoint."""
    signal_at(monkeypatch, 3)
    assert run.main([str(recipe_file(tmp_path)), "--no-report"]) == EXIT_INTERRUPTED
    monkeypatch.undo()
    return tmp_path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a run folder and its bytes (the lock's own files aside)."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and not path.name.startswith(".lock")}


@pytest.mark.parametrize(("override", "key"), [
    ("optim.lr=0.05", "optim.lr"), ("loss.contrast.bank_size=3", "loss.contrast.bank_size"),
])
def test_resume_with_a_changed_recipe_stops_naming_the_keys(
    interrupted: Path, capsys: pytest.CaptureFixture[str], override: str, key: str
) -> None:
    before = snapshot(folder_of(interrupted))
    path = interrupted / "recipe.yaml"
    assert run.main([str(path), "--no-report", "--resume", "--set", override]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0] and "differs" in err[0]
    assert snapshot(folder_of(interrupted)) == before  # recipe.yaml, checkpoint and log untouched


def test_safe_changes_are_allowed_explicitly_and_unsafe_ones_never(
    interrupted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = interrupted / "recipe.yaml"
    assert run.main([str(path), "--no-report", "--resume", "--set", "run.log_interval=2"]) == EXIT_BAD_INPUT
    assert run.main([str(path), "--no-report", "--resume", "--set", "optim.lr=0.05",
                     "--allow-change", "optim.lr"]) == EXIT_BAD_INPUT
    assert "--allow-change: optim.lr cannot change mid-run" in capsys.readouterr().err
    assert run.main([str(path), "--no-report", "--resume", "--set", "run.log_interval=2",
                     "--allow-change", "run.log_interval"]) == 0
    assert yaml.safe_load((folder_of(interrupted) / "recipe.yaml").read_text())["run"]["log_interval"] == 2


def test_a_finished_run_is_skipped_only_for_its_own_recipe(
    uninterrupted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = uninterrupted / "recipe.yaml"
    before = snapshot(folder_of(uninterrupted))
    assert run.main([str(path), "--no-report", "--resume"]) == 0
    assert "already finished: skipped" in capsys.readouterr().out
    assert run.main([str(path), "--no-report", "--resume", "--set", "optim.lr=0.05"]) == EXIT_BAD_INPUT
    assert "optim.lr" in capsys.readouterr().err
    assert snapshot(folder_of(uninterrupted)) == before


def test_resume_without_a_checkpoint_says_so_and_keeps_the_old_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = folder_of(tmp_path)
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text('{"kind": "train", "iter": 1, "loss": 9.0}\n')
    assert run.main([str(recipe_file(tmp_path)), "--no-report", "--resume"]) == 0
    assert "no checkpoint to resume from" in capsys.readouterr().out
    (kept,) = folder.glob("metrics-*.jsonl")
    assert kept.read_text() == '{"kind": "train", "iter": 1, "loss": 9.0}\n'
    assert len(losses(tmp_path)) == ITERATIONS


# ---------------------------------------------------------------- exact resume or a clear refusal


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_damaged_checkpoint_is_refused_naming_the_file(interrupted: Path, damage: str) -> None:
    states = folder_of(interrupted) / "checkpoint" / "random_states_0.pkl"
    if damage == "missing":
        states.unlink()
    else:
        states.write_bytes(states.read_bytes()[:-10])
    path = str(interrupted / "recipe.yaml")
    assert run.main([path, "--no-report", "--resume"]) == EXIT_FAILED_VARIANT
    failed = summary(interrupted)
    assert failed["status"] == "failed" and str(states) in failed["error"] and "--resume-inexact" in failed["error"]
    assert run.main([path, "--no-report", "--resume", "--resume-inexact"]) == 0
    assert summary(interrupted)["resume_exact"] is False


def test_a_folder_another_launch_holds_is_not_touched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = folder_of(tmp_path)
    lock = FolderLock(folder)
    lock.acquire()  # as another launch on this folder would
    try:
        assert run.main([str(recipe_file(tmp_path)), "--no-report"]) == EXIT_BUSY
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert f"pid {os.getpid()}" in err and "being written by" in err
    assert snapshot(folder) == {}
    assert not (tmp_path / "results" / "tiny" / "sweep.json").exists()  # a refused launch writes nothing at all


def test_a_released_folder_keeps_no_lock_file_and_one_holder_at_a_time(tmp_path: Path) -> None:
    first, second = FolderLock(tmp_path), FolderLock(tmp_path)
    first.acquire()
    with pytest.raises(FolderBusy):
        second.acquire()
    stale = os.open(tmp_path / ".lock", os.O_RDWR)  # a launch that opened the file just before its holder left
    first.release()
    assert sorted(path.name for path in tmp_path.iterdir()) == []
    fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # it locks the removed file...
    second.acquire()  # ...which does not keep the folder from the next launch, which locks the file that stands
    try:
        with pytest.raises(FolderBusy):
            FolderLock(tmp_path).acquire()
    finally:
        second.release()
        os.close(stale)


# A launch that forks a long-lived child (as a DataLoader worker is) and is then killed.
KILLED_HOLDER = """
import multiprocessing, os, signal, sys, time
from harness.runfolder import FolderLock

FolderLock(sys.argv[1]).acquire()
child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
child.start()
print(child.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_launchs_forked_children_do_not_hold_its_folder(tmp_path: Path) -> None:
    """A SIGKILLed launch's DataLoader workers live on for seconds; its folder is free at once all the same."""
    folder, out = tmp_path / "run", tmp_path / "holder.out"
    with out.open("w") as stdout:  # a file, not a pipe: the orphan keeps its copy of the launch's stdout open
        holder = subprocess.run([sys.executable, "-c", KILLED_HOLDER, str(folder)], env=CPU_ENV, stdout=stdout,
                                stderr=subprocess.STDOUT, timeout=120)
    assert holder.returncode == -signal.SIGKILL, out.read_text()
    child = psutil.Process(int(out.read_text().split()[0]))
    try:
        assert child.is_running()  # the orphan still lives...
        lock = FolderLock(folder)
        lock.acquire()  # ...and the folder is the next launch's
        lock.release()
    finally:
        child.kill()


# ---------------------------------------------------------------- failure paths keep what exists


def test_non_finite_state_is_never_checkpointed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    step = Trainer.step

    def poison(self: Trainer, batch: dict, it: int) -> dict:
        losses = step(self, batch, it)
        if it == 2:  # a batch norm's running variance turns infinite while every loss stays finite
            bn = next(module for module in self.model.modules() if isinstance(module, torch.nn.BatchNorm2d))
            bn.running_var[0] = float("inf")
        return losses

    monkeypatch.setattr(Trainer, "step", poison)
    path = recipe_file(tmp_path, run={"checkpoint_interval": 2})
    assert run.main([str(path), "--no-report"]) == EXIT_FAILED_VARIANT
    failed = summary(tmp_path)
    assert "NonFinite" in failed["error"] and "running_var" in failed["error"]
    manifest = json.loads((folder_of(tmp_path) / "checkpoint" / "manifest.json").read_text())
    assert manifest["iteration"] == 2  # the last finite state stays; none holding the inf was written


def test_a_full_disk_keeps_the_previous_checkpoint_and_the_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from accelerate import Accelerator

    real_save = Accelerator.save_state
    calls = []

    def save_until_full(self: Accelerator, output_dir: str, **kwargs: object) -> None:
        calls.append(output_dir)
        if len(calls) == 2:
            Path(output_dir).mkdir(parents=True)
            (Path(output_dir) / "half_written.bin").write_bytes(b"x" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_until_full)
    tree = yaml.safe_load(recipe_file(tmp_path, run={"checkpoint_interval": 2}).read_text())
    tree["sweep"] = {"variants": {"first": {}, "second": {"loss.contrast.kind": "none"}}}
    path = write(tmp_path, tree)
    assert run.main([str(path), "--no-report"]) == EXIT_FAILED_VARIANT
    first = tmp_path / "results" / "tiny" / "first"
    failed = json.loads((first / "summary.json").read_text())
    assert "no space left on" in failed["error"] and str(first / "checkpoint") in failed["error"]
    assert not (first / "checkpoint.tmp").exists() and not list(first.glob(".*.tmp"))
    assert json.loads((first / "checkpoint" / "manifest.json").read_text())["iteration"] == 2
    assert json.loads((tmp_path / "results" / "tiny" / "second" / "summary.json").read_text())["status"] == "ok"


def test_a_summary_that_cannot_be_written_is_reported_and_the_sweep_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_training(*args: object, **kwargs: object) -> None:
        raise RuntimeError("training broke")

    def no_space(folder: Path, summary: dict) -> None:
        raise OSError(errno.ENOSPC, f"no space left on {folder}")

    monkeypatch.setattr(engine, "train_variant", no_training)
    monkeypatch.setattr(run, "write_summary", no_space)
    tree = yaml.safe_load(recipe_file(tmp_path).read_text())
    tree["sweep"] = {"variants": {"first": {}, "second": {}}}
    assert run.main([str(write(tmp_path, tree)), "--no-report"]) == EXIT_FAILED_VARIANT
    err = capsys.readouterr().err
    assert err.count("could not write") == 2 and "the sweep goes on" in err


def test_publish_leaves_no_scratch_when_a_write_fails(tmp_path: Path) -> None:
    def half_then_full(scratch: Path) -> None:
        scratch.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=f"no space left on {tmp_path / 'out.json'}"):
        publish(tmp_path / "out.json", half_then_full)
    assert list(tmp_path.iterdir()) == []


def test_weights_are_written_before_the_final_evaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_evaluation(*args: object, **kwargs: object) -> None:
        raise OSError("a val image is truncated")

    monkeypatch.setattr(loop, "evaluate", broken_evaluation)
    path = recipe_file(tmp_path)
    assert run.main([str(path), "--no-report"]) == EXIT_FAILED_VARIANT
    folder = folder_of(tmp_path)
    assert (folder / "model.safetensors").is_file()
    assert json.loads((folder / "checkpoint" / "manifest.json").read_text())["reason"] == "final"
    monkeypatch.undo()
    assert run.main([str(path), "--no-report", "--resume"]) == 0  # evaluates, trains nothing again
    assert summary(tmp_path)["status"] == "ok" and len(losses(tmp_path)) == ITERATIONS
