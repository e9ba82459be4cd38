"""The `harness` console script: each subcommand reaches its module, with its own options and exit code."""

import tomllib
from pathlib import Path

import pytest

from harness import cli
from tests.conftest import REPO


def test_the_console_script_is_harness_cli_main() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["harness"] == "harness.cli:main"


@pytest.mark.parametrize(("command", "usage"), [
    ("run", "--resume"), ("evaluate", "--export"), ("report", "results"), ("banks", "--max-bytes"),
])
def test_each_subcommand_shows_its_modules_own_options(
    command: str, usage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main([command, "--help"])
    assert stopped.value.code == 0 and usage in capsys.readouterr().out


def test_exit_codes_pass_through(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["evaluate", str(tmp_path)]) == 2  # no run's recipe there
    assert "holds no run's recipe" in capsys.readouterr().err
    assert cli.main(["run", str(tmp_path / "missing.yaml")]) == 2
    with pytest.raises(SystemExit) as stopped:
        cli.main(["train"])
    assert stopped.value.code == 2
