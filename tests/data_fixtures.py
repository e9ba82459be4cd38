"""Tiny on-disk trees laid out exactly like Cityscapes, ADE20K, COCO-Stuff-164k and COCO-Stuff-10k."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

HEIGHT, WIDTH = 32, 64


def every_value(count: int) -> np.ndarray:
    """A uint8 [32,64] label image cycling through the raw values 0..count-1."""
    return (np.arange(HEIGHT * WIDTH) % count).astype(np.uint8).reshape(HEIGHT, WIDTH)  # [H*W] -> [H,W]


def write_image(path: Path, array: np.ndarray) -> None:
    """Save an array as an image file, creating its folder (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def truncate(path: Path) -> Path:
    """Cut a file to half its bytes, as an interrupted copy leaves it."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _photo(seed: int) -> np.ndarray:
    """A random uint8 RGB picture [32,64,3]."""
    return np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def make_cityscapes(root: Path, label_ids: np.ndarray, per_split: int = 2) -> Path:
    """leftImg8bit/ and gtFine/ (labelIds only) with `per_split` images per split."""
    for split, city in (("train", "aachen"), ("val", "frankfurt")):
        for k in range(per_split):
            stem = f"{city}_{k:06d}_000019"
            write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _photo(k))
            write_image(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label_ids)
    return root


def make_ade20k(root: Path, annotation: np.ndarray, per_split: int = 2) -> Path:
    """ADEChallengeData2016/{images,annotations}/{training,validation}; returns the top folder."""
    base = root / "ADEChallengeData2016"
    for split, prefix in (("training", "train"), ("validation", "val")):
        for k in range(per_split):
            stem = f"ADE_{prefix}_{k + 1:08d}"
            write_image(base / "images" / split / f"{stem}.jpg", _photo(k))
            write_image(base / "annotations" / split / f"{stem}.png", annotation)
    return base


def make_coco_stuff(root: Path, label: np.ndarray, suffix: str, per_split: int = 2) -> Path:
    """images/ and annotations/ for train2017 and val2017; labels named <stem><suffix>."""
    for split in ("train2017", "val2017"):
        for k in range(per_split):
            stem = f"{k + 139:012d}"
            write_image(root / "images" / split / f"{stem}.jpg", _photo(k))
            write_image(root / "annotations" / split / f"{stem}{suffix}", label)
    return root


def make_coco_stuff10k(root: Path, label: np.ndarray, per_split: tuple[int, int] = (3, 2)) -> Path:
    """images/*.jpg, annotations/*.mat (the label matrix S as uint16, beside the names and captions the
    real files also hold) and imageLists/{train,test}.txt naming (train, test) images; returns root."""
    lists = {}
    for split, count, first in (("train", per_split[0], 77), ("test", per_split[1], 9000)):
        lists[split] = [f"COCO_train2014_{first + k:012d}" for k in range(count)]
        for k, name in enumerate(lists[split]):
            write_image(root / "images" / f"{name}.jpg", _photo(k))
            (root / "annotations").mkdir(parents=True, exist_ok=True)
            contents = {"S": label.astype(np.uint16), "names": np.array(["unlabeled", "person"], dtype=object),
                        "captions": np.array(["a digit"], dtype=object)}
            scipy.io.savemat(root / "annotations" / f"{name}.mat", contents)
    (root / "imageLists").mkdir(parents=True, exist_ok=True)
    for split, names in lists.items():
        (root / "imageLists" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root
