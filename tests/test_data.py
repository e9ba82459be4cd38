"""Datasets, label mappings, caching and transforms of harness.data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness import data
from harness.data import digit_scenes, transforms
from harness.recipe import AugmentConfig, DataConfig, DigitScenesConfig, RecipeError
from tests.data_fixtures import (
    HEIGHT,
    WIDTH,
    every_value,
    make_ade20k,
    make_cityscapes,
    make_coco_stuff,
    write_image,
)

Scenes = tuple[data.SegmentationDataset, data.SegmentationDataset]
SMALL = DigitScenesConfig(train_images=60, val_images=30, image_size=64, digits_per_image=(2, 4))

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
    train, val, _ = data.build_datasets(small_config(tmp_path_factory.mktemp("digits")), seed=0)
    return train, val


# ---------------------------------------------------------------- digit scenes


def test_digit_scenes_are_deterministic_per_seed() -> None:
    first, again, other = (digit_scenes.build_digit_scenes(SMALL, seed).with_format("numpy") for seed in (0, 0, 1))
    for split in ("train", "val"):
        assert np.array_equal(first[split]["image"], again[split]["image"])
        assert np.array_equal(first[split]["label"], again[split]["label"])
        assert not np.array_equal(first[split]["image"], other[split]["image"])


def test_train_and_val_use_disjoint_sklearn_samples(scenes: Scenes) -> None:
    train, val = scenes
    train_samples = {s for row in train.table["digit_samples"] for s in row.tolist()}
    val_samples = {s for row in val.table["digit_samples"] for s in row.tolist()}
    assert train_samples and val_samples and not train_samples & val_samples
    pools = digit_scenes.digit_pools(seed=0, num_samples=1797)
    assert train_samples <= set(pools[0].tolist()) and val_samples <= set(pools[1].tolist())


def test_digit_items_have_documented_types_and_cover_every_class(scenes: Scenes) -> None:
    train, val = scenes
    assert (len(train), len(val)) == (60, 30)
    item = val[7]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 64, 64)
    assert item["label"].dtype == torch.int64 and item["label"].shape == (64, 64)
    assert item["index"] == 7
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


def test_denormalize_inverts_the_normalisation(scenes: Scenes) -> None:
    _, val = scenes
    assert np.array_equal(data.denormalize(val[3]["image"]), val.table[3]["image"])


def test_digit_scenes_cache_is_reused_and_keyed_by_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = small_config(tmp_path)
    _, val, _ = data.build_datasets(cfg, seed=3)
    assert (tmp_path / digit_scenes.digit_scenes_key(cfg.digit_scenes, 3)).is_dir()

    def refuse(*_: object) -> None:
        raise AssertionError("rebuilt although a cache exists")

    monkeypatch.setattr(digit_scenes, "build_digit_scenes", refuse)
    _, cached_val, _ = data.build_datasets(cfg, seed=3)
    assert torch.equal(cached_val[5]["label"], val[5]["label"])
    with pytest.raises(AssertionError, match="rebuilt"):
        data.build_datasets(small_config(tmp_path, val_images=31), seed=3)
    with pytest.raises(AssertionError, match="rebuilt"):
        data.build_datasets(cfg, seed=4)


def test_digit_scenes_cache_defaults_to_dot_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = DataConfig(digit_scenes=SMALL.model_copy(update={"train_images": 4, "val_images": 2}))
    train, _, info = data.build_datasets(cfg, seed=0)
    assert (tmp_path / ".cache" / "digit_scenes" / digit_scenes.digit_scenes_key(cfg.digit_scenes, 0)).is_dir()
    assert len(train) == 4 and info.num_classes == 11 and info.class_names[:2] == ["background", "0"]


def test_digit_size_follows_digit_scale(tmp_path: Path) -> None:
    large = small_config(tmp_path, digit_scale=(0.5, 0.5), digits_per_image=(1, 1))
    train, _, _ = data.build_datasets(large, seed=0)
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
    train, val, info = data.build_datasets(real_config("cityscapes", make_cityscapes(tmp_path, raw)), seed=0)
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
    _, val, _ = data.build_datasets(real_config("cityscapes", root), seed=0)
    assert np.array_equal(val[0]["label"].numpy(), train_ids)


def test_ade20k_shifts_labels_and_accepts_either_root(tmp_path: Path) -> None:
    raw = every_value(152)
    base = make_ade20k(tmp_path, raw)
    expected = np.where((raw >= 1) & (raw <= 150), raw.astype(np.int64) - 1, 255)
    for root in (tmp_path, base):
        train, val, info = data.build_datasets(real_config("ade20k", root), seed=0)
        assert (len(train), len(val), info.num_classes, info.class_names[0]) == (2, 2, 150, "wall")
        assert np.array_equal(val[0]["label"].numpy(), expected)
    assert "ADE_val_00000002.jpg" in val.table[1]["image"]


def test_coco_stuff_raw_ids_skip_the_unused_things(tmp_path: Path) -> None:
    raw = every_value(183)
    raw[0, :2] = 255
    _, val, info = data.build_datasets(real_config("coco_stuff", make_coco_stuff(tmp_path, raw, ".png")), seed=0)
    label = val[0]["label"]
    assert info.num_classes == 171 and info.class_names[11] == "stop sign"
    spot_checks = {0: 0, 10: 10, 11: 255, 12: 11, 90: 255, 91: 80, 181: 170, 182: 255, 255: 255}
    for raw_id, train_id in spot_checks.items():
        assert label[torch.from_numpy(raw == raw_id)].eq(train_id).all(), raw_id
    assert label[label != 255].unique().tolist() == list(range(171))


def test_coco_stuff_prefers_label_train_ids(tmp_path: Path) -> None:
    train_ids = every_value(171)
    root = make_coco_stuff(tmp_path, train_ids, "_labelTrainIds.png")
    train, val, _ = data.build_datasets(real_config("coco_stuff", root), seed=0)
    assert np.array_equal(val[1]["label"].numpy(), train_ids)
    assert train[0]["image"].shape == (3, 24, 24) and train[0]["label"].dtype == torch.int64


@pytest.mark.parametrize("name", ["cityscapes", "ade20k", "coco_stuff"])
def test_missing_or_empty_root_names_data_root(tmp_path: Path, name: str) -> None:
    for root in (None, tmp_path / "absent", tmp_path):
        with pytest.raises(RecipeError) as error:
            data.build_datasets(real_config(name, root), seed=0)
        assert error.value.key == "data.root" and str(root) in error.value.message


def test_missing_label_file_is_named(tmp_path: Path) -> None:
    base = make_ade20k(tmp_path, every_value(151))
    missing = base / "annotations" / "training" / "ADE_train_00000002.png"
    missing.unlink()
    with pytest.raises(RecipeError, match=str(missing)) as error:
        data.build_datasets(real_config("ade20k", tmp_path), seed=0)
    assert error.value.key == "data.root"


# ---------------------------------------------------------------- transforms


def column_labels(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A label whose value is its column, and an image whose channel 0 repeats it."""
    label = torch.arange(width).expand(height, width).clone()
    image = torch.randn(3, height, width)
    image[0] = label.float()
    return image, label


def test_small_images_are_padded_with_ignore() -> None:
    image, label = torch.randn(3, 40, 50), torch.randint(0, 11, (40, 50))
    transform = transforms.TrainTransform(64, (0.5, 0.5), flip=False)
    out_image, out_label = transform(image, label, torch.Generator().manual_seed(0))
    assert out_image.shape == (3, 64, 64) and out_label.shape == (64, 64)
    assert out_label[20:].eq(255).all() and out_label[:, 25:].eq(255).all()
    assert out_image[:, 20:].eq(0).all() and out_label[:20, :25].lt(11).all()


def test_crop_keeps_image_and_label_aligned_and_flips_both() -> None:
    image, label = column_labels(48, 48)
    transform = transforms.TrainTransform(32, (1.0, 1.0), flip=True)
    directions = set()
    for seed in range(16):
        out_image, out_label = transform(image, label, torch.Generator().manual_seed(seed))
        assert out_label.shape == (32, 32) and torch.equal(out_image[0], out_label.float())
        directions.add(int(torch.sign(out_label[0, 1] - out_label[0, 0])))
    assert directions == {1, -1}


def test_no_flip_when_disabled() -> None:
    image, label = column_labels(32, 40)
    transform = transforms.TrainTransform(32, (0.8, 1.5), flip=False)
    for seed in range(8):
        _, out_label = transform(image, label, torch.Generator().manual_seed(seed))
        valid = out_label[0][out_label[0] != 255]
        assert (valid.diff() >= 0).all()


def test_train_transform_is_reproducible_from_its_generator() -> None:
    image, label = torch.randn(3, 50, 60), torch.randint(0, 5, (50, 60))
    transform = transforms.TrainTransform(32, (0.5, 2.0), flip=True)
    first, again, other = (transform(image, label, torch.Generator().manual_seed(s)) for s in (7, 7, 8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_training_items_are_crops_and_validation_items_whole(tmp_path: Path) -> None:
    tiny = SMALL.model_copy(update={"train_images": 3, "val_images": 2})
    cfg = DataConfig(root=tmp_path, crop_size=40, augment=AugmentConfig(scale=(0.5, 1.5)), digit_scenes=tiny)
    train, val, _ = data.build_datasets(cfg, seed=0)
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
    items = [
        {"image": torch.randn(3, 20, 30), "label": torch.zeros(20, 30, dtype=torch.long), "index": 4},
        {"image": torch.randn(3, 25, 10), "label": torch.ones(25, 10, dtype=torch.long), "index": 9},
    ]
    batch = data.collate(items)
    assert batch["image"].shape == (2, 3, 25, 30) and batch["label"].shape == (2, 25, 30)
    assert batch["label"][0, 20:].eq(255).all() and batch["label"][1, :, 10:].eq(255).all()
    assert batch["index"].tolist() == [4, 9]
