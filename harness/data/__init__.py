"""Segmentation datasets: the embedded digit scenes, Cityscapes, ADE20K and COCO-Stuff.

    info.py          DatasetInfo: class names and palette
    digit_scenes.py  the embedded dataset, generated and cached
    real.py          the real datasets' layouts on disk, class tables and label maps
    transforms.py    normalisation and training augmentation

`SegmentationDataset` turns a row into torch tensors,
`{"image": float32 [3,H,W], "label": int64 [H,W], "index": int}`, normalised with the
ImageNet statistics; training items are also randomly scaled, padded, cropped and flipped.
"""

from __future__ import annotations

from collections.abc import Callable
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
    decode_files,
    index_files,
)
from harness.data.transforms import TrainTransform, denormalize, pad_to, to_tensors
from harness.recipe import DataConfig

Row = dict[str, Any]

__all__ = [
    "ADE20K", "CITYSCAPES", "COCO_STUFF", "DIGIT_SCENES", "DatasetInfo", "SegmentationDataset", "build_datasets",
    "collate", "denormalize", "index_files",
]


class SegmentationDataset(torch.utils.data.Dataset):
    """One split: a `datasets` table, a row decoder and an optional training transform.

    Each item's augmentation draws from its own generator seeded by (seed, epoch, index):
    the same crop whatever the worker count, the sharding or a resume mid-epoch.
    """

    def __init__(
        self,
        table: datasets.Dataset,
        decode: Callable[[Row], tuple[np.ndarray, np.ndarray]],
        transform: TrainTransform | None = None,
        seed: int = 0,
    ) -> None:
        self.table, self.decode, self.transform, self.seed = table, decode, transform, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Augment the coming epoch differently from the last one."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label = to_tensors(*self.decode(self.table[index]))
        if self.transform is not None:
            item_seed = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
            generator = torch.Generator().manual_seed(int(item_seed))
            image, label = self.transform(image, label, generator)
        return {"image": image, "label": label, "index": index}


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Batch items; differently sized ones (ADE20K / COCO val) are padded with 0 / IGNORE_INDEX."""
    height = max(item["label"].shape[0] for item in items)
    width = max(item["label"].shape[1] for item in items)
    images, labels = zip(*(pad_to(item["image"], item["label"], height, width) for item in items))
    indices = torch.tensor([item["index"] for item in items])
    return {"image": torch.stack(images), "label": torch.stack(labels), "index": indices}


def build_datasets(cfg: DataConfig, seed: int) -> tuple[SegmentationDataset, SegmentationDataset, DatasetInfo]:
    """The (train, val, info) of `cfg.dataset`; train items are augmented, val items are whole."""
    if cfg.dataset == "digit_scenes":
        root = cfg.root or DEFAULT_DIGIT_SCENES_ROOT
        tables = load_digit_scenes(cfg.digit_scenes, seed, root).with_format("numpy")
        decode, info = decode_arrays, DIGIT_SCENES
    else:
        tables, decode, info = index_files(cfg.dataset, cfg.root), decode_files, LAYOUTS[cfg.dataset].info
    augment = TrainTransform(cfg.crop_size, cfg.augment.scale, cfg.augment.flip)
    train = SegmentationDataset(tables["train"], decode, augment, seed)
    return train, SegmentationDataset(tables["val"], decode), info
