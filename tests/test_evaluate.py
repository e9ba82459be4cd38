"""harness.evaluate: a finished run's saved model, rebuilt and evaluated again, alone or on two ranks."""

import json
import subprocess
from pathlib import Path

import pytest

from harness import evaluate, run
from tests.conftest import CPU_ENV, check, torchrun
from tests.test_run import tiny_recipe, write


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a tiny run trained for three iterations."""
    tmp_path = tmp_path_factory.mktemp("evaluate")
    tree = tiny_recipe(tmp_path, optim={"iterations": 3})
    assert run.main([str(write(tmp_path, tree)), "--no-report"]) == 0
    return tmp_path / "results" / "tiny" / "default"


def test_the_runs_own_protocol_reproduces_its_miou_and_leaves_the_summary_alone(finished_run: Path) -> None:
    summary_bytes = (finished_run / "summary.json").read_bytes()
    assert evaluate.main([str(finished_run)]) == 0
    result = json.loads((finished_run / "eval-whole_1.0.json").read_text())
    summary = json.loads(summary_bytes)
    assert result["val_miou"] == summary["val_miou"] and result["per_class_iou"] == summary["per_class_iou"]
    assert result["protocol"]["mode"] == "whole" and result["protocol"]["scales"] == [1.0]
    assert result["seconds"] > 0 and result["model_sha256"] == summary["model_sha256"]
    assert (finished_run / "summary.json").read_bytes() == summary_bytes


def test_set_gives_another_protocol(finished_run: Path) -> None:
    overrides = ["--set", "eval.scales=[0.75,1.0]", "--set", "eval.flip=true"]
    assert evaluate.main([str(finished_run), *overrides]) == 0
    result = json.loads((finished_run / "eval-whole_0.75-1.0_flip.json").read_text())
    assert result["protocol"]["scales"] == [0.75, 1.0] and result["protocol"]["flip"] is True
    assert 0.0 <= result["val_miou"] <= 1.0 and len(result["per_class_iou"]) == 11
    assert evaluate.main([str(finished_run), "--set", "eval.mode=slide", "--set", "eval.slide_crop=24",
                          "--set", "eval.slide_stride=16", "--name", "slid"]) == 0
    assert json.loads((finished_run / "eval-slid.json").read_text())["protocol"]["mode"] == "slide"


def test_only_eval_keys_change_and_foreign_weights_are_refused(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert evaluate.main([str(finished_run), "--set", "model.head=fcn"]) == 2
    assert "model.head: only eval.* keys" in capsys.readouterr().err
    assert evaluate.main([str(tmp_path)]) == 2
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("recipe.yaml", "summary.json"):
        (copy / name).write_bytes((finished_run / name).read_bytes())
    (copy / "model.safetensors").write_bytes((finished_run / "model.safetensors").read_bytes()[:-1] + b" ")
    assert evaluate.main([str(copy)]) == 2
    assert "SHA-256 differs" in capsys.readouterr().err


@pytest.mark.distributed
def test_two_ranks_reproduce_the_runs_miou(finished_run: Path) -> None:
    command = torchrun("-m", "harness.evaluate", str(finished_run), "--name", "two_ranks")
    check(subprocess.run(command, env=CPU_ENV, capture_output=True, text=True, timeout=600))
    result = json.loads((finished_run / "eval-two_ranks.json").read_text())
    summary = json.loads((finished_run / "summary.json").read_text())
    assert result["world_size"] == 2 and result["val_miou"] == summary["val_miou"]
