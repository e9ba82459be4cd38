"""Segmentation datasets: the embedded digit scenes, Cityscapes, ADE20K and COCO-Stuff.

    info.py          DatasetInfo: class names and palette
    digit_scenes.py  the embedded dataset, generated and cached
    real.py          the real datasets' layouts on disk, class tables, label maps and decoding
    store.py         the prepared store: a real split decoded once into memory-mapped uint8 arrays
    transforms.py    tensors and training augmentation

`SegmentationDataset` turns a row into torch tensors,
`{"image": uint8 [3,H,W], "label": uint8 [H,W], "index": int}`; training items are also
randomly scaled, padded, cropped and flipped. Real datasets' rows are read from their prepared
store (data.prepare: auto) or decoded from their files (off), to the same pixels. Images are
normalised on the model's device (harness.ops.normalize) with the backbone's statistics; padding
takes their mean colour.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from harness.data.digit_scenes import (
    DEFAULT_DIGIT_SCENES_ROOT,
    DIGIT_SCENES,
    decode_arrays,
    load_digit_scenes,
)
from harness.data.info import DatasetInfo
from harness.data.real import (
    ADE20K,
    CITYSCAPES,
    COCO_STUFF,
    LAYOUTS,
    SUBMISSIONS,
    DataError,
    Submission,
    decode_files,
    decode_image,
    index_files,
    index_images,
)
from harness.data.store import prepared, usable_cores
from harness.data.transforms import TrainTransform, base_factor, pad_to, to_tensors
from harness.recipe import DataConfig

Row = dict[str, Any]
Decode = Callable[[Row], tuple[np.ndarray, np.ndarray]]  # a row -> uint8 RGB image [H,W,3], uint8 label [H,W]

__all__ = [
    "ADE20K", "CITYSCAPES", "COCO_STUFF", "DIGIT_SCENES", "DataError", "DatasetInfo", "SegmentationDataset",
    "Submission", "auto_num_workers", "base_factor", "build_datasets", "build_unlabeled", "collate", "index_files",
    "prepare_splits",
]


class SegmentationDataset(torch.utils.data.Dataset):
    """One split: a `datasets` table, a row decoder (uint8 RGB image, uint8 label) and an optional training transform.

    Each item's augmentation draws from its own generator seeded by (seed, epoch, index):
    the same crop whatever the worker count, the sharding or a resume mid-epoch.
    """

    def __init__(
        self,
        table: datasets.Dataset,
        decode: Decode,
        transform: TrainTransform | None = None,
        seed: int = 0,
    ) -> None:
        self.table, self.decode, self.transform, self.seed = table, decode, transform, seed
        # Persistent DataLoader workers keep the copy of the dataset they started with; an epoch
        # held in shared memory is the one attribute that set_epoch still changes for them.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        """The epoch whose augmentation items get."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Augment the coming epoch differently from the last one, in every worker."""
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label = self.decode(self.table[index])
        if self.transform is None:
            image, label = to_tensors(image, label)
        else:
            item_seed = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
            image, label = self.transform(image, label, torch.Generator().manual_seed(int(item_seed)))
        # uint8 (255 = ignored) through workers, shared memory, pinning and the copy to the device, an eighth of
        # int64's bytes; the engine widens labels on the device, where the losses need int64.
        return {"image": image, "label": label, "index": index}


def collate(items: list[dict[str, Any]], pad_colour: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """Batch items; differently sized ones (ADE20K / COCO val) are padded with `pad_colour` / IGNORE_INDEX."""
    height = max(item["label"].shape[0] for item in items)
    width = max(item["label"].shape[1] for item in items)
    padded = []
    for item in items:
        image, label = pad_to(item["image"], item["label"], height, width, pad_colour)
        padded.append({"image": image, "label": label, "index": item["index"]})
    # default_collate stacks a DataLoader worker's batch straight into shared memory: no second copy on its
    # way to the main process (about a millisecond per 769 crop).
    return torch.utils.data.default_collate(padded)


def _real_split(cfg: DataConfig, split: str, table: datasets.Dataset) -> tuple[datasets.Dataset, Decode]:
    """A real split (train or val) as (table, decode): its prepared store, built on first use, or its files."""
    if cfg.prepare == "off":
        return table, decode_files
    return prepared(cfg, split, table, usable_cores())


def build_datasets(
    cfg: DataConfig, seed: int, pad_colour: tuple[int, int, int], eval_split: str = "val"
) -> tuple[SegmentationDataset, SegmentationDataset, DatasetInfo]:
    """The (train, evaluated split, info) of `cfg.dataset`; train items are augmented by `seed` (padded with
    `pad_colour`, the backbone's mean), the evaluated split's (eval.split: val, or the digit scenes' test) are whole.

    The digit scenes themselves come from their own data.digit_scenes.seed, fixed across a sweep's seeds.
    A real dataset's splits are read from their prepared stores (data.prepare: auto), which a missing
    one is built into first: a broken file stops it here, named, before any training.
    """
    if cfg.dataset == "digit_scenes":
        root = cfg.root or DEFAULT_DIGIT_SCENES_ROOT
        tables = load_digit_scenes(cfg.digit_scenes, cfg.digit_scenes.seed, root).with_format("numpy")
        splits = {split: (tables[split], decode_arrays) for split in ("train", eval_split)}
        info = DIGIT_SCENES
    else:
        tables, info = index_files(cfg.dataset, cfg.root), LAYOUTS[cfg.dataset].info
        splits = {split: _real_split(cfg, split, tables[split]) for split in ("train", eval_split)}
    augment = TrainTransform(cfg.crop_size, cfg.augment.scale, cfg.augment.flip, pad_colour,
                             cfg.augment.base_size)
    train = SegmentationDataset(*splits["train"], augment, seed)
    return train, SegmentationDataset(*splits[eval_split]), info


def prepare_splits(cfg: DataConfig, workers: int) -> dict[str, Path]:
    """Build (or find) the prepared store of a real dataset's train and val splits: its folder by split."""
    tables = index_files(cfg.dataset, cfg.root)
    return {split: prepared(cfg, split, table, workers)[1].folder for split, table in tables.items()}


def build_unlabeled(cfg: DataConfig, split: str | None) -> tuple[SegmentationDataset, DatasetInfo, Submission]:
    """A split's images without labels (a test split; default: val), its classes, how its predictions are submitted."""
    table = index_images(cfg.dataset, cfg.root, split)
    return SegmentationDataset(table, decode_image), LAYOUTS[cfg.dataset].info, SUBMISSIONS[cfg.dataset]


def auto_num_workers() -> int:
    """DataLoader workers per local process when the recipe names none: its share of the usable cores, less one.

    Each process launching a GPU's kernels keeps one core for itself, so the workers of all
    LOCAL_WORLD_SIZE processes (set by torchrun / accelerate launch) never outnumber the cores
    left; at least one, so that decoding overlaps the step even on a crowded node.
    """
    return max(1, usable_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")) - 1)
