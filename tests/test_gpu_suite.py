"""The GPU suite's --tiny mode on the CPU: every section runs, prints its table and records finite numbers."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, check

ROWS = {"bare", "ce", "region", "in_batch", "pixel"}
CONTRAST_ROWS = {"region", "in_batch", "pixel"}


def positive(value: object) -> bool:
    """A finite number above zero."""
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_tiny_suite_prints_its_table_and_writes_every_row(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_suite.py", "--tiny", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    check(done)
    assert "| row | s/iter | images/s |" in done.stdout and "### targets" in done.stdout
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    sections = report["sections"]
    assert {name: section["status"] for name, section in sections.items()} == dict.fromkeys(
        ("matmul", "training", "sync", "eq4", "data_loading", "smoke"), "ok"
    )
    assert report["environment"]["device"] and report["environment"]["torch"]
    assert positive(sections["matmul"]["flops_per_s"])
    assert "CUDA only" in sections["sync"]["note"]  # the CPU has no sync debug mode; tests/test_sync.py covers it

    training = sections["training"]
    assert positive(training["flops_per_step"]) and positive(training["peak_flops_per_s"])
    assert set(training["rows"]) == ROWS
    for name, row in training["rows"].items():
        numbers = ["s_per_iter", "images_per_s", "tflops_per_s", "mfu", "peak_memory_bytes"]
        numbers += ["ratio_to_bare"] * (name != "bare") + ["contrast_ms", "ratio_to_ce"] * (name in CONTRAST_ROWS)
        assert all(positive(row[key]) for key in numbers), (name, row)
        assert row["timed_steps"] >= 20 and row["warmup_steps"] >= 5
        assert (row["contrast_ms"] is None) == (name not in CONTRAST_ROWS)
    assert training["rows"]["region"]["bank_fill"] == training["rows"]["pixel"]["bank_fill"] == 1.0

    eq4 = sections["eq4"]
    for name in ("streamed", "direct"):
        assert positive(eq4[name]["seconds"]) and math.isfinite(eq4[name]["loss"])
        # CPU memory is resident-set growth: the streamed chunks reuse freed heap, which RSS cannot see.
        assert math.isfinite(eq4[name]["extra_peak_bytes"])
    assert positive(eq4["direct"]["extra_peak_bytes"])
    assert eq4["loss_difference"] < 1e-4 and eq4["max_grad_difference"] < 1e-4

    loading = sections["data_loading"]
    assert loading["per_sample_ms"] and all(positive(row["median_ms"]) for row in loading["per_sample_ms"].values())
    assert loading["loader_samples_per_s"] and all(positive(rate) for rate in loading["loader_samples_per_s"].values())

    smoke = sections["smoke"]
    assert smoke["first_run"] == "stopped" and smoke["resume"] == "exit 0" and smoke["resumed_at"]
    assert smoke["report_md"] and Path(smoke["report_md"]).is_file()
    assert set(smoke["variants"]) == {"ce", "region"}
    for variant in smoke["variants"].values():
        assert variant["status"] == "ok" and math.isfinite(variant["val_miou"])

    assert [target["verdict"] in ("met", "NOT met") for target in report["targets"]] == [True]
