"""harness.evaluate: a finished run's saved model, rebuilt and evaluated again, alone or on two ranks."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from harness import evaluate, run
from harness.command import EXIT_DAMAGED
from harness.data.real import LAYOUTS, SUBMISSION_MAPS, decode_files, index_images
from harness.engine.evaluate import predict
from harness.models import build_model
from harness.ops import IMAGENET, normalize
from harness.recipe import Recipe, validate
from harness.results import write_recipe
from harness.saved import load_model_file
from tests.conftest import CPU_ENV, check, seeded, torchrun
from tests.data_fixtures import (
    every_value,
    make_ade20k,
    make_cityscapes,
    make_coco_stuff,
    make_coco_stuff10k,
    write_image,
)
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
    assert result["miou"] == summary["miou"] and result["per_class_iou"] == summary["per_class_iou"]
    assert result["protocol"]["mode"] == "whole" and result["protocol"]["scales"] == [1.0]
    assert result["seconds"] > 0 and result["model_sha256"] == summary["model_sha256"]
    assert (finished_run / "summary.json").read_bytes() == summary_bytes


def test_set_gives_another_protocol(finished_run: Path) -> None:
    overrides = ["--set", "eval.scales=[0.75,1.0]", "--set", "eval.flip=true"]
    assert evaluate.main([str(finished_run), *overrides]) == 0
    result = json.loads((finished_run / "eval-whole_0.75-1.0_flip.json").read_text())
    assert result["protocol"]["scales"] == [0.75, 1.0] and result["protocol"]["flip"] is True
    assert 0.0 <= result["miou"] <= 1.0 and len(result["per_class_iou"]) == 11
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
    assert evaluate.main([str(copy)]) == EXIT_DAMAGED
    assert "SHA-256 differs" in capsys.readouterr().err
    # Without a summary nothing vouches for the weights: refused unless trusted explicitly.
    (copy / "summary.json").unlink()
    (copy / "model.safetensors").write_bytes((finished_run / "model.safetensors").read_bytes())
    assert evaluate.main([str(copy), "--name", "untrusted"]) == 2
    assert "--trust-weights" in capsys.readouterr().err and not (copy / "eval-untrusted.json").exists()
    assert evaluate.main([str(copy), "--name", "trusted", "--trust-weights"]) == 0


@pytest.mark.distributed
def test_two_ranks_reproduce_the_runs_miou(finished_run: Path) -> None:
    command = torchrun("-m", "harness.evaluate", str(finished_run), "--name", "two_ranks")
    check(subprocess.run(command, env=CPU_ENV, capture_output=True, text=True, timeout=600))
    result = json.loads((finished_run / "eval-two_ranks.json").read_text())
    summary = json.loads((finished_run / "summary.json").read_text())
    assert result["world_size"] == 2 and result["miou"] == summary["miou"]


# ---------------------------------------------------------------- test-server exports


def saved_run(folder: Path, dataset: str, root: Path) -> Recipe:
    """A run folder with a recipe for `dataset` at `root` and an untrained tiny model's weights."""
    recipe = validate({
        "data": {"dataset": dataset, "root": str(root), "num_workers": 0},
        "model": {"backbone": "resnet18", "head_channels": 16, "aux_head": False},
    })
    folder.mkdir()
    write_recipe(folder, recipe)
    model = build_model(recipe.model, LAYOUTS[dataset].info.num_classes)
    with torch.no_grad():  # a classifier without bias and with large weights predicts many classes, not one
        model.head.classifier.weight.normal_(0.0, 10.0, generator=seeded(0))
        model.head.classifier.bias.zero_()
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, folder / "model.safetensors")
    return recipe


def prediction(recipe: Recipe, folder: Path, image: Path) -> np.ndarray:
    """The saved model's train-id prediction [H,W] for one image, computed here without the export."""
    model = load_model_file(recipe, LAYOUTS[recipe.data.dataset].info.num_classes, folder / "model.safetensors")
    pixels = torch.from_numpy(np.array(Image.open(image).convert("RGB"))).permute(2, 0, 1)[None]  # [1,3,H,W]
    with torch.no_grad():
        view = normalize(pixels, torch.float32, IMAGENET)
        return predict(model.eval(), view, recipe.eval, align_corners=recipe.model.align_corners).argmax(1)[0].numpy()


def test_coco_stuff10k_exports_the_listed_test_images(tmp_path: Path) -> None:
    root = make_coco_stuff10k(tmp_path, every_value(183))
    table = index_images("coco_stuff10k", root, None)  # default: its test split
    assert [Path(image).name for image in table["image"]] == ["COCO_train2014_000000009000.jpg",
                                                             "COCO_train2014_000000009001.jpg"]
    assert SUBMISSION_MAPS["coco_stuff10k"][[0, 11, 170, 255]].tolist() == [1, 13, 182, 0]


def test_preconditions_of_an_export_are_checked(finished_run: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate.main([str(finished_run), "--export", str(tmp_path / "out")]) == 2
    assert "digit_scenes has no test-server format" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("dataset", "label_map"), [
    ("cityscapes", "cityscapes_label_ids"), ("ade20k", "ade20k"), ("coco_stuff", "coco_stuff_raw"),
    ("coco_stuff10k", "coco_stuff10k_mat"),
])
def test_every_class_survives_the_submission_map_and_the_loaders_map(tmp_path: Path, dataset: str, label_map: str) -> None:
    classes = LAYOUTS[dataset].info.num_classes
    train_ids = (np.arange(8 * 32) % classes).astype(np.uint8).reshape(8, 32)  # [256] -> [8,32], every class
    write_image(tmp_path / "image.png", np.zeros((8, 32, 3), np.uint8))
    write_image(tmp_path / "label.png", SUBMISSION_MAPS[dataset][train_ids])
    _, back = decode_files({"image": str(tmp_path / "image.png"), "label": str(tmp_path / "label.png"),
                            "label_map": label_map})
    np.testing.assert_array_equal(back, train_ids)


@pytest.mark.parametrize(("dataset", "split", "label_map"), [
    ("cityscapes", "test", "cityscapes_label_ids"), ("ade20k", "testing", "ade20k"),
    ("coco_stuff", "test2017", "coco_stuff_raw"),
])
def test_export_round_trips_through_the_loaders_label_map(
    tmp_path: Path, dataset: str, split: str, label_map: str
) -> None:
    if dataset == "cityscapes":
        root = make_cityscapes(tmp_path / "data", every_value(34))
        shutil.copytree(root / "leftImg8bit" / "val", root / "leftImg8bit" / split)  # test images: no gtFine
    elif dataset == "ade20k":
        root = make_ade20k(tmp_path / "data", every_value(151))
        shutil.copytree(root / "images" / "validation", root / "images" / split)
    else:
        root = make_coco_stuff(tmp_path / "data", every_value(182), ".png")
        shutil.copytree(root / "images" / "val2017", root / "images" / split)
    recipe = saved_run(tmp_path / "run", dataset, root)
    out = tmp_path / "export"
    assert evaluate.main([str(tmp_path / "run"), "--export", str(out), "--split", split]) == 2  # no summary
    assert not out.exists()
    assert evaluate.main([str(tmp_path / "run"), "--export", str(out), "--split", split, "--trust-weights"]) == 0
    images = sorted(path for path in root.rglob(f"*/{split}/**/*") if path.suffix in (".png", ".jpg"))
    # What each server expects: the Cityscapes image's own name, else <image stem>.png.
    exported = [out / (image.name if dataset == "cityscapes" else f"{image.stem}.png") for image in images]
    assert sorted(out.iterdir()) == sorted(exported) and len(exported) == 2
    for image, path in zip(images, exported):
        _, train_ids = decode_files({"image": str(image), "label": str(path), "label_map": label_map})
        np.testing.assert_array_equal(train_ids, prediction(recipe, tmp_path / "run", image))
        values = np.unique(np.asarray(Image.open(path)))
        if dataset == "cityscapes":  # the 19 evaluated classes' official label ids
            assert set(values) <= {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33}
        elif dataset == "ade20k":
            assert values.min() >= 1 and values.max() <= 150
