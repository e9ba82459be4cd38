"""Datasets, label mappings, caching and transforms of harness.data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from PIL import Image

from harness import data, ops, pretrain
from harness.data import digit_scenes, transforms
from harness.data.real import read_label
from harness.engine import make_context
from harness.engine.setup import make_eval_loader, make_loaders
from harness.labels import IGNORE_INDEX
from harness.models import image_statistics
from harness.ops import IMAGENET
from harness.recipe import (
    AugmentConfig,
    DataConfig,
    DigitScenesConfig,
    ModelConfig,
    Recipe,
    RecipeError,
    validate,
)
from tests.data_fixtures import (
    HEIGHT,
    WIDTH,
    every_value,
    make_ade20k,
    make_cityscapes,
    make_coco_stuff,
    make_coco_stuff10k,
    write_image,
)

Scenes = tuple[data.SegmentationDataset, data.SegmentationDataset]
SMALL = DigitScenesConfig(train_images=60, val_images=30, test_images=20, image_size=64, digits_per_image=(2, 4))

# The official Cityscapes labelId -> trainId table (cityscapesscripts' labels.py).
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


def small_config(root: Path, **changes: object) -> DataConfig:
    """A digit-scenes DataConfig small enough for the CPU, cached under `root`."""
    return DataConfig(root=root, digit_scenes=SMALL.model_copy(update=changes))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Scenes:
    """Train and val digit scenes of the small config, seed 0."""
    train, val, _ = data.build_datasets(small_config(tmp_path_factory.mktemp("digits")), seed=0, pad_colour=IMAGENET.pad_colour)
    return train, val


# ---------------------------------------------------------------- digit scenes


def test_digit_scenes_are_deterministic_per_seed() -> None:
    first, again, other = (digit_scenes.build_digit_scenes(SMALL, seed).with_format("numpy") for seed in (0, 0, 1))
    for split in ("train", "val"):
        assert np.array_equal(first[split]["image"], again[split]["image"])
        assert np.array_equal(first[split]["label"], again[split]["label"])
        assert not np.array_equal(first[split]["image"], other[split]["image"])


def used_samples(split: data.SegmentationDataset) -> set[int]:
    """The sklearn digit samples a digit-scenes split draws."""
    return {sample for row in split.table["digit_samples"] for sample in row.tolist()}


def test_train_val_and_test_use_disjoint_sklearn_samples(tmp_path: Path) -> None:
    cfg = small_config(tmp_path)
    train, val, _ = data.build_datasets(cfg, seed=0, pad_colour=IMAGENET.pad_colour)
    _, test, _ = data.build_datasets(cfg, seed=0, pad_colour=IMAGENET.pad_colour, eval_split="test")
    splits = [used_samples(split) for split in (train, val, test)]
    assert all(splits) and len(test) == SMALL.test_images
    assert not splits[0] & splits[1] and not splits[0] & splits[2] and not splits[1] & splits[2]
    pools = digit_scenes.digit_pools(seed=0, num_samples=1797)
    assert all(used <= set(pool.tolist()) for used, pool in zip(splits, pools))
    # Pretraining draws its patches from the train pool only, so the stand-in never saw a val or test digit.
    patches = digit_scenes.build_digit_scenes(pretrain.PATCHES.model_copy(update={"train_images": 200}), 0)
    assert {s for row in patches["train"]["digit_samples"] for s in row} <= set(pools[0].tolist())


def test_the_train_pool_is_the_one_before_the_test_split() -> None:
    """The test split comes out of the old val pool: training scenes and the stand-in stay as they were."""
    order = np.random.default_rng([0, 0]).permutation(1797)
    train, val, test = digit_scenes.digit_pools(seed=0, num_samples=1797)
    assert np.array_equal(train, np.sort(order[:1797 - int(0.2 * 1797)]))
    assert np.array_equal(np.sort(np.concatenate([val, test])), np.sort(order[1797 - int(0.2 * 1797):]))
    assert abs(len(val) - len(test)) <= 1


def test_a_test_split_is_digit_scenes_only_and_scored_once() -> None:
    with pytest.raises(RecipeError) as error:
        validate({"eval": {"split": "test"}, "data": {"dataset": "cityscapes", "root": "x"}})
    assert error.value.key == "eval.split" and "--export" in error.value.message
    with pytest.raises(RecipeError) as error:
        validate({"eval": {"split": "test", "interval": 100}})
    assert error.value.key == "eval.interval"
    assert validate({"eval": {"split": "test"}}).eval.split == "test"


def test_digit_items_have_documented_types_and_cover_every_class(scenes: Scenes) -> None:
    train, val = scenes
    assert (len(train), len(val)) == (60, 30)
    for item, size in ((val[7], 64), (train[7], DataConfig().crop_size)):
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, size, size)
        assert item["label"].dtype == torch.uint8 and item["label"].shape == (size, size)
        assert item["index"] == 7
    assert np.array_equal(val[7]["image"].permute(1, 2, 0).numpy(), val.table[7]["image"])  # [3,H,W] -> [H,W,3]
    assert np.unique(train.table["label"]).tolist() == list(range(11))


def test_digits_stand_out_from_their_background(scenes: Scenes) -> None:
    """A per-image two-colour nearest-mean rule already separates digit ink from background."""
    _, val = scenes
    for index in range(len(val)):
        pixels = torch.from_numpy(val.table[index]["image"].astype(np.float32)).flatten(0, 1)  # [H,W,3] -> [HW,3]
        is_digit = torch.from_numpy(val.table[index]["label"]).flatten() > 0  # [H,W] -> [HW]
        means = torch.stack([pixels[~is_digit].mean(0), pixels[is_digit].mean(0)])
        nearest = torch.cdist(pixels, means).argmin(1).bool()
        assert (nearest == is_digit).float().mean() > 0.9


def old_normalisation(image: np.ndarray) -> torch.Tensor:
    """The pre-uint8 pipeline's dataset-side normalisation of a uint8 [H,W,3] image, to float32 [3,H,W]."""
    mean, std = torch.tensor(IMAGENET.mean), torch.tensor(IMAGENET.std)
    pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 255  # [H,W,3] -> [3,H,W]
    return (pixels - mean.view(3, 1, 1)) / std.view(3, 1, 1)  # [3] -> [3,1,1]


def test_normalize_matches_the_old_normalisation(scenes: Scenes) -> None:
    _, val = scenes
    batch = data.collate([val[3], val[4]], IMAGENET.pad_colour)
    normalised = ops.normalize(batch["image"], torch.float32, IMAGENET)
    assert normalised.dtype == torch.float32 and normalised.shape == (2, 3, 64, 64)
    for row, image in zip((3, 4), normalised):
        assert torch.equal(image, old_normalisation(val.table[row]["image"]))
    half = ops.normalize(batch["image"], torch.bfloat16, IMAGENET)
    assert half.dtype == torch.bfloat16 and torch.allclose(half.float(), normalised, atol=2e-2)
    # Padding with the mean colour is padding with the old 0, within half an intensity level.
    mean_colour = torch.tensor(IMAGENET.pad_colour, dtype=torch.uint8).view(1, 3, 1, 1)  # [3] -> [1,3,1,1]
    assert ops.normalize(mean_colour, torch.float32, IMAGENET).abs().max() <= 0.5 / 255 / min(IMAGENET.std)


def test_digit_scenes_cache_is_reused_and_keyed_by_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = small_config(tmp_path, seed=3)
    _, val, _ = data.build_datasets(cfg, seed=0, pad_colour=IMAGENET.pad_colour)
    assert (tmp_path / digit_scenes.digit_scenes_key(cfg.digit_scenes, 3)).is_dir()

    def refuse(*_: object) -> None:
        raise AssertionError("rebuilt although a cache exists")

    monkeypatch.setattr(digit_scenes, "build_digit_scenes", refuse)
    _, cached_val, _ = data.build_datasets(cfg, seed=0, pad_colour=IMAGENET.pad_colour)
    assert torch.equal(cached_val[5]["label"], val[5]["label"])
    # The run's seed (a sweep's seeds) augments differently but draws the same scenes.
    _, same_scenes, _ = data.build_datasets(cfg, seed=4, pad_colour=IMAGENET.pad_colour)
    assert torch.equal(same_scenes[5]["label"], val[5]["label"])
    with pytest.raises(AssertionError, match="rebuilt"):
        data.build_datasets(small_config(tmp_path, val_images=31, seed=3), seed=0, pad_colour=IMAGENET.pad_colour)
    with pytest.raises(AssertionError, match="rebuilt"):
        data.build_datasets(small_config(tmp_path, seed=4), seed=0, pad_colour=IMAGENET.pad_colour)


def test_digit_scenes_cache_defaults_to_dot_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = DataConfig(digit_scenes=SMALL.model_copy(update={"train_images": 4, "val_images": 2}))
    train, _, info = data.build_datasets(cfg, seed=0, pad_colour=IMAGENET.pad_colour)
    assert (tmp_path / ".cache" / "digit_scenes" / digit_scenes.digit_scenes_key(cfg.digit_scenes, 0)).is_dir()
    assert len(train) == 4 and info.num_classes == 11 and info.class_names[:2] == ["background", "0"]


def test_digit_size_follows_digit_scale(tmp_path: Path) -> None:
    large = small_config(tmp_path, digit_scale=(0.5, 0.5), digits_per_image=(1, 1))
    train, _, _ = data.build_datasets(large, seed=0, pad_colour=IMAGENET.pad_colour)
    extents = []
    for row in range(5):
        rows, cols = np.nonzero(train.table[row]["label"])
        extents.append(max(rows.max() - rows.min(), cols.max() - cols.min()) + 1)
    # One 32 px digit per 64 px image; its label region spans at most 32 px (plus a halo pixel per side).
    assert 16 <= min(extents) and max(extents) <= 34


# ---------------------------------------------------------------- real dataset layouts


def real_config(name: str, root: Path | None, crop_size: int = 24) -> DataConfig:
    """A DataConfig reading the fixture tree of `name` at `root`."""
    return DataConfig(dataset=name, root=root, crop_size=crop_size)


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path: Path) -> None:
    raw = every_value(34)
    train, val, info = data.build_datasets(real_config("cityscapes", make_cityscapes(tmp_path, raw)), seed=0, pad_colour=IMAGENET.pad_colour)
    assert (len(train), len(val), info.num_classes) == (2, 2, 19)
    assert info.class_names[13] == "car" and info.palette[0] == (128, 64, 128)
    label = val[1]["label"]
    expected = np.vectorize(lambda value: CITYSCAPES_TRAIN_IDS.get(int(value), 255))(raw)
    assert np.array_equal(label.numpy(), expected)
    assert label[raw == 26].eq(13).all() and label[raw == 0].eq(255).all()
    assert val[1]["image"].shape == (3, HEIGHT, WIDTH)


def test_cityscapes_prefers_label_train_ids_when_present(tmp_path: Path) -> None:
    root = make_cityscapes(tmp_path, every_value(34), per_split=1)
    train_ids = every_value(19)
    write_image(root / "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelTrainIds.png", train_ids)
    _, val, _ = data.build_datasets(real_config("cityscapes", root), seed=0, pad_colour=IMAGENET.pad_colour)
    assert np.array_equal(val[0]["label"].numpy(), train_ids)


def test_ade20k_shifts_labels_and_accepts_either_root(tmp_path: Path) -> None:
    raw = every_value(152)
    base = make_ade20k(tmp_path, raw)
    expected = np.where((raw >= 1) & (raw <= 150), raw.astype(np.int64) - 1, 255)
    for root in (tmp_path, base):
        train, val, info = data.build_datasets(real_config("ade20k", root), seed=0, pad_colour=IMAGENET.pad_colour)
        assert (len(train), len(val), info.num_classes, info.class_names[0]) == (2, 2, 150, "wall")
        assert np.array_equal(val[0]["label"].numpy(), expected)
    assert "ADE_val_00000002.jpg" in val.table[1]["image"]


def test_coco_stuff_raw_ids_skip_the_unused_things(tmp_path: Path) -> None:
    raw = every_value(183)
    raw[0, :2] = 255
    _, val, info = data.build_datasets(real_config("coco_stuff", make_coco_stuff(tmp_path, raw, ".png")), seed=0, pad_colour=IMAGENET.pad_colour)
    label = val[0]["label"]
    assert info.num_classes == 171 and info.class_names[11] == "stop sign"
    spot_checks = {0: 0, 10: 10, 11: 255, 12: 11, 90: 255, 91: 80, 181: 170, 182: 255, 255: 255}
    for raw_id, train_id in spot_checks.items():
        assert label[torch.from_numpy(raw == raw_id)].eq(train_id).all(), raw_id
    assert label[label != 255].unique().tolist() == list(range(171))


def test_coco_stuff_prefers_label_train_ids(tmp_path: Path) -> None:
    train_ids = every_value(171)
    root = make_coco_stuff(tmp_path, train_ids, "_labelTrainIds.png")
    train, val, _ = data.build_datasets(real_config("coco_stuff", root), seed=0, pad_colour=IMAGENET.pad_colour)
    assert np.array_equal(val[1]["label"].numpy(), train_ids)
    assert train[0]["image"].shape == (3, 24, 24) and train[0]["label"].dtype == torch.uint8


def test_coco_stuff10k_reads_mat_labels_and_the_image_lists(tmp_path: Path) -> None:
    raw = every_value(183)  # S: 0 = unlabeled, 1-182 = COCO-Stuff ids, the 11 unused ones never labelled
    train, val, info = data.build_datasets(real_config("coco_stuff10k", make_coco_stuff10k(tmp_path, raw)), seed=0, pad_colour=IMAGENET.pad_colour)
    assert (len(train), len(val), info.name, info.num_classes) == (3, 2, "coco_stuff10k", 171)
    assert [Path(row["image"]).name for row in val.table] == ["COCO_train2014_000000009000.jpg",
                                                             "COCO_train2014_000000009001.jpg"]
    label = val[0]["label"]
    # raw id r is the 164k id r - 1: 1 -> person (0), 12 -> 164k's unused 11 (ignored), 13 -> stop sign (11)
    spot_checks = {0: 255, 1: 0, 11: 10, 12: 255, 13: 11, 91: 255, 92: 80, 182: 170}
    for raw_id, train_id in spot_checks.items():
        assert label[torch.from_numpy(raw == raw_id)].eq(train_id).all(), raw_id
    assert label[label != 255].unique().tolist() == list(range(171))
    assert info.class_names[11] == "stop sign"


def test_coco_stuff10k_names_a_listed_image_that_is_missing(tmp_path: Path) -> None:
    root = make_coco_stuff10k(tmp_path, every_value(183))
    missing = root / "images" / "COCO_train2014_000000000078.jpg"
    missing.unlink()
    with pytest.raises(RecipeError, match=str(missing)) as error:
        data.build_datasets(real_config("coco_stuff10k", root), seed=0, pad_colour=IMAGENET.pad_colour)
    assert error.value.key == "data.root"


def test_a_mat_file_without_a_label_matrix_is_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.mat"
    scipy.io.savemat(path, {"names": np.array(["x"], dtype=object)})
    with pytest.raises(ValueError, match="broken.mat"):
        read_label(path)


@pytest.mark.parametrize("name", ["cityscapes", "ade20k", "coco_stuff", "coco_stuff10k"])
def test_missing_or_empty_root_names_data_root(tmp_path: Path, name: str) -> None:
    for root in (None, tmp_path / "absent", tmp_path):
        with pytest.raises(RecipeError) as error:
            data.build_datasets(real_config(name, root), seed=0, pad_colour=IMAGENET.pad_colour)
        assert error.value.key == "data.root" and str(root) in error.value.message


def test_missing_label_file_is_named(tmp_path: Path) -> None:
    base = make_ade20k(tmp_path, every_value(151))
    missing = base / "annotations" / "training" / "ADE_train_00000002.png"
    missing.unlink()
    with pytest.raises(RecipeError, match=str(missing)) as error:
        data.build_datasets(real_config("ade20k", tmp_path), seed=0, pad_colour=IMAGENET.pad_colour)
    assert error.value.key == "data.root"


# ---------------------------------------------------------------- transforms


def column_labels(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 label [H,W] whose value is its column, and an image [H,W,3] whose red channel repeats it."""
    label = np.broadcast_to(np.arange(width, dtype=np.uint8), (height, width)).copy()
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[..., 0] = label
    return image, label


def smooth_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A uint8 [H,W,3] picture of smooth colour blobs with a little noise, like a photograph."""
    rng = np.random.default_rng(seed)
    blobs = torch.from_numpy(rng.uniform(0, 255, (1, 3, 6, 8)))
    smooth = F.interpolate(blobs, size=(height, width), mode="bicubic")[0].permute(1, 2, 0).numpy()  # -> [H,W,3]
    return (smooth + rng.normal(0, 8, (height, width, 3))).clip(0, 255).round().astype(np.uint8)


def random_labels(height: int, width: int, seed: int) -> np.ndarray:
    """A uint8 label [H,W] of random classes: every pixel on an edge."""
    return np.random.default_rng(seed).integers(0, 19, (height, width), dtype=np.uint8)


def whole_image_window(
    image: np.ndarray, label: np.ndarray, window: transforms.Window
) -> tuple[torch.Tensor, torch.Tensor]:
    """The old way to the window's pixels: resize the whole image (float, antialiased) and label, then slice."""
    pixels = torch.from_numpy(image).permute(2, 0, 1).float()[None]  # [H,W,3] -> [1,3,H,W]
    labels = torch.from_numpy(label).float()[None, None]  # [H,W] -> [1,1,H,W]
    pixels = F.interpolate(pixels, size=window.scaled, mode="bilinear", antialias=True)[0]  # -> [3,h,w]
    labels = F.interpolate(labels, size=window.scaled, mode="nearest-exact")[0, 0].long()  # -> [h,w]
    rows = slice(window.top, window.top + window.height)
    cols = slice(window.left, window.left + window.width)
    return pixels[:, rows, cols], labels[rows, cols]


# Odd image sizes: no scaled pixel's centre lies exactly on a source pixel edge, a tie that
# resize_window breaks towards the later pixel and torch's float32 arithmetic either way.


@pytest.mark.parametrize(("size", "factor"), [((480, 640), 512 / 480), ((640, 480), 512 / 480),
                                              ((512, 4096), 0.5), ((1024, 2048), 0.5)])
def test_base_size_fits_the_image_into_long_by_short_keeping_its_aspect(size: tuple[int, int], factor: float) -> None:
    assert transforms.base_factor(size, (2048, 512)) == pytest.approx(factor)
    assert transforms.base_factor(size, None) == 1.0


def test_the_scale_jitter_multiplies_the_base_size() -> None:
    label = np.zeros((480, 640), np.uint8)  # an ADE20K-sized image: 640 x 480 would be mostly padding at 520
    transform = transforms.TrainTransform(520, (2.0, 2.0), flip=False, pad_colour=IMAGENET.pad_colour, base_size=(2048, 512))
    base = transforms.base_factor(label.shape, (2048, 512))
    window = transforms.random_window(label.shape, 520, (2.0, 2.0), torch.Generator().manual_seed(0), base)
    assert window.scaled == (1024, 1365)  # 480 x 640 fitted to short side 512, then doubled
    pixels, labels = transform(np.zeros((480, 640, 3), np.uint8), label, torch.Generator())
    assert tuple(labels.shape) == (520, 520) and labels.eq(0).all()  # a full crop, no padding (255) in it
    unbased = transforms.TrainTransform(520, (0.5, 0.5), flip=False, pad_colour=IMAGENET.pad_colour)(
        np.zeros((480, 640, 3), np.uint8), label, torch.Generator()
    )[1]
    assert unbased.eq(IGNORE_INDEX).float().mean() > 0.5  # without a base, half scale is mostly padding


@pytest.mark.parametrize("factor", [0.5, 0.61, 1.0, 1.37, 2.0])
def test_window_resize_equals_the_window_of_the_whole_image_resized(factor: float) -> None:
    image, label = smooth_photo(89, 141), random_labels(89, 141, seed=1)
    for seed in range(6):
        window = transforms.random_window(label.shape, 48, (factor, factor), torch.Generator().manual_seed(seed))
        pixels, labels = transforms.to_tensors(*transforms.resize_window(image, label, window))
        expected_pixels, expected_labels = whole_image_window(image, label, window)
        assert torch.equal(labels.long(), expected_labels) and (pixels.float() - expected_pixels).abs().max() <= 1.5


def old_train_transform(
    image: np.ndarray, label: np.ndarray, transform: transforms.TrainTransform, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-uint8 training transform on unnormalised floats: scale the whole image, pad, crop, flip."""
    crop, (low, high) = transform.crop_size, transform.scale
    factor = low + (high - low) * torch.rand((), generator=generator).item()
    size = [max(1, round(side * factor)) for side in label.shape]
    pixels = torch.from_numpy(image).permute(2, 0, 1).float()[None]  # [H,W,3] -> [1,3,H,W]
    pixels = F.interpolate(pixels, size=size, mode="bilinear", antialias=True)[0]  # -> [3,h,w]
    labels = torch.from_numpy(label).float()[None, None]  # [H,W] -> [1,1,H,W]
    labels = F.interpolate(labels, size=size, mode="nearest-exact")[0, 0].long()  # -> [h,w]
    mean_colour = torch.tensor(IMAGENET.pad_colour, dtype=torch.float32).view(3, 1, 1)  # [3] -> [3,1,1]
    padded = mean_colour.repeat(1, max(size[0], crop), max(size[1], crop))
    padded[:, : size[0], : size[1]] = pixels
    padded_labels = torch.full(padded.shape[1:], 255, dtype=torch.long)
    padded_labels[: size[0], : size[1]] = labels
    top = int(torch.randint(padded.shape[1] - crop + 1, (), generator=generator))
    left = int(torch.randint(padded.shape[2] - crop + 1, (), generator=generator))
    rows, cols = slice(top, top + crop), slice(left, left + crop)
    pixels, labels = padded[:, rows, cols], padded_labels[rows, cols]
    if transform.flip and torch.rand((), generator=generator) < 0.5:
        pixels, labels = pixels.flip(-1), labels.flip(-1)
    return pixels, labels


def test_train_transform_draws_what_the_old_one_drew() -> None:
    """Same generator, same scale, window and flip as the whole-image transform: only the resampling cost changed."""
    image, label = smooth_photo(61, 101), random_labels(61, 101, seed=2)
    transform = transforms.TrainTransform(56, (0.5, 2.0), flip=True, pad_colour=IMAGENET.pad_colour)
    for seed in range(12):
        pixels, labels = transform(image, label, torch.Generator().manual_seed(seed))
        old = old_train_transform(image, label, transform, torch.Generator().manual_seed(seed))
        assert pixels.dtype == torch.uint8 and labels.dtype == torch.uint8  # int64 only on the device
        assert torch.equal(labels.long(), old[1]) and (pixels.float() - old[0]).abs().max() <= 1.5


def whole_image_transform(
    image: np.ndarray, label: np.ndarray, transform: transforms.TrainTransform, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The transform before the prepared store: PIL's box resize over the whole decoded image, then pad, flip.

    Its own draws, in the order the training transform has always made them: scale, top, left, flip.
    """
    crop, (low, high) = transform.crop_size, transform.scale
    height, width = label.shape
    jitter = low + (high - low) * torch.rand((), generator=generator).item()
    factor = transforms.base_factor(label.shape, transform.base_size) * jitter
    scaled_height, scaled_width = max(1, round(height * factor)), max(1, round(width * factor))
    top = int(torch.randint(max(scaled_height, crop) - crop + 1, (), generator=generator))
    left = int(torch.randint(max(scaled_width, crop) - crop + 1, (), generator=generator))
    rows, cols = min(crop, scaled_height - top), min(crop, scaled_width - left)
    box = (left * width / scaled_width, top * height / scaled_height,
           (left + cols) * width / scaled_width, (top + rows) * height / scaled_height)
    pixels = Image.fromarray(image).resize((cols, rows), Image.Resampling.BILINEAR, box=box)
    source_rows = (2 * np.arange(top, top + rows) + 1) * height // (2 * scaled_height)
    source_cols = (2 * np.arange(left, left + cols) + 1) * width // (2 * scaled_width)
    image_tensor = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)  # [h,w,3] -> [3,h,w]
    label_tensor = torch.from_numpy(label[source_rows[:, None], source_cols].astype(np.int64))
    image_tensor, label_tensor = transforms.pad_to(image_tensor, label_tensor, crop, crop, transform.pad_colour)
    if transform.flip and torch.rand((), generator=generator) < 0.5:
        image_tensor, label_tensor = image_tensor.flip(-1), label_tensor.flip(-1)
    return image_tensor, label_tensor


@pytest.mark.parametrize(("size", "crop", "scale", "base_size", "seeds"), [
    ((1024, 2048), 769, (0.5, 2.0), None, 6),  # Cityscapes
    ((61, 101), 56, (0.5, 2.0), None, 40),
    ((200, 300), 16, (0.1, 0.4), None, 40),  # shrinking by 2.5-10: the filter reaches pixels far past the window
    ((480, 640), 96, (0.5, 2.0), (2048, 512), 20),  # ADE20K, fitted into its base size first
])
def test_the_window_of_the_source_gives_what_the_whole_image_gave(
    size: tuple[int, int], crop: int, scale: tuple[float, float], base_size: tuple[int, int] | None, seeds: int
) -> None:
    """Same draws, same windows and flips, and the same pixels as resizing the whole image: reading only the
    source pixels a window's filter reaches (a prepared store's view) changes nothing but the cost."""
    rng = np.random.default_rng(size[0])
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)  # noise: any pixel the filter misses would show
    label = rng.integers(0, 19, size, dtype=np.uint8)
    transform = transforms.TrainTransform(crop, scale, flip=True, pad_colour=IMAGENET.pad_colour, base_size=base_size)
    for seed in range(seeds):
        pixels, labels = transform(image, label, torch.Generator().manual_seed(seed))
        expected = whole_image_transform(image, label, transform, torch.Generator().manual_seed(seed))
        assert torch.equal(pixels, expected[0]) and torch.equal(labels.long(), expected[1])


def test_small_images_are_padded_with_ignore_and_the_mean_colour() -> None:
    image, label = np.full((40, 50, 3), 9, np.uint8), random_labels(40, 50, seed=0)
    transform = transforms.TrainTransform(64, (0.5, 0.5), flip=False, pad_colour=IMAGENET.pad_colour)
    out_image, out_label = transform(image, label, torch.Generator().manual_seed(0))
    assert out_image.shape == (3, 64, 64) and out_label.shape == (64, 64)
    assert out_label[20:].eq(255).all() and out_label[:, 25:].eq(255).all() and out_label[:20, :25].lt(19).all()
    mean_colour = torch.tensor(IMAGENET.pad_colour, dtype=torch.uint8).view(3, 1)  # [3] -> [3,1]
    assert out_image[:, 20:].flatten(1).eq(mean_colour).all() and out_image[:, :20, :25].eq(9).all()


def test_crop_keeps_image_and_label_aligned_and_flips_both() -> None:
    image, label = column_labels(48, 48)
    transform = transforms.TrainTransform(32, (1.0, 1.0), flip=True, pad_colour=IMAGENET.pad_colour)
    directions = set()
    for seed in range(16):
        out_image, out_label = transform(image, label, torch.Generator().manual_seed(seed))
        assert out_label.shape == (32, 32) and torch.equal(out_image[0], out_label)
        out_label = out_label.long()
        directions.add(int(torch.sign(out_label[0, 1] - out_label[0, 0])))
    assert directions == {1, -1}


def test_colour_coded_labels_stay_aligned_under_scale_crop_and_flip() -> None:
    """Blocks whose colour names their class: away from block edges, every pixel's colour still names its label."""
    palette = np.random.default_rng(3).integers(0, 256, (19, 3), dtype=np.uint8)
    label = random_labels(6, 10, seed=4).repeat(12, 0).repeat(12, 1)  # [6,10] -> [72,120]
    image = palette[label]  # [72,120] -> [72,120,3]
    transform = transforms.TrainTransform(64, (0.5, 2.0), flip=True, pad_colour=IMAGENET.pad_colour)
    for seed in range(24):
        out_image, out_label = transform(image, label, torch.Generator().manual_seed(seed))
        out_label = out_label.long()
        # Pixels whose 5x5 neighbourhood holds one label lie inside a block, out of the filter's reach of an
        # edge; the crop's outer 2 pixels may see an edge beyond the crop.
        labels = out_label[None, None].float()  # [H,W] -> [1,1,H,W]
        uniform = (F.max_pool2d(labels, 5, 1) == -F.max_pool2d(-labels, 5, 1))[0, 0]  # -> [H-4,W-4]
        inside = F.pad(uniform, (2, 2, 2, 2)) & (out_label != 255)
        expected = torch.from_numpy(palette).long()[out_label[inside]]  # [P] -> [P,3]
        assert inside.sum() > 100 and (out_image.permute(1, 2, 0)[inside].long() - expected).abs().max() <= 2


def test_no_flip_when_disabled() -> None:
    image, label = column_labels(32, 40)
    transform = transforms.TrainTransform(32, (0.8, 1.5), flip=False, pad_colour=IMAGENET.pad_colour)
    for seed in range(8):
        _, out_label = transform(image, label, torch.Generator().manual_seed(seed))
        valid = out_label[0][out_label[0] != 255].long()
        assert (valid.diff() >= 0).all()


def test_train_transform_is_reproducible_from_its_generator() -> None:
    image, label = smooth_photo(50, 60), random_labels(50, 60, seed=0)
    transform = transforms.TrainTransform(32, (0.5, 2.0), flip=True, pad_colour=IMAGENET.pad_colour)
    first, again, other = (transform(image, label, torch.Generator().manual_seed(s)) for s in (7, 7, 8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_training_items_are_crops_and_validation_items_whole(tmp_path: Path) -> None:
    tiny = SMALL.model_copy(update={"train_images": 3, "val_images": 2})
    cfg = DataConfig(root=tmp_path, crop_size=40, augment=AugmentConfig(scale=(0.5, 1.5)), digit_scenes=tiny)
    train, val, _ = data.build_datasets(cfg, seed=0, pad_colour=IMAGENET.pad_colour)
    assert train[2]["image"].shape == (3, 40, 40) and train[2]["label"].shape == (40, 40)
    # Augmentation is a function of (seed, epoch, index) alone: torch's global RNG plays no part.
    torch.manual_seed(11)
    first = train[2]["image"]
    torch.manual_seed(12)
    assert torch.equal(first, train[2]["image"])
    train.set_epoch(1)
    assert not torch.equal(first, train[2]["image"])
    train.set_epoch(0)
    assert torch.equal(first, train[2]["image"])
    assert val[1]["image"].shape == (3, 64, 64)
    assert np.array_equal(val[1]["label"].numpy(), val.table[1]["label"])


def test_collate_pads_mixed_sizes() -> None:
    images = torch.full((3, 20, 30), 7, dtype=torch.uint8), torch.full((3, 25, 10), 9, dtype=torch.uint8)
    labels = torch.zeros(20, 30, dtype=torch.long), torch.ones(25, 10, dtype=torch.long)
    items = [{"image": image, "label": label, "index": index} for image, label, index in zip(images, labels, (4, 9))]
    batch = data.collate(items, IMAGENET.pad_colour)
    assert batch["image"].shape == (2, 3, 25, 30) and batch["label"].shape == (2, 25, 30)
    assert batch["image"].dtype == torch.uint8 and batch["image"][1, :, :, :10].eq(9).all()
    assert batch["image"][0, :, 20:].flatten(1).eq(torch.tensor(IMAGENET.pad_colour).view(3, 1)).all()
    assert batch["label"][0, 20:].eq(255).all() and batch["label"][1, :, 10:].eq(255).all()
    assert batch["index"].tolist() == [4, 9]


@pytest.mark.parametrize(("backbone", "mean"), [("resnet50.tv_in1k", IMAGENET.mean), ("hrnet_w48.ms_in1k", IMAGENET.mean),
                                               ("inception_v3.tv_in1k", (0.5, 0.5, 0.5)),
                                               ("vit_small_patch16_224", (0.5, 0.5, 0.5))])
def test_image_statistics_come_from_the_backbones_pretrained_config(backbone: str, mean: tuple[float, ...]) -> None:
    statistics = image_statistics(backbone)
    assert statistics.mean == pytest.approx(mean)
    assert statistics.std == pytest.approx(IMAGENET.std if mean == IMAGENET.mean else (0.5, 0.5, 0.5))


def test_a_backbones_statistics_normalise_and_pad_its_images(tmp_path: Path, accelerator: Accelerator) -> None:
    """With 0.5 / 0.5 statistics (inception, ViT), grey 128 is what normalises to 0 and pads the batches."""
    halves = image_statistics("inception_v3.tv_in1k")
    assert halves.pad_colour == (128, 128, 128) and IMAGENET.pad_colour == (124, 116, 104)
    levels = torch.tensor([128.0, 0.0, 255.0])
    pixels = levels.to(torch.uint8).view(1, 1, 1, 3).expand(1, 3, 1, 3)  # [3] -> [1,3,1,3], every channel alike
    expected = ((levels / 255 - 0.5) / 0.5).view(1, 1, 1, 3).expand(1, 3, 1, 3)  # [3] -> [1,3,1,3]
    assert torch.allclose(ops.normalize(pixels, torch.float32, halves), expected)
    recipe = loader_recipe(tmp_path, 0).model_copy(update={"model": ModelConfig(backbone="inception_v3.tv_in1k")})
    ctx = make_context(accelerator, recipe)  # the run's context reads the statistics once
    assert ctx.statistics == halves and ctx.pad_colour == (128, 128, 128)
    train, val, _ = data.build_datasets(recipe.data, seed=0, pad_colour=ctx.pad_colour)
    assert train.transform.pad_colour == (128, 128, 128)
    sizes = torch.full((3, 4, 6), 7, dtype=torch.uint8), torch.full((3, 5, 2), 9, dtype=torch.uint8)
    items = [{"image": image, "label": torch.zeros(image.shape[1:], dtype=torch.long), "index": i}
             for i, image in enumerate(sizes)]
    loader = make_eval_loader(items, ctx)
    batch = next(iter(torch.utils.data.DataLoader(items, batch_size=2, collate_fn=loader.collate_fn)))
    assert batch["image"][1, :, :, 2:].eq(128).all() and batch["image"][0, :, 4:].eq(128).all()


# ---------------------------------------------------------------- loaders


def loader_recipe(root: Path, num_workers: int | None) -> Recipe:
    """Tiny augmented digit scenes read by `num_workers` workers."""
    scenes = {"train_images": 6, "val_images": 2, "image_size": 32, "digits_per_image": [1, 2]}
    loading = {"crop_size": 24, "batch_size": 2, "num_workers": num_workers}
    return Recipe.model_validate({"data": {"root": str(root), **loading, "digit_scenes": scenes}})


def by_index(loader: torch.utils.data.DataLoader) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """One epoch's (image, label) by dataset index.

    Plain DataLoaders' orders drift apart: each new iterator (per epoch, unless persistent) draws
    a seed from the generator that also shuffles.
    """
    return {
        int(i): (image, label)
        for batch in loader
        for i, image, label in zip(batch["index"], batch["image"], batch["label"], strict=True)
    }


def test_persistent_workers_augment_each_epoch_as_the_main_process_would(tmp_path: Path, accelerator: Accelerator) -> None:
    train, val, _ = data.build_datasets(loader_recipe(tmp_path, 0).data, seed=0, pad_colour=IMAGENET.pad_colour)
    with_workers, _ = make_loaders(train, val, make_context(accelerator, loader_recipe(tmp_path, 2)))
    in_process, _ = make_loaders(train, val, make_context(accelerator, loader_recipe(tmp_path, 0)))
    assert with_workers.persistent_workers and not in_process.persistent_workers
    crops = []
    for epoch in (0, 1):
        train.set_epoch(epoch)  # in epoch 1, after the workers started: only shared memory can tell them
        items, expected = (by_index(loader) for loader in (with_workers, in_process))
        assert items.keys() == expected.keys() == set(range(6))
        assert all(torch.equal(items[i][0], expected[i][0]) and torch.equal(items[i][1], expected[i][1]) for i in items)
        crops.append(items)
    assert not any(torch.equal(crops[0][i][0], crops[1][i][0]) for i in range(6))


@pytest.mark.parametrize(
    ("cores", "local_world_size", "workers"), [(2, 1, 1), (16, 1, 15), (16, 8, 1), (128, 8, 15), (8, 8, 1)]
)
def test_auto_num_workers_leaves_each_local_process_a_core(
    monkeypatch: pytest.MonkeyPatch, cores: int, local_world_size: int, workers: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(cores)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world_size))
    assert data.auto_num_workers() == workers


def test_loaders_default_to_auto_workers_and_keep_an_explicit_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, accelerator: Accelerator
) -> None:
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert DataConfig().num_workers is None
    train, val, _ = data.build_datasets(loader_recipe(tmp_path, 0).data, seed=0, pad_colour=IMAGENET.pad_colour)
    for requested, expected in ((None, data.auto_num_workers()), (0, 0), (2, 2)):
        loaders = make_loaders(train, val, make_context(accelerator, loader_recipe(tmp_path, requested)))
        assert [loader.num_workers for loader in loaders] == [expected, expected]
        assert all(loader.persistent_workers == (expected > 0) for loader in loaders)
        assert all(loader.pin_memory == torch.cuda.is_available() for loader in loaders)
