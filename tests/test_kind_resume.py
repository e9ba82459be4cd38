"""Every registered kind resumes exactly (the entry points' included): a run stopped by a signal mid-way and continued
with --resume ends with the weights, bank, mIoU and every logged loss of the same run never stopped.

tests/test_faults.py holds the stop-and-resume cases themselves (each signal, the loader workers, two ranks) for
RegionContrast; this holds every kind to the same end state.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import yaml

from harness import run
from harness.command import EXIT_INTERRUPTED
from tests.test_contrast_kinds import KINDS
from tests.test_faults import signal_at
from tests.test_run import tiny_recipe

ITERATIONS = 8
STOP_AT = 3  # the signal arrives during this iteration's step; the checkpoint holds the next


def recipe_file(tmp_path: Path, name: str, kind: str) -> Path:
    """The tiny recipe named `name` with `kind` (its defaults), ITERATIONS long, logging every iteration."""
    tree = tiny_recipe(tmp_path, optim={"iterations": ITERATIONS}, loss={"contrast": {"kind": kind}},
                       run={"name": name, "log_interval": 1, "deterministic": True})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def ended(tmp_path: Path, name: str) -> tuple[dict, list[float]]:
    """A run's summary and its logged training losses."""
    run_dir = tmp_path / "results" / name / "default"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return json.loads((run_dir / "summary.json").read_text()), [r["loss"] for r in records if r["kind"] == "train"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_stopped_run_of_every_kind_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    whole, stopped = recipe_file(tmp_path, "whole", kind), recipe_file(tmp_path, "stopped", kind)
    assert run.main([str(whole), "--no-report"]) == 0
    signal_at(monkeypatch, STOP_AT, signal.SIGTERM)
    assert run.main([str(stopped), "--no-report"]) == EXIT_INTERRUPTED
    monkeypatch.undo()
    assert run.main([str(stopped), "--no-report", "--resume"]) == 0
    (expected, expected_losses), (resumed, resumed_losses) = ended(tmp_path, "whole"), ended(tmp_path, "stopped")
    assert resumed["status"] == "ok" and resumed["requeue_count"] == 1 and resumed["resume_exact"] is True
    for key in ("miou", "per_class_iou", "bank_digest", "bank_bytes", "model_sha256"):
        assert resumed.get(key) == expected.get(key), key
    assert resumed_losses == expected_losses and len(expected_losses) == ITERATIONS
