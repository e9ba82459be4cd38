"""The CLI end to end: bad recipes stop early with exit 2; a tiny sweep trains, records and reports."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open

from harness import run
from harness.recipe import RecipeError, expand
from harness.results import file_sha256

REPO = Path(__file__).resolve().parents[1]


def tiny_recipe(tmp_path: Path, **sections: dict) -> dict:
    """A recipe that trains in seconds: 32x32 digit scenes, resnet18 with narrow heads."""
    tree = {
        "run": {
            "name": "tiny", "output_dir": str(tmp_path / "results"), "reports_dir": str(tmp_path / "reports"),
            "log_interval": 1, "cost_probe": False,  # tests/test_probe.py turns it on: its rounds outlast these runs
        },
        "data": {
            "dataset": "digit_scenes", "root": str(tmp_path / "cache"), "crop_size": 32, "batch_size": 2,
            "digit_scenes": {"train_images": 8, "val_images": 4, "image_size": 32, "digits_per_image": [1, 2]},
        },
        "model": {"backbone": "resnet18", "head_channels": 16, "aux_channels": 16},
        "optim": {"iterations": 2},
    }
    for name, values in sections.items():
        tree[name] = {**tree.get(name, {}), **values}
    return tree


def write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.backbone=resnet_does_not_exist", "model.backbone"),
        ("model.output_stride=7", "model.output_stride"),
        ("data.dataset=cityscapes", "data.root"),
        ("loss.contrast.kind=everything", "loss.contrast.kind"),
        ("model.colour=red", "model.colour"),
    ],
)
def test_bad_recipe_exits_2_naming_file_and_key(tmp_path: Path, override: str, key: str) -> None:
    path = write(tmp_path, tiny_recipe(tmp_path))
    done = subprocess.run(
        [sys.executable, str(REPO / "harness" / "run.py"), str(path), "--set", override],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert done.returncode == 2
    assert f"{path}: {key}:" in done.stderr
    assert not (tmp_path / "results").exists()


def test_stride_the_backbone_cannot_give_exits_2(tmp_path: Path) -> None:
    tree = tiny_recipe(tmp_path, model={"backbone": "hrnet_w18_small", "head": "hrnetv2", "output_stride": 8})
    assert run.main([str(write(tmp_path, tree))]) == 2
    assert not (tmp_path / "results").exists()


def test_unknown_only_variant_exits_2(tmp_path: Path) -> None:
    assert run.main([str(write(tmp_path, tiny_recipe(tmp_path))), "--only", "nope"]) == 2


def test_only_and_seed_pick_one_run_of_a_seeded_sweep() -> None:
    tree = {"sweep": {"seeds": [3, 4, 5], "variants": {"ce": {"loss.contrast.kind": "none"}, "region": {}}}}
    variants = expand(tree)
    assert [(v.name, v.seed) for v in run.select(variants, ["region"], [4])] == [("region", 4)]
    assert [(v.name, v.seed) for v in run.select(variants, [], [5])] == [("ce", 5), ("region", 5)]
    with pytest.raises(RecipeError) as error:
        run.select(variants, ["ce"], [9])
    assert error.value.key == "--seed" and "3, 4, 5" in error.value.message


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CE and one RegionContrast variant, trained for two iterations each."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    tree = tiny_recipe(tmp_path, loss={"contrast": {"kind": "region"}})
    tree["sweep"] = {"variants": {"ce": {"loss.contrast.kind": "none"}, "region": {}}}
    assert run.main([str(write(tmp_path, tree)), "--set", "run.name=tiny_sweep"]) == 0
    return tmp_path


def test_sweep_writes_results_for_every_variant(tiny_sweep: Path) -> None:
    root = tiny_sweep / "results" / "tiny_sweep"
    for name, kind in [("ce", "none"), ("region", "region")]:
        summary = json.loads((root / name / "summary.json").read_text())
        assert summary["status"] == "ok" and summary["contrast_kind"] == kind
        assert 0.0 <= summary["miou"] <= 1.0
        assert len(summary["per_class_iou"]) == len(summary["class_names"]) == 11
        assert summary["s_per_iter"] > 0 and summary["train_images_per_s"] > 0
        assert summary["peak_memory_bytes"] > 0 and summary["memory_kind"] == "rss"
        assert summary["params"] > 0 and summary["flops_per_image"] > 0
        assert summary["world_size"] == 1 and summary["distributed_type"] == "NO"
        resolved = yaml.safe_load((root / name / "recipe.yaml").read_text())
        assert resolved["loss"]["contrast"]["kind"] == kind


def test_a_global_batch_accumulates_on_one_process_and_is_recorded(tmp_path: Path) -> None:
    tree = tiny_recipe(tmp_path, data={"global_batch_size": 4}, loss={"contrast": {"kind": "region"}})
    assert run.main([str(write(tmp_path, tree)), "--no-report"]) == 0
    result = tmp_path / "results" / "tiny" / "default"
    summary = json.loads((result / "summary.json").read_text())
    assert (summary["global_batch_size"], summary["per_process_batch"], summary["grad_accum_steps"]) == (4, 2, 2)
    assert summary["status"] == "ok" and summary["train_images_per_s"] > 0
    resolved = yaml.safe_load((result / "recipe.yaml").read_text())
    assert resolved["data"]["global_batch_size"] == 4 and resolved["optim"]["grad_accum_steps"] == 2


def test_region_variant_logs_its_contrast_loss_and_bank(tiny_sweep: Path) -> None:
    root = tiny_sweep / "results" / "tiny_sweep"
    lines = [json.loads(line) for line in (root / "region" / "metrics.jsonl").read_text().splitlines()]
    train = [line for line in lines if line["kind"] == "train"]
    assert [line["iter"] for line in train] == [1, 2]
    assert all(line["loss_contrast"] >= 0 for line in train)
    summary = json.loads((root / "region" / "summary.json").read_text())
    # Unset bank size resolves to one slot per training image (8): 11 classes x 8 x 16-d fp32 keys.
    assert summary["bank_size"] == 8 and summary["bank_bytes"] >= 11 * 8 * 16 * 4
    assert summary["bank_identical_across_ranks"] is True and len(summary["bank_digest"]) == 64
    ce_lines = (root / "ce" / "metrics.jsonl").read_text()
    assert "loss_contrast" not in ce_lines


def test_report_inputs_and_report_are_written(tiny_sweep: Path) -> None:
    variant = tiny_sweep / "results" / "tiny_sweep" / "region"
    centers = np.load(variant / "val_centers.npz")
    assert centers["centers"].shape[1] == 16 and len(centers["labels"]) == len(centers["centers"])
    samples = np.load(variant / "val_samples.npz")
    assert samples["images"].shape == (4, 32, 32, 3) and samples["preds"].shape == (4, 32, 32)
    report = (tiny_sweep / "reports" / "tiny_sweep" / "report.md").read_text()
    assert "| ce" in report and "region" in report


def test_finished_run_leaves_its_weights_without_aux_head_or_checkpoint(tiny_sweep: Path) -> None:
    for name in ("ce", "region"):
        folder = tiny_sweep / "results" / "tiny_sweep" / name
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["model_sha256"] == file_sha256(folder / "model.safetensors")
        with safe_open(folder / "model.safetensors", "pt") as weights:
            names = list(weights.keys())
        assert any(key.startswith("head.") for key in names) and any(key.startswith("backbone.") for key in names)
        assert not any(key.startswith("aux_head.") for key in names)
        assert not (folder / "checkpoint").exists()


def test_keep_checkpoint_keeps_the_final_state_and_save_aux_head_the_aux_head(tmp_path: Path) -> None:
    tree = tiny_recipe(tmp_path, run={"keep_checkpoint": True, "save_aux_head": True})
    assert run.main([str(write(tmp_path, tree)), "--no-report"]) == 0
    folder = tmp_path / "results" / "tiny" / "default"
    assert (folder / "checkpoint").is_dir() and not (folder / "checkpoint.old").exists()
    with safe_open(folder / "model.safetensors", "pt") as weights:
        assert any(key.startswith("aux_head.") for key in weights.keys())
    progress = torch.load(folder / "checkpoint" / "custom_checkpoint_0.pkl", weights_only=False)
    assert progress["iteration"] == 2  # the finished state, not an earlier one


def test_tensorboard_events_hold_the_logged_numbers(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tree = tiny_recipe(tmp_path, run={"trackers": ["tensorboard"]}, loss={"contrast": {"kind": "region"}})
    assert run.main([str(write(tmp_path, tree)), "--no-report"]) == 0
    folder = tmp_path / "results" / "tiny" / "default"
    events = EventAccumulator(str(folder / "trackers" / "default"))
    events.Reload()
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    for kind, name in [("train", "loss"), ("train", "loss_contrast"), ("train", "lr"), ("train", "step_time"),
                       ("train", "contrast_ms"), ("eval", "miou")]:
        expected = [(record["iter"], record[name]) for record in records if record["kind"] == kind]
        found = [(event.step, event.value) for event in events.Scalars(f"{kind}/{name}")]
        assert [step for step, _ in found] == [step for step, _ in expected] and expected
        assert [value for _, value in found] == pytest.approx([value for _, value in expected], rel=1e-6)


def test_unknown_or_unreachable_trackers_exit_2_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.engine import trackers

    path = write(tmp_path, tiny_recipe(tmp_path))
    assert run.main([str(path), "--set", "run.trackers=[notebook]"]) == 2
    assert "run.trackers: Accelerate has no tracker 'notebook'" in capsys.readouterr().err
    monkeypatch.setattr(trackers, "get_available_trackers", lambda: ["tensorboard", "wandb"])
    monkeypatch.setattr(trackers, "reachable", lambda host: False)  # this machine is offline anyway
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert run.main([str(path), "--set", "run.trackers=[wandb]"]) == 2
    assert "api.wandb.ai, which this machine cannot reach; set WANDB_MODE=offline" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
    monkeypatch.setenv("WANDB_MODE", "offline")
    trackers.check_trackers(("wandb",))  # logs locally: nothing to reach


def test_failing_variant_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a state dict")
    tree = tiny_recipe(tmp_path)
    tree["sweep"] = {"variants": {"broken": {"model.weights": str(broken)}, "fine": {}}}
    assert run.main([str(write(tmp_path, tree)), "--no-report"]) == 1
    root = tmp_path / "results" / "tiny"
    failed = json.loads((root / "broken" / "summary.json").read_text())
    assert failed["status"] == "failed" and str(broken) in failed["error"]
    message = failed["error"].split(": ", 1)[1]  # the error's own message, without its type
    assert isinstance(failed["traceback"], str)
    assert "Traceback" in failed["traceback"] and message in failed["traceback"]
    assert json.loads((root / "fine" / "summary.json").read_text())["status"] == "ok"


def test_nan_loss_stops_the_variant_with_a_clear_message(tmp_path: Path) -> None:
    tree = tiny_recipe(tmp_path, optim={"iterations": 6, "lr": 1.0e12})
    assert run.main([str(write(tmp_path, tree)), "--no-report"]) == 1
    failed = json.loads((tmp_path / "results" / "tiny" / "default" / "summary.json").read_text())
    assert failed["status"] == "failed" and "NonFinite" in failed["error"]
