"""A newcomer's first hour, from a clean clone of the committed tree: the README's quickstart (at a few
iterations) leaves `git status` clean, ends with each variant's mIoU and the committed reference run it is not
compared with (another recipe: tests/test_answer.py has the comparison), and every command's help names it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import cli
from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
QUICK = ["--set", "optim.iterations=6", "--set", "eval.interval=3", "--set", "data.digit_scenes.train_images=40",
         "--set", "data.digit_scenes.val_images=16", "--set", "run.log_interval=2"]


def in_clone(clone: Path, *command: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    """A command run in the clone with the clone's harness first on the path (the venv's install may be another)."""
    env = {**os.environ, "PYTHONPATH": str(clone), "ACCELERATE_USE_CPU": "1"}
    return subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean clone of this repository's committed tree."""
    target = tmp_path_factory.mktemp("newcomer") / "clone"
    subprocess.run(["git", "clone", "--quiet", "--local", str(REPO), str(target)], check=True)
    return target


def test_the_quickstart_leaves_the_tree_clean_and_ends_with_its_answer(clone: Path) -> None:
    readme = (clone / "README.md").read_text()
    command = re.search(r"&& (accelerate launch [^\n`]+recipes/quickstart\.yaml)", readme).group(1).split()
    done = in_clone(clone, sys.executable, "-m", "accelerate.commands.launch", *command[2:], *QUICK)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = in_clone(clone, "git", "status", "--porcelain")
    assert status.stdout == "", f"the quickstart changed the committed tree:\n{status.stdout}"
    tail = done.stdout.strip().splitlines()[-12:]
    for variant in ("ce", "region"):
        assert any(re.match(rf"\s+{variant}\s+\d+\.\d\d % \(1 seed\)", line) for line in tail), tail
        # a few iterations are not the reference's recipe: the answer names the reference and compares nothing
        assert f"  {variant}: trained with another recipe than the reference's (its fingerprint differs): " \
               "not compared" in tail, tail
    assert tail[-1] == "report: reports/quickstart/report.md"
    assert (clone / "reports" / "quickstart" / "report.md").is_file()


@pytest.mark.parametrize("name", cli.COMMANDS)
def test_every_command_of_the_clone_names_itself(clone: Path, name: str) -> None:
    done = in_clone(clone, sys.executable, "-m", "harness.cli", name, "--help", timeout=120)
    assert done.returncode == 0 and done.stdout.startswith(f"usage: harness {name} "), done.stderr[-2000:]
