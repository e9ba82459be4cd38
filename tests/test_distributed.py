"""Real multi-process runs on the CPU: two gloo ranks under torchrun, a two-node rendezvous on
loopback, DeepSpeed ZeRO-2, and a run killed with SIGKILL then resumed."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from harness import contrast
from harness.data import build_datasets
from harness.metrics import confusion_matrix, iou_from_confusion
from harness.models import build_model
from harness.ops import IMAGENET, normalize, upsample_to
from harness.recipe import Recipe
from harness.results import file_sha256
from harness.saved import load_model_file
from tests.conftest import CPU_ENV, REPO, RUN, check, free_port, torchrun
from tests.distributed_worker import global_in_batch_inputs
from tests.test_contrast_kinds import KIND_ENV, kind_variants

pytestmark = pytest.mark.distributed


def tiny_recipe(tmp_path: Path, **updates: dict) -> Path:
    tree = {
        "run": {"name": "tiny", "output_dir": str(tmp_path / "results"), "reports_dir": str(tmp_path / "reports"),
                "log_interval": 1, "cost_probe": False},
        "data": {"dataset": "digit_scenes", "root": str(tmp_path / "cache"), "crop_size": 32, "batch_size": 2,
                 "digit_scenes": {"train_images": 16, "val_images": 4, "image_size": 32, "digits_per_image": [1, 2]}},
        "model": {"backbone": "resnet18", "head_channels": 8, "aux_channels": 8},
        "loss": {"contrast": {"kind": "region"}},
        "optim": {"iterations": 3},
    }
    for section, values in updates.items():
        tree[section] = {**tree[section], **values}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def summary(tmp_path: Path, variant: str = "default") -> dict:
    return json.loads((tmp_path / "results" / "tiny" / variant / "summary.json").read_text())


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """What each of two real gloo ranks did in tests/distributed_worker.py."""
    out = tmp_path_factory.mktemp("ranks")
    worker = str(REPO / "tests" / "distributed_worker.py")
    check(subprocess.run(torchrun(worker, str(out)),
                         env=CPU_ENV, capture_output=True, text=True, timeout=600))
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]


def test_ranks_are_real_processes(two_ranks: list[dict]) -> None:
    assert [rank["process_index"] for rank in two_ranks] == [0, 1]
    assert all(rank["world_size"] == 2 for rank in two_ranks)


def test_data_is_sharded_without_overlap(two_ranks: list[dict]) -> None:
    first, second = (set(rank["indices"].tolist()) for rank in two_ranks)
    assert not first & second
    assert first | second == set(range(12))  # 12 images = 3 global batches of 2 x 2, nothing dropped


def test_banks_are_bitwise_identical_and_match_one_process(two_ranks: list[dict]) -> None:
    bank0, bank1 = (rank["bank"] for rank in two_ranks)
    assert all(torch.equal(bank0[name], bank1[name]) for name in bank0)
    # One process fed each global batch (rank 0's images, then rank 1's) pushes the same entries.
    reference = contrast.RegionBank(11, 6, 8)
    for step in range(4):
        features, logits, labels = (torch.cat(parts) for parts in zip(*(rank["inputs"][step] for rank in two_ranks)))
        centers, valid = contrast.region_centers(features, logits, labels, 11, "weighted")
        reference.push(*contrast.region_entries(centers, valid))
    assert all(torch.equal(reference.state_dict()[name], bank0[name]) for name in bank0)
    assert reference.filled.sum() > 0


def test_in_batch_contrast_sees_the_global_batch(two_ranks: list[dict]) -> None:
    for step in range(4):
        features, logits, labels = (torch.cat(parts) for parts in zip(*(rank["inputs"][step] for rank in two_ranks)))
        centers, valid = contrast.region_centers(features, logits, labels, 11, "weighted")
        one_process = contrast.in_batch_contrast_loss(centers, valid, 0.1)
        # each rank holds its queries' share of the global mean; DDP's average of the ranks is that mean
        ranks_mean = sum(rank["in_batch_losses"][step] for rank in two_ranks) / 2
        assert ranks_mean == pytest.approx(one_process.item(), abs=1e-6)


def test_in_batch_gradients_on_two_ranks_equal_one_process(two_ranks: list[dict]) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(8, 8, 1)  # the worker's layer, same seed
    inputs, logits, labels = global_in_batch_inputs()
    centers, valid = contrast.region_centers(layer(inputs), logits, labels, 11, "weighted")
    contrast.in_batch_contrast_loss(centers, valid, 0.1).backward()
    for rank in two_ranks:
        assert torch.allclose(rank["in_batch_gradient"], layer.weight.grad, atol=1e-6, rtol=1e-5)
    assert layer.weight.grad.abs().max() > 1e-4  # the comparison is not between zeros


def test_distributed_evaluation_counts_each_image_once(two_ranks: list[dict], tmp_path: Path) -> None:
    recipe = Recipe.model_validate({
        "data": {"root": str(tmp_path / "cache"), "crop_size": 32, "batch_size": 2,
                 "digit_scenes": {"train_images": 12, "val_images": 5, "image_size": 32, "digits_per_image": [1, 2]}},
        "model": {"backbone": "resnet18", "head_channels": 8, "aux_channels": 8},
    })
    _, val, _ = build_datasets(recipe.data, 0, IMAGENET.pad_colour)
    model = build_model(recipe.model, 11).eval()
    model.load_state_dict(two_ranks[0]["weights"])
    total = torch.zeros(11, 11, dtype=torch.long)
    with torch.no_grad():
        for index in range(len(val)):  # 5 images: 2 ranks x batch 2 pad the last batch with repeats
            item = val[index]
            probs = upsample_to(model(normalize(item["image"][None], torch.float32, IMAGENET)).logits, (32, 32), False)
            total += confusion_matrix(probs.argmax(1)[0], item["label"], 11)
    expected, _ = iou_from_confusion(total)
    assert [rank["miou"] for rank in two_ranks] == [pytest.approx(expected)] * 2


@pytest.mark.slow
def test_torchrun_two_ranks_train_every_kind_to_identical_banks(tmp_path: Path) -> None:
    """One sweep over the whole registry (the entry points' kinds too, and each shardable kind sharded)."""
    recipe = tiny_recipe(tmp_path)
    tree = yaml.safe_load(recipe.read_text())
    tree["sweep"] = {"variants": kind_variants()}
    recipe.write_text(yaml.safe_dump(tree))
    check(subprocess.run(torchrun(RUN, str(recipe), "--no-report"),
                         env=KIND_ENV, capture_output=True, text=True, timeout=1200))
    for variant in kind_variants():
        result = summary(tmp_path, variant)
        assert result["status"] == "ok" and result["world_size"] == 2, variant
        assert result["distributed_type"] == "MULTI_CPU"
        assert result.get("bank_identical_across_ranks") is (True if result["bank_bytes"] else None), variant
        assert [rank["rank"] for rank in result["per_rank"]] == [0, 1]
        assert result["train_images_per_s"] == pytest.approx(4 / result["s_per_iter"])


@pytest.mark.slow
def test_two_node_rendezvous_on_loopback(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    port = free_port()
    nodes = [
        subprocess.Popen(
            torchrun(RUN, str(recipe), "--no-report", nproc=1, extra=(
                "--nnodes=2", f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}")),
            env=CPU_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    result = summary(tmp_path)
    assert result["world_size"] == 2 and result["status"] == "ok"
    assert result["bank_identical_across_ranks"] is True


@pytest.mark.slow
def test_deepspeed_zero2_runs_to_the_end(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "launch" / "deepspeed_zero2_cpu.yaml"), "--main_process_port", str(free_port()),
               RUN, str(recipe), "--no-report"]
    # No ACCELERATE_USE_CPU here: it would override the DeepSpeed launch config (DeepSpeed finds the CPU itself).
    env = {key: value for key, value in CPU_ENV.items() if key != "ACCELERATE_USE_CPU"}
    check(subprocess.run(command, env=env, capture_output=True, text=True, timeout=900))
    result = summary(tmp_path)
    assert result["status"] == "ok"
    assert result["distributed_type"] == "DEEPSPEED" and result["zero_stage"] == 2
    assert result["mixed_precision"] == "bf16"
    assert result["bank_bytes"] > 0 and result["bank_identical_across_ranks"] is True
    # The weights come out of the DeepSpeed engine whole, and rebuild the model they came from.
    folder = tmp_path / "results" / "tiny" / "default"
    assert result["model_sha256"] == file_sha256(folder / "model.safetensors")
    load_model_file(Recipe.model_validate(yaml.safe_load(recipe.read_text())), 11, folder / "model.safetensors")


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_dir():
        assert process.poll() is None, "the run ended before writing a checkpoint"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    settings = {"optim": {"iterations": 24}, "run": {"checkpoint_interval": 4, "log_interval": 1, "deterministic": True}}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for folder in (whole, killed):
        folder.mkdir()
        tree = yaml.safe_load(tiny_recipe(folder).read_text())
        for section, values in settings.items():
            tree[section].update(values)
        (folder / "tiny.yaml").write_text(yaml.safe_dump(tree))
    command = [sys.executable, RUN, "tiny.yaml", "--no-report"]
    check(subprocess.run(command, cwd=whole, env=CPU_ENV, capture_output=True, text=True, timeout=600))

    run = subprocess.Popen(command, cwd=killed, env=CPU_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(killed / "results" / "tiny" / "default" / "checkpoint", run)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not (killed / "results" / "tiny" / "default" / "summary.json").exists()
    check(subprocess.run([*command, "--resume"], cwd=killed, env=CPU_ENV, capture_output=True, text=True, timeout=600))

    expected, resumed = summary(whole), summary(killed)
    assert resumed["miou"] == expected["miou"]
    assert resumed["per_class_iou"] == expected["per_class_iou"]
    assert resumed["bank_digest"] == expected["bank_digest"]
    logs = [(folder / "results" / "tiny" / "default" / "metrics.jsonl").read_text().splitlines() for folder in (whole, killed)]
    losses = [[json.loads(line).get("loss") for line in log] for log in logs]
    assert losses[0] == losses[1]  # every logged loss, before and after the kill, once each


@pytest.mark.slow
def test_sharded_bank_trains_on_two_ranks_with_half_the_bytes(tmp_path: Path) -> None:
    # With the cost probe: its paired steps run on both ranks, and its restore must reload each rank's shard.
    recipe = tiny_recipe(tmp_path, loss={"contrast": {"kind": "region", "bank_layout": "sharded"}},
                         run={"cost_probe": True})
    check(subprocess.run(torchrun(RUN, str(recipe), "--no-report"),
                         env=CPU_ENV, capture_output=True, text=True, timeout=600))
    result = summary(tmp_path)
    assert result["status"] == "ok" and result["world_size"] == 2 and result["bank_size"] == 16
    assert result["bank_identical_across_ranks"] is True  # every rank agrees where the next entries go
    replicated = contrast.region_bank_bytes(11, 16, 8)
    assert result["bank_bytes"] < 0.6 * replicated
    low, high = result["cost_ratio_ci95"]
    assert result["cost_probe_rounds"] >= 20 and low <= result["cost_ratio"] <= high
