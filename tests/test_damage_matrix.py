"""The corruption matrix: a small study, each file the harness reads damaged each way, each command that reads it.

Every cell must end with a documented exit code (harness/command.py), no traceback, no hang (a timeout per cell),
a last line naming the file where the command stopped on it, the damaged bytes kept (in place or set aside), and
not one changed byte in a run folder the damage did not touch (the interrupted run, which `run --resume` and
`submit` go on with, aside). README "What the harness guarantees" lists the matrix.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from harness import cli, run
from harness.command import (
    EXIT_BAD_INPUT,
    EXIT_DAMAGED,
    EXIT_FAILED_VARIANT,
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
)
from harness.results import StudyManifest, StudyRun, is_set_aside, write_study
from harness.status import local_job_alive
from tests.data_fixtures import every_value, make_ade20k
from tests.test_damage import DAMAGES, damage
from tests.test_faults import signal_at
from tests.test_run import tiny_recipe

pytestmark = pytest.mark.slow
CELL_TIMEOUT_S = 180
NO_PID = 4_000_000_000  # the study's jobs are long gone
RECIPE = "matrix"
INTERRUPTED = "region/seed-1"
LINKED_SUFFIXES = (".safetensors", ".bin", ".pkl", ".pt", ".npy", ".npz")  # big, and only ever replaced whole
ALLOWED_EXITS = {EXIT_OK, EXIT_FAILED_VARIANT, EXIT_BAD_INPUT, EXIT_DAMAGED,
                 EXIT_INCOMPLETE}


class Target(NamedTuple):
    """A file of a study (relative to results/<recipe>/), the commands that read it, and which study: the
    finished one, or the one whose region seed 1 was stopped mid-run (for the files only a resume reads)."""

    path: str
    commands: tuple[str, ...]
    study: str = "finished"


TARGETS = (
    Target("ce/seed-0/summary.json", ("run", "submit", "status", "report", "plan", "evaluate")),
    Target("study.json", ("submit", "status", "report", "plan")),
    Target("sweep.json", ("run", "submit", "status", "report", "plan")),
    Target("ce/seed-0/recipe.yaml", ("run", "evaluate")),
    Target("ce/seed-0/model.safetensors", ("evaluate",)),
    Target(f"{INTERRUPTED}/metrics.jsonl", ("run", "report"), "interrupted"),
    Target(f"{INTERRUPTED}/recipe.yaml", ("run",), "interrupted"),
    Target(f"{INTERRUPTED}/checkpoint/manifest.json", ("run",), "interrupted"),
    Target(f"{INTERRUPTED}/checkpoint/optimizer.bin", ("run",), "interrupted"),
    Target(f"{INTERRUPTED}/checkpoint/model.safetensors", ("run",), "interrupted"),
)
CELLS = [(target, command, how) for target in TARGETS for command in target.commands for how in DAMAGES]
# Damages that leave a file meaning something (a byte flipped inside a number or a name, a torn last log line)
# cannot be noticed by any reader; every other damage must be named by the commands that read the file.
UNNOTICEABLE = {"flipped_byte", "truncated@metrics.jsonl", "empty@metrics.jsonl", "missing@metrics.jsonl",
                "missing@recipe.yaml", "missing@study.json", "missing@sweep.json", "missing@summary.json"}


# An empty log, or one whose last line is torn, is what a run killed mid-write leaves: a resume keeps its records and
# drops the torn line, which holds no record.
LOGS_AS_KILLED_WRITES_LEAVE_THEM = {"empty@metrics.jsonl", "truncated@metrics.jsonl"}


def tree_of(root: Path) -> dict:
    """The matrix's recipe: two variants, two seeds, a few iterations, no cost probe, the weights kept small."""
    tree = tiny_recipe(root, run={"name": RECIPE, "deterministic": True}, optim={"iterations": 4},
                       model={"backbone": "resnet10t", "head_channels": 8, "aux_channels": 8})
    tree["sweep"] = {"seeds": [0, 1], "baseline": "ce",
                     "variants": {"ce": {"loss.contrast.kind": "none"}, "region": {"loss.contrast.kind": "region"}}}
    return tree


def write_recipe_file(root: Path, tree: dict) -> Path:
    path = root / "recipe.yaml"
    tree["run"]["output_dir"], tree["run"]["reports_dir"] = str(root / "results"), str(root / "reports")
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Two studies as a local submission leaves them: in "interrupted" three runs finished and region seed 1
    stopped by a signal with its checkpoint; in "finished" that run resumed to its end. study.json names jobs
    long gone. Their files' hashes are checked unchanged at the end."""
    root = tmp_path_factory.mktemp("pristine")
    stopped = root / "interrupted"
    stopped.mkdir()
    recipe = write_recipe_file(stopped, tree_of(stopped))
    for only, seed in (("ce", "0"), ("ce", "1"), ("region", "0")):
        assert run.main([str(recipe), "--no-report", "--only", only, "--seed", seed]) == 0
    with pytest.MonkeyPatch.context() as patch:
        signal_at(patch, 2)
        assert run.main([str(recipe), "--no-report", "--only", "region", "--seed", "1"]) == EXIT_INTERRUPTED
    for arrays in (stopped / "results").glob("*/*/seed-*/*.npz"):  # the report's t-SNE and qualitative panels
        arrays.unlink()
    finished = cell_copy(stopped, root / "finished").parent
    assert run.main([str(finished / "recipe.yaml"), "--no-report", "--resume"]) == 0
    for study, requeued in ((stopped, {INTERRUPTED}), (finished, set())):
        runs = [StudyRun(variant=variant, seed=seed, folder=f"{variant}/seed-{seed}", job_id=str(NO_PID + index),
                         state="requeued" if f"{variant}/seed-{seed}" in requeued else "finished")
                for index, (variant, seed) in enumerate([("ce", 0), ("ce", 1), ("region", 0), ("region", 1)])]
        write_study(study / "results" / RECIPE, StudyManifest(recipe=str(study / "recipe.yaml"), executor="local",
                                                             jobs_dir=".submitit", runs=runs))
    studies = {"interrupted": stopped, "finished": finished}
    before = {name: hashes(study) for name, study in studies.items()}
    yield studies
    assert {name: hashes(study) for name, study in studies.items()} == before, "a cell wrote through to a pristine study"


def hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below `folder` but locks and evaluate's own outputs, by relative path."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.name.startswith(".lock") and not path.name.startswith("eval-")
    }


def link_or_copy(source: str, destination: str) -> None:
    """Hard-link the big binary files (the harness only ever replaces them whole), copy the rest."""
    if source.endswith(LINKED_SUFFIXES):
        os.link(source, destination)
    else:
        shutil.copy2(source, destination)


def cell_copy(pristine: Path, cell: Path) -> Path:
    """The study copied for one cell, its recipe pointing at the copy; the recipe file."""
    shutil.copytree(pristine / "results", cell / "results", copy_function=link_or_copy)
    # data.root stays the pristine study's: the digit scenes' cache, generated once, is only read
    recipe = write_recipe_file(cell, yaml.safe_load((pristine / "recipe.yaml").read_text()))
    study = cell / "results" / RECIPE / "study.json"
    if study.exists():  # the manifest names the recipe it was submitted with
        study.write_text(study.read_text().replace(str(pristine / "recipe.yaml"), str(recipe)))
    return recipe


def argv(command: str, recipe: Path, study: Path, target: str) -> list[str]:
    """The command line of one cell."""
    run_folder = target.rsplit("/", 1)[0] if target.count("/") >= 2 else "ce/seed-0"
    return {
        "run": ["run", str(recipe), "--resume", "--no-report"],
        "submit": ["submit", str(recipe), "--executor", "local"],
        "status": ["status", str(study)],
        "report": ["report", str(study), "--out", str(study.parents[1] / "reports")],
        "plan": ["plan", str(study)],
        "evaluate": ["evaluate", str(study / run_folder.split("/checkpoint")[0])],
    }[command]


class CellTimeout(Exception):
    """A cell ran past CELL_TIMEOUT_S: a hang."""


def timed_main(args: list[str]) -> int:
    """`harness ARGS` in this process, stopped by SIGALRM past the cell's time."""
    def expire(signum: int, frame: object) -> None:
        raise CellTimeout(f"harness {' '.join(args)} ran past {CELL_TIMEOUT_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(CELL_TIMEOUT_S)
    try:
        return cli.main(args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def wait_for_jobs(study: Path, known: set[str]) -> None:
    """Let the local jobs a submission started end (they retrain what the damage cost)."""
    manifest = (study / "study.json").read_text()
    started = [job for job in (line.split('"')[3] for line in manifest.splitlines() if '"job_id": "' in line)
               if job not in known]
    import time

    deadline = time.monotonic() + CELL_TIMEOUT_S
    while any(local_job_alive(job) for job in started):
        assert time.monotonic() < deadline, f"jobs {started} still running after {CELL_TIMEOUT_S} s"
        time.sleep(1)


def kept_somewhere(folder: Path, data: bytes) -> bool:
    """Whether some file below `folder` holds exactly `data` (the damaged file, in place or set aside)."""
    return any(path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data
               for path in folder.rglob("*"))


def noticeable(target: str, how: str) -> bool:
    """Whether any reader can tell this damage from a whole file."""
    name = target.rsplit("/", 1)[-1]
    return how not in UNNOTICEABLE and f"{how}@{name}" not in UNNOTICEABLE


@pytest.mark.parametrize(("cell", "command", "how"), CELLS, ids=[f"{t.path}-{c}-{h}" for t, c, h in CELLS])
def test_a_damaged_file_costs_one_named_line_and_nothing_else(
    pristine: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], cell: Target, command: str,
    how: str,
) -> None:
    target, resumes = cell.path, cell.study == "interrupted" and command in ("run", "submit")
    recipe = cell_copy(pristine[cell.study], tmp_path)
    study = tmp_path / "results" / RECIPE
    damaged = study / target
    damage(damaged, how)
    left = damaged.read_bytes() if damaged.exists() else None
    damaged_run = target.rsplit("/", 1)[0] if target.count("/") >= 1 else None
    untouched = [folder for folder in ("ce/seed-0", "ce/seed-1", "region/seed-0", INTERRUPTED)
                 if not (damaged_run or "").startswith(folder) and not (folder == INTERRUPTED and resumes)]
    before = {folder: hashes(study / folder) for folder in untouched}
    capsys.readouterr()
    code = timed_main(argv(command, recipe, study, target))
    if command == "submit":
        wait_for_jobs(study, {str(NO_PID + index) for index in range(4)})
    output = capsys.readouterr()
    text = output.out + output.err
    last = [lines[-1] for lines in (output.out.strip().splitlines(), output.err.strip().splitlines()) if lines]
    assert code in ALLOWED_EXITS, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    if code in (EXIT_FAILED_VARIANT, EXIT_DAMAGED):
        assert any(damaged.name in line for line in last), text[-3000:]  # the last line of stdout or stderr
    if noticeable(target, how) and command != "plan" and not (command == "run" and target.startswith("ce/")):
        assert damaged.name in text, text[-3000:]  # said, not passed over (plan and a skipped run read around it)
    for folder, files in before.items():
        assert hashes(study / folder) == files, f"{folder} changed"
    if left is not None and f"{how}@{damaged.name}" not in LOGS_AS_KILLED_WRITES_LEAVE_THEM:
        assert kept_somewhere(study, left), "the damaged bytes are gone"


# ---------------------------------------------------------------- the prepared store's index


@pytest.fixture(scope="module")
def prepared_recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recipe reading a small ADE20K tree, its store prepared."""
    root = tmp_path_factory.mktemp("store")
    tree = {"run": {"name": "store", "output_dir": str(root / "results")},
            "data": {"dataset": "ade20k", "root": str(make_ade20k(root / "ade", every_value(151)).parent), "prepare": "auto",
                     "cache_dir": str(root / "prepared")}}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert cli.main(["prepare", str(path)]) == 0
    return path


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_store_index_is_set_aside_and_the_store_built_again(
    prepared_recipe: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    stores = sorted(folder for folder in (prepared_recipe.parent / "prepared").iterdir()
                    if folder.is_dir() and not is_set_aside(folder.name))
    index = stores[0] / "index.npy"
    damage(index, how)
    capsys.readouterr()
    assert timed_main(["prepare", str(prepared_recipe)]) == 0
    text = capsys.readouterr()
    assert "Traceback" not in text.out + text.err
    assert index.is_file()  # built again
    if how != "flipped_byte" or not index.exists():
        assert "index.npy" in text.out + text.err
