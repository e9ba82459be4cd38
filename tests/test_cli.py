"""The `harness` command: every subcommand's usage, errors and help name it, its summary is its module's, and
README lists the same commands."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import pytest

from harness import cli

REPO = Path(__file__).resolve().parents[1]


def summary_of(module: str, name: str) -> str:
    """What a command's module docstring says it does: its first sentence after '`harness NAME ...`: '."""
    doc = importlib.import_module(module).__doc__
    paragraph = " ".join(doc.split("\n\n")[0].split())
    assert paragraph.startswith(f"`harness {name}"), f"{module}'s docstring does not open with `harness {name}`"
    return paragraph.split("`: ", 1)[1].split(". ")[0].rstrip(".")


def test_the_console_script_is_harness_cli_main() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["harness"] == "harness.cli:main"


def test_exit_codes_pass_through(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["evaluate", str(tmp_path)]) == 2  # no run's recipe there
    assert "holds no run's recipe" in capsys.readouterr().err
    assert cli.main(["run", str(tmp_path / "missing.yaml")]) == 2
    with pytest.raises(SystemExit) as stopped:
        cli.main(["train"])
    assert stopped.value.code == 2


@pytest.mark.parametrize("name", cli.COMMANDS)
def test_every_command_names_itself_in_its_usage_and_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module, summary = cli.COMMANDS[name]
    assert summary_of(module, name) == summary
    with pytest.raises(SystemExit) as done:
        cli.main([name, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: harness {name} ")
    lines = text.splitlines() + [""]
    bare = [index for index, line in enumerate(lines[:-1])  # an option alone on its line: its help must follow
            if re.fullmatch(r"  (-\w, )?--?[\w-]+( \S+)*", line)]
    helpless = [lines[index] for index in bare if not lines[index + 1].startswith(" " * 20)]
    assert "options:" in text and not helpless, f"options without help: {helpless}"
    with pytest.raises(SystemExit) as done:
        cli.main([name, "--no-such-option"])
    assert done.value.code == 2
    assert f"harness {name}: error:" in capsys.readouterr().err


def test_harness_help_lists_every_command_once() -> None:
    listed = cli.listing().splitlines()[1:]
    assert [line.split()[0] for line in listed] == list(cli.COMMANDS)


def test_readme_lists_the_same_commands() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme.split("<!-- commands: begin -->")[1].split("<!-- commands: end -->")[0]
    rows = re.findall(r"^\| `harness (\w+)[^`]*` \| (.+?) \|$", table, re.MULTILINE)
    assert [(name, summary) for name, summary in rows] == [(name, summary) for name, (_, summary) in cli.COMMANDS.items()]
