"""Every file the harness reads, damaged: its reader names the file and what is wrong (DamagedFile), full disks say
where, a finished run is never replaced by another recipe, and --resume-inexact goes past what it can replace.

The corruption matrix (every file x every damage x every command that reads it) is tests/test_damage_matrix.py.
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from harness import results, run
from harness.command import EXIT_BAD_INPUT, EXIT_FAILED_VARIANT, EXIT_INTERRUPTED
from harness.engine import checkpoint
from harness.recipe import Recipe
from harness.results import (
    DamagedFile,
    MetricsLog,
    RunSummary,
    read_metrics,
    read_study,
    read_summary,
    read_sweep,
)
from tests.test_faults import folder_of, recipe_file, signal_at, summary

# Each damage turns a file's bytes into others (None: the file is gone).
DAMAGES: dict[str, Callable[[bytes], bytes | None]] = {
    "missing": lambda data: None,
    "empty": lambda data: b"",
    "truncated": lambda data: data[: len(data) // 2],
    "garbage": lambda data: np.random.default_rng(0).integers(0, 256, max(len(data), 64), np.uint8).tobytes(),
    "wrong_shape": lambda data: b'["a list", "where a mapping belongs"]\n',
    "flipped_byte": lambda data: data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0x5A]) + data[len(data) // 2 + 1:],
}


def damage(path: Path, how: str) -> None:
    """Apply one of DAMAGES to `path` (a new inode: a hard-linked original stays intact)."""
    data = DAMAGES[how](path.read_bytes())
    path.unlink()
    if data is not None:
        path.write_bytes(data)


SUMMARY = {"variant": "ce", "seed": 0, "status": "ok", "miou": 0.5, "eval_split": "test", "s_per_iter": 0.1}


def test_committed_summaries_read_unchanged() -> None:
    """Summaries written before the typed contract (the score as val_miou) read as they are, the score as miou."""
    paths = sorted(Path(results.__file__).parents[1].glob("results/**/summary.json"))
    assert len(paths) >= 100
    for path in paths:
        raw = json.loads(path.read_text())
        read = read_summary(path.parent)
        assert read.miou == raw.get("val_miou", raw.get("miou")) and read.status == raw["status"]
        assert read.eval_split == raw.get("eval_split", "val") and not read.model_extra, path


def test_a_summary_written_and_read_back_is_the_same_record(tmp_path: Path) -> None:
    written = results.write_summary(tmp_path, {**SUMMARY, "cost_ratio_ci95": [0.9, 1.1]})
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["miou"] == 0.5 and "val_miou" not in on_disk and on_disk["schema_version"] == results.SCHEMA_VERSION
    assert "cost_ratio" not in on_disk  # a field the run did not record stays absent
    assert read_summary(tmp_path) == written.model_copy(update={"variant": tmp_path.name})


def test_a_finished_summary_needs_its_score() -> None:
    with pytest.raises(ValueError, match="without its mIoU"):
        RunSummary.model_validate({**SUMMARY, "miou": None})


READERS: dict[str, tuple[str, Callable[[Path], object], Callable[[Path], None]]] = {
    # file -> (name, reader of its folder, writer of a valid one)
    "summary": ("summary.json", read_summary, lambda folder: results.write_summary(folder, SUMMARY)),
    "study": ("study.json", read_study, lambda folder: results.write_study(folder, results.StudyManifest(
        recipe="x.yaml", executor="local", jobs_dir=".submitit", runs=[results.StudyRun(variant="ce", folder="ce")]))),
    "sweep": ("sweep.json", read_sweep, lambda folder: results.write_json(folder / "sweep.json",
                                                                          results.SweepRecord(baseline="ce").to_json())),
    "recipe": ("recipe.yaml", lambda folder: results.read_recipe(folder / "recipe.yaml"),
               lambda folder: results.write_recipe(folder, Recipe())),
    "metrics": ("metrics.jsonl", lambda folder: read_metrics(folder / "metrics.jsonl"),
                lambda folder: (folder / "metrics.jsonl").write_text(
                    "".join(json.dumps({"kind": "train", "iter": it, "loss": 1.0}) + "\n" for it in (1, 2, 3)))),
}


@pytest.mark.parametrize("how", [how for how in DAMAGES if how != "missing"])
@pytest.mark.parametrize("kind", READERS)
def test_every_reader_names_the_damaged_file(tmp_path: Path, kind: str, how: str) -> None:
    name, read, write = READERS[kind]
    write(tmp_path)
    read(tmp_path)  # whole, it reads
    damage(tmp_path / name, how)
    try:
        read(tmp_path)
    except DamagedFile as error:
        assert error.path == tmp_path / name and str(error).startswith(f"{tmp_path / name}: ")
        assert "\n" not in str(error)
    else:  # some damages leave a file that still means something; only these may go unnoticed (a recipe cut
        # between two keys is a shorter recipe whose missing keys take their defaults)
        assert (kind, how) in {("metrics", "empty"), ("metrics", "truncated"), ("metrics", "flipped_byte"),
                               ("recipe", "truncated"), ("recipe", "flipped_byte"),
                               ("sweep", "flipped_byte"), ("study", "flipped_byte"), ("summary", "flipped_byte")}


def test_a_torn_last_metrics_line_is_a_killed_write_not_damage(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "iter": 1, "loss": 1.0}\n{"kind": "train", "it')
    assert [record.iter for record in read_metrics(path)] == [1]
    path.write_text('{"kind": "train", "it\n{"kind": "train", "iter": 2, "loss": 1.0}\n')
    with pytest.raises(DamagedFile, match="line 1"):
        read_metrics(path)


def test_a_resumed_log_sets_a_damaged_log_aside_and_keeps_its_records(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "iter": 1, "loss": 1.0}\nnot a record\n{"kind": "train", "iter": 2}\n')
    kept = MetricsLog(tmp_path, enabled=True).truncate_after(5)
    assert kept is not None and "not a record" in kept.read_text() and results.is_set_aside(kept.name)
    assert [record.iter for record in read_metrics(path)] == [1, 2]


def test_set_aside_never_deletes_and_readers_skip_what_it_moved(tmp_path: Path) -> None:
    folder = tmp_path / "ce" / "seed-0"
    folder.mkdir(parents=True)
    results.write_summary(folder, SUMMARY)
    (folder / "summary.json").write_text("{")
    kept = results.set_aside(folder / "summary.json")
    assert kept.read_text() == "{" and not (folder / "summary.json").exists()
    results.write_summary(folder, SUMMARY)
    moved = results.set_run_aside(folder)
    assert (moved / "summary.json").exists() and (moved / kept.name).exists()
    assert results.run_folders(tmp_path) == []  # the emptied folder and the set-aside one hold no run


# ---------------------------------------------------------------- full disks


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),  # torch.save
    OSError("1000000 requested and 131056 written"),  # numpy
    Exception("Error while serializing: I/O error: No space left on device (os error 28)"),  # safetensors
])
def test_a_write_that_runs_out_of_space_says_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    def failing(scratch: Path) -> None:
        scratch.write_bytes(b"half")
        raise failure

    full = shutil._ntuple_diskusage(10**9, 10**9 - 10, 10)  # 10 bytes left
    monkeypatch.setattr(results.shutil, "disk_usage", lambda path: full)
    with pytest.raises(OSError, match=f"no space left on {tmp_path / 'model.safetensors'}") as raised:
        results.publish(tmp_path / "model.safetensors", failing)
    assert raised.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []


def test_a_write_that_fails_with_space_left_keeps_its_own_error(tmp_path: Path) -> None:
    def failing(scratch: Path) -> None:
        raise RuntimeError("unexpected pos 576 vs 534")

    with pytest.raises(RuntimeError, match="unexpected pos"):
        results.publish(tmp_path / "x.pt", failing)


# ---------------------------------------------------------------- a finished run is never lost


def test_a_finished_run_is_not_replaced_by_another_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = recipe_file(tmp_path)
    assert run.main([str(path), "--no-report"]) == 0
    before = {item.name: item.read_bytes() for item in folder_of(tmp_path).iterdir() if item.is_file()}
    assert run.main([str(path), "--no-report"]) == 0  # the same recipe: skipped
    assert "already finished: skipped" in capsys.readouterr().out
    assert run.main([str(path), "--no-report", "--set", "optim.lr=0.05"]) == EXIT_BAD_INPUT
    assert "optim.lr" in capsys.readouterr().err
    after = {item.name: item.read_bytes() for item in folder_of(tmp_path).iterdir() if item.is_file()}
    assert {name: data for name, data in after.items() if not name.startswith(".lock")} == {
        name: data for name, data in before.items() if not name.startswith(".lock")}
    assert run.main([str(path), "--no-report", "--set", "optim.lr=0.05", "--overwrite"]) == 0
    kept = next(folder_of(tmp_path).parent.glob("default.replaced-*"))
    assert (kept / "summary.json").read_bytes() == before["summary.json"]
    assert summary(tmp_path)["status"] == "ok"


def test_a_run_without_its_summary_resumes_from_its_final_checkpoint(tmp_path: Path) -> None:
    path = recipe_file(tmp_path, run={"keep_checkpoint": True})
    assert run.main([str(path), "--no-report"]) == 0
    whole = summary(tmp_path)
    (folder_of(tmp_path) / "summary.json").unlink()
    assert run.main([str(path), "--no-report", "--resume"]) == 0
    again = summary(tmp_path)
    assert again["model_sha256"] == whole["model_sha256"] and again["miou"] == whole["miou"]
    lines = (folder_of(tmp_path) / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["kind"] == "train" for line in lines) == sum(  # no iteration trained twice
        1 for it in range(1, 9))


def test_a_damaged_summary_is_set_aside_and_its_run_done_again(tmp_path: Path) -> None:
    path = recipe_file(tmp_path)
    assert run.main([str(path), "--no-report"]) == 0
    (folder_of(tmp_path) / "summary.json").write_text('{"status": "ok", "mi')
    assert run.main([str(path), "--no-report", "--resume"]) == 0
    kept = next(folder_of(tmp_path).glob("summary.json.damaged-*"))
    assert kept.read_text() == '{"status": "ok", "mi' and summary(tmp_path)["status"] == "ok"


# ---------------------------------------------------------------- --resume-inexact


@pytest.fixture
def interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny run stopped by a signal at iteration 4, its checkpoint on disk; its recipe file."""
    path = recipe_file(tmp_path)
    signal_at(monkeypatch, 3)
    assert run.main([str(path), "--no-report"]) == EXIT_INTERRUPTED
    monkeypatch.undo()
    return path


def test_resume_inexact_replaces_a_truncated_optimizer_state(tmp_path: Path, interrupted: Path) -> None:
    part = folder_of(tmp_path) / "checkpoint" / "optimizer.bin"
    damage(part, "truncated")
    assert run.main([str(interrupted), "--no-report", "--resume"]) == EXIT_FAILED_VARIANT
    failed = summary(tmp_path)
    assert failed["status"] == "failed" and str(part) in failed["error"] and "--resume-inexact" in failed["error"]
    assert run.main([str(interrupted), "--no-report", "--resume", "--resume-inexact"]) == 0
    resumed = summary(tmp_path)
    assert resumed["status"] == "ok" and resumed["resume_exact"] is False
    assert resumed["resume_replaced"] == ["optimizer.bin"]
    assert not (folder_of(tmp_path) / checkpoint.RESUME_SCRATCH_DIR).exists()


def test_resume_inexact_refuses_damaged_weights_naming_them(
    tmp_path: Path, interrupted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    part = folder_of(tmp_path) / "checkpoint" / "model.safetensors"
    damage(part, "flipped_byte")
    assert run.main([str(interrupted), "--no-report", "--resume", "--resume-inexact"]) == EXIT_FAILED_VARIANT
    output = capsys.readouterr()
    last = (output.out + output.err).strip().splitlines()[-1]
    assert str(part) in last and "Traceback" not in output.out + output.err
    assert summary(tmp_path)["status"] == "failed"
