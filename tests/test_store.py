"""The prepared store (harness/data/store.py), `harness prepare`, and data errors that name their file (issue 19)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from harness import cli, data
from harness.data import DataError, SegmentationDataset, store
from harness.data.real import decode_files, index_files
from harness.ops import IMAGENET
from harness.recipe import AugmentConfig, DataConfig
from tests.data_fixtures import every_value, make_ade20k, make_cityscapes, truncate, write_image

PAD = IMAGENET.pad_colour


def cityscapes(root: Path, prepare: str = "auto", **changes: object) -> DataConfig:
    """A Cityscapes data section over `root` with 24-pixel crops that scale 0.5-2.0 and flip."""
    return DataConfig(dataset="cityscapes", root=root, crop_size=24, augment=AugmentConfig(scale=(0.5, 2.0)),
                      prepare=prepare, **changes)


def same_items(first: SegmentationDataset, second: SegmentationDataset, epochs: tuple[int, ...] = (0,)) -> bool:
    """Whether two splits give equal items, pixel for pixel, in each of `epochs`."""
    for epoch in epochs:
        first.set_epoch(epoch)
        second.set_epoch(epoch)
        for index in range(len(first)):
            a, b = first[index], second[index]
            if not (torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])):
                return False
    return True


def stores(cache: Path) -> list[Path]:
    """Every folder under `cache`: the stores, and any scratch folder a build left (none should be)."""
    return sorted(path for path in cache.iterdir() if path.is_dir())


# ---------------------------------------------------------------- the store gives what decoding gives


def test_store_items_equal_decoded_items_pixel_for_pixel(tmp_path: Path) -> None:
    root = make_cityscapes(tmp_path / "cityscapes", every_value(34), per_split=3)
    write_image(root / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelTrainIds.png", every_value(19))
    train, val, _ = data.build_datasets(cityscapes(root), seed=5, pad_colour=PAD)
    off_train, off_val, _ = data.build_datasets(cityscapes(root, prepare="off"), seed=5, pad_colour=PAD)
    assert isinstance(train.decode, store.PreparedSplit) and off_train.decode is decode_files
    assert same_items(train, off_train, epochs=(0, 1)) and same_items(val, off_val)
    assert train[0]["image"].dtype == torch.uint8 and train[0]["label"].dtype == torch.uint8
    # The store holds train ids: the labelTrainIds file as it is, the labelIds ones mapped.
    image, label = train.decode(train.table[1])
    assert np.array_equal(label, every_value(19)) and image.shape == (32, 64, 3) and not image.flags.writeable


def test_images_of_different_sizes_each_keep_their_own(tmp_path: Path) -> None:
    base = make_ade20k(tmp_path, every_value(151), per_split=3)
    rng = np.random.default_rng(0)
    for stem, (height, width) in (("ADE_train_00000002", (17, 45)), ("ADE_train_00000003", (50, 21))):
        write_image(base / "images" / "training" / f"{stem}.jpg", rng.integers(0, 256, (height, width, 3), np.uint8))
        write_image(base / "annotations" / "training" / f"{stem}.png", rng.integers(0, 152, (height, width), np.uint8))
    cfg = DataConfig(dataset="ade20k", root=tmp_path, crop_size=24)
    train, _, _ = data.build_datasets(cfg, seed=0, pad_colour=PAD)
    off_train, _, _ = data.build_datasets(cfg.model_copy(update={"prepare": "off"}), seed=0, pad_colour=PAD)
    assert [(row["height"], row["width"]) for row in train.table] == [(32, 64), (17, 45), (50, 21)]
    for row in train.table:
        image, label = train.decode(row)
        expected_image, expected_label = decode_files(row)
        assert np.array_equal(image, expected_image) and np.array_equal(label, expected_label)
    assert same_items(train, off_train)


def test_a_built_store_is_reused_and_a_changed_dataset_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_cityscapes(tmp_path / "cityscapes", every_value(34))
    cfg = cityscapes(root, cache_dir=tmp_path / "cache")
    train, _, _ = data.build_datasets(cfg, seed=0, pad_colour=PAD)
    built = stores(tmp_path / "cache")
    assert [path.name.rsplit("-", 1)[0] for path in built] == ["cityscapes-train", "cityscapes-val"]
    assert not [path for path in (tmp_path / "cache").iterdir() if path.name.startswith(".")]  # no scratch left

    def refuse(*_: object) -> None:
        raise AssertionError("rebuilt although the dataset did not change")

    monkeypatch.setattr(store, "_build", refuse)
    again, _, _ = data.build_datasets(cfg, seed=0, pad_colour=PAD)
    assert again.decode.folder == train.decode.folder
    # A rewritten label (same name, new bytes and mtime) is a new dataset: never the old store.
    label = root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    write_image(label, np.full_like(every_value(34), 7))
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="rebuilt"):
        data.build_datasets(cfg, seed=0, pad_colour=PAD)
    monkeypatch.undo()
    changed, _, _ = data.build_datasets(cfg, seed=0, pad_colour=PAD)
    assert changed.decode.folder != train.decode.folder
    assert set(changed[0]["label"].unique().tolist()) <= {0, 255}  # all road (train id 0), or padding
    assert len(stores(tmp_path / "cache")) == 3  # the old train store, the new one, val


def test_cache_dir_defaults_beside_the_dataset_else_the_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "datasets" / "cityscapes"
    root.mkdir(parents=True)
    assert store.cache_dir(cityscapes(root)) == tmp_path / "datasets" / "cityscapes.prepared"
    assert store.cache_dir(cityscapes(root, cache_dir=tmp_path / "elsewhere")) == tmp_path / "elsewhere"
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "datasets")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    assert store.cache_dir(cityscapes(root)) == tmp_path / "user-cache" / "harness" / "prepared"


def test_the_digit_scenes_have_no_store(tmp_path: Path) -> None:
    tiny = DataConfig(root=tmp_path, digit_scenes={"train_images": 2, "val_images": 2, "test_images": 2})
    train, _, _ = data.build_datasets(tiny, seed=0, pad_colour=PAD)
    assert not isinstance(train.decode, store.PreparedSplit)
    assert not (tmp_path.parent / f"{tmp_path.name}.prepared").exists()


@pytest.mark.slow  # spawned processes import torch
def test_decoding_processes_build_the_same_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_cityscapes(tmp_path / "cityscapes", every_value(34), per_split=3)
    table = index_files("cityscapes", root)["train"]
    store.prepared(cityscapes(root, cache_dir=tmp_path / "one"), "train", table, workers=1)
    monkeypatch.setattr(store, "_IMAGES_PER_WORKER", 1)  # three images: three processes
    store.prepared(cityscapes(root, cache_dir=tmp_path / "three"), "train", table, workers=3)
    (by_one,), (by_three,) = stores(tmp_path / "one"), stores(tmp_path / "three")
    for name in (store.IMAGES, store.LABELS, store.INDEX):
        assert np.array_equal(np.load(by_one / name), np.load(by_three / name))


def _build_in_a_process(root: Path, cache: Path, results: multiprocessing.Queue) -> None:
    """One rank's build_datasets: report the folders it reads."""
    train, val, _ = data.build_datasets(cityscapes(root, cache_dir=cache), seed=0, pad_colour=PAD)
    results.put((str(train.decode.folder), str(val.decode.folder)))


@pytest.mark.slow  # spawned processes import torch
def test_ranks_building_at_once_make_one_store(tmp_path: Path) -> None:
    root = make_cityscapes(tmp_path / "cityscapes", every_value(34))
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ranks = [context.Process(target=_build_in_a_process, args=(root, tmp_path / "cache", results)) for _ in range(3)]
    for rank in ranks:
        rank.start()
    (train, val), = {results.get(timeout=300) for _ in ranks}  # every rank read the same two stores
    for rank in ranks:
        rank.join()
    assert all(rank.exitcode == 0 for rank in ranks)
    assert stores(tmp_path / "cache") == [Path(train), Path(val)]  # and no scratch folder is left


# ---------------------------------------------------------------- broken files are named (issue 19)

TRAIN_IMAGE = "leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png"
VAL_IMAGE = "leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png"
TRAIN_IDS = "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"
TRAIN_LABEL = "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png"


def outside_the_table(root: Path) -> Path:
    """A labelTrainIds file holding train id 19 (Cityscapes has 0-18) beside valid ids and ignored pixels."""
    label = every_value(19)
    label[0, :3] = (19, 255, 40)
    write_image(root / TRAIN_IDS, label)
    return root / TRAIN_IDS


def wrong_size(root: Path) -> Path:
    """A label of 64x31 for a 64x32 image."""
    write_image(root / TRAIN_LABEL, every_value(34)[:31])
    return root / TRAIN_LABEL


BREAKAGES = {
    "truncated train image": (lambda root: truncate(root / TRAIN_IMAGE), "truncated"),
    "truncated val image": (lambda root: truncate(root / VAL_IMAGE), "truncated"),
    "train id outside the table": (outside_the_table, r"train ids \[19, 40\] outside the table \(0-18"),
    "label of the wrong size": (wrong_size, "label is 64x31 .*but its image .* is 64x32"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_broken_file_stops_the_build_before_training_naming_it(tmp_path: Path, breakage: str) -> None:
    root = make_cityscapes(tmp_path / "cityscapes", every_value(34))
    break_it, what = BREAKAGES[breakage]
    broken = break_it(root)
    with pytest.raises(DataError, match=what) as error:
        data.build_datasets(cityscapes(root, cache_dir=tmp_path / "cache"), seed=0, pad_colour=PAD)
    assert str(error.value).startswith(str(broken))
    # Nothing half-built is left: a train store only where the broken file is val's.
    expected = ["cityscapes-train"] if "val" in breakage else []
    assert [path.name.rsplit("-", 1)[0] for path in stores(tmp_path / "cache")] == expected


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_broken_file_read_per_item_is_named_at_the_item(tmp_path: Path, breakage: str) -> None:
    """Files decoded per item (data.prepare: off), in a DataLoader worker as training reads them."""
    root = make_cityscapes(tmp_path / "cityscapes", every_value(34))
    break_it, what = BREAKAGES[breakage]
    broken = break_it(root)
    tables = index_files("cityscapes", root)
    split = "val" if "val" in breakage else "train"
    dataset = SegmentationDataset(tables[split], decode_files)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=1)
    with pytest.raises(Exception, match=what) as error:
        list(loader)
    assert str(broken) in str(error.value)


def test_a_broken_file_stops_prepare_with_exit_code_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_cityscapes(tmp_path / "cityscapes", every_value(34))
    broken = truncate(root / TRAIN_IMAGE)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"dataset": "cityscapes", "root": str(root)}}))
    assert cli.main(["prepare", str(recipe), "--set", f"data.cache_dir={tmp_path / 'cache'}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"error: {broken}: unreadable image") and "truncated" in lines[-1]


# ---------------------------------------------------------------- harness prepare


def test_prepare_builds_every_split_once_and_training_finds_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_cityscapes(tmp_path / "cityscapes", every_value(34))
    recipe = tmp_path / "r.yaml"
    sweep = {"data": {"dataset": "cityscapes", "root": str(root), "crop_size": 24},
             "sweep": {"grid": {"data.crop_size": [24, 16]}}}  # two variants, one dataset: one store per split
    recipe.write_text(yaml.safe_dump(sweep))
    assert cli.main(["prepare", str(recipe), "--workers", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    cache = tmp_path / "cityscapes.prepared"
    assert [line.split(": ")[0] for line in printed] == ["cityscapes train", "cityscapes val"]
    assert [line.split(": ")[1] for line in printed] == [str(path) for path in stores(cache)]
    monkeypatch.setattr(store, "_build", lambda *_: pytest.fail("training rebuilt a prepared store"))
    train, _, _ = data.build_datasets(cityscapes(root), seed=0, pad_colour=PAD)
    assert str(train.decode.folder) == printed[0].split(": ")[1]
    assert cli.main(["prepare", str(recipe)]) == 0  # found, not rebuilt


def test_prepare_stops_on_a_bad_recipe_and_skips_the_digit_scenes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"dataset": "cityscapes", "root": str(tmp_path / "absent")}}))
    assert cli.main(["prepare", str(recipe)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {recipe}: data.root: cityscapes needs data.root")
    assert cli.main(["prepare", str(recipe), "--set", "data.prepare=sometimes"]) == 2
    assert "data.prepare" in capsys.readouterr().err
    recipe.write_text(yaml.safe_dump({"data": {"dataset": "digit_scenes"}}))
    assert cli.main(["prepare", str(recipe)]) == 0
    assert "nothing to prepare" in capsys.readouterr().out
