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
        ("matmul", "training", "evaluation", "profile", "batch_sweep", "sync", "eq4", "loader", "data_loading",
         "smoke"), "ok"
    )
    assert done.stdout.count(f"## GPU suite (tiny): {report['environment']['device']}") == 2  # the card, named
    assert report["environment"]["device"] and report["environment"]["torch"]
    assert positive(sections["matmul"]["flops_per_s"])
    assert "CUDA only" in sections["sync"]["note"]  # the CPU has no sync debug mode; tests/test_sync.py covers it

    training = sections["training"]
    assert positive(training["flops_per_step"]) and positive(training["peak_flops_per_s"])
    assert set(training["rows"]) == ROWS
    for name, row in training["rows"].items():
        numbers = ["s_per_iter", "images_per_s", "tflops_per_s", "mfu", "peak_memory_bytes"]
        numbers += ["contrast_ms"] * (name in CONTRAST_ROWS)
        assert all(positive(row[key]) for key in numbers), (name, row)
        ratios = ["ratio_to_bare"] * (name != "bare") + ["ratio_to_ce"] * (name in CONTRAST_ROWS)
        for key in ratios:  # each with its spread over the rounds
            ratio = row[key]
            assert positive(ratio["median"]) and ratio["q1"] <= ratio["median"] <= ratio["q3"], (name, key, ratio)
            assert ratio["n"] == report["environment"]["settings"]["rounds"]
        assert row["ratio_to_eager"] is None  # the run.compile rows are the full suite's (tests/test_compile.py)
        assert row["timed_steps"] >= 20 and row["warmup_steps"] >= 5
        assert (row["contrast_ms"] is None) == (name not in CONTRAST_ROWS)
    assert training["rows"]["region"]["bank_fill"] == training["rows"]["pixel"]["bank_fill"] == 1.0

    evaluation = sections["evaluation"]["rows"]
    assert set(evaluation) == {"whole", "slide", "slide_unbatched", "ms_flip", "ms_flip_unbatched"}
    assert all(positive(row["images_per_s"]) and len(row["seconds"]) == 3 for row in evaluation.values())
    assert positive(evaluation["slide"]["speedup"]["median"]) and positive(evaluation["ms_flip"]["speedup"]["median"])

    profile = sections["profile"]
    assert len(profile["top"]) == 15 and positive(profile["total_s"])
    assert all(positive(entry["self_s"]) and entry["calls"] >= 1 for entry in profile["top"])
    assert "| kernel | self ms | share | calls |" in done.stdout

    sweep = sections["batch_sweep"]["points"]
    assert set(sweep) == {"2", "4", "6"}
    assert all(positive(point["s_per_iter"]) and positive(point["peak_bytes"]) for point in sweep.values())

    loader = sections["loader"]
    assert positive(loader["prepare_s"]) and positive(loader["images_per_s"]) and positive(loader["loaded_over_synthetic"])
    assert loader["step_spread"]["n"] == len(loader["steps"]) >= 3

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
    assert smoke["reference_run"] == "exit 0" and smoke["problems"] == []
    # The region variant resumed mid-run from its checkpoint and ended with the uninterrupted run's bank.
    assert smoke["bank"]["counts_equal"] and smoke["bank"]["digests_equal"] and smoke["bank"]["max_key_difference"] == 0
    assert smoke["report_md"] and Path(smoke["report_md"]).is_file()
    assert set(smoke["variants"]) == {"ce", "region"}
    for variant in smoke["variants"].values():
        assert variant["status"] == "ok" and math.isfinite(variant["miou"])

    assert [target["verdict"] in ("met", "NOT met") for target in report["targets"]] == [True]
