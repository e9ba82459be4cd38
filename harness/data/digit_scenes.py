"""Digit scenes: the embedded dataset, real handwritten digits (scikit-learn's) pasted on textures.

Built once per (geometry, seed), stored as a Hugging Face `datasets` table and cached
on disk; train, val and test scenes use disjoint digit samples. Development evaluates on
val; the test split is held out for a study scored once (eval.split: test).
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from harness.data.info import DatasetInfo, generated_palette, keyed_table
from harness.recipe import DigitScenesConfig
from harness.results import publish

DEFAULT_DIGIT_SCENES_ROOT = Path(".cache/digit_scenes")
DIGIT_SCENES = DatasetInfo(
    "digit_scenes", 11, ["background"] + [str(d) for d in range(10)], [(0, 0, 0)] + generated_palette(10)
)

# Bump whenever the generator's output changes, so stale caches are never reused.
_DIGIT_SCENES_VERSION = 4  # 4: the held-out 20 % split in half, val and test
_HELD_OUT_FRACTION = 0.2  # of sklearn's digits, for val and test; the rest (and only it) trains and pretrains
_LABEL_THRESHOLD = 0.25  # upscaled ink intensity above which a pixel is the digit's ink
_HALO = 3  # the label is the ink dilated by a 3x3 window: a region, not a 1-px stroke
_PLACEMENT_TRIES = 8
SPLITS = ("train", "val", "test")


def digit_scenes_key(cfg: DigitScenesConfig, seed: int) -> str:
    """The cache folder name: everything that changes the generated images."""
    low, high = cfg.digits_per_image
    small, large = cfg.digit_scale
    return (
        f"v{_DIGIT_SCENES_VERSION}-seed{seed}-size{cfg.image_size}"
        f"-train{cfg.train_images}-val{cfg.val_images}-test{cfg.test_images}-digits{low}to{high}-scale{small:g}to{large:g}"
    )


def digit_pools(seed: int, num_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint sorted sklearn sample indices for the train (80 %), val (10 %) and test (10 %) scenes.

    The train pool is the one versions before the test split had, so training scenes and the
    pretrained stand-in are unchanged; the old val pool is split in two.
    """
    order = np.random.default_rng([seed, 0]).permutation(num_samples)
    cut = num_samples - int(_HELD_OUT_FRACTION * num_samples)
    middle = cut + (num_samples - cut) // 2
    return np.sort(order[:cut]), np.sort(order[cut:middle]), np.sort(order[middle:])


def _texture(rng: np.random.Generator, base: np.ndarray, size: int) -> np.ndarray:
    """A float [S,S,3] background: `base` colour plus smooth colour noise and coloured stripes."""
    blobs = torch.from_numpy(rng.uniform(-30, 30, (1, 3, 5, 5)))
    smooth = F.interpolate(blobs, size=(size, size), mode="bilinear", align_corners=True)  # [1,3,5,5] -> [1,3,S,S]
    angle, cycles, phase = rng.uniform(0, np.pi), rng.uniform(2, 6), rng.uniform(0, 2 * np.pi)
    rows, cols = np.mgrid[0:size, 0:size] / size
    wave = np.sin(2 * np.pi * cycles * (cols * np.cos(angle) + rows * np.sin(angle)) + phase)
    stripes = wave[..., None] * rng.uniform(-15, 15, 3)  # [S,S] -> [S,S,3]
    return base + smooth[0].permute(1, 2, 0).numpy() + stripes  # [3,S,S] -> [S,S,3]


def _least_covered_corner(rng: np.random.Generator, label: np.ndarray, side: int) -> tuple[int, int]:
    """Of a few random positions, the one whose side x side window holds the fewest digit pixels.

    Occlusion stays possible, but most digits remain whole enough to be recognised.
    """
    corners = rng.integers(0, label.shape[0] - side + 1, (_PLACEMENT_TRIES, 2))
    covered = [np.count_nonzero(label[top : top + side, left : left + side]) for top, left in corners]
    top, left = corners[int(np.argmin(covered))]
    return int(top), int(left)


def _paste_digit(
    rng: np.random.Generator,
    scene: tuple[np.ndarray, np.ndarray],
    ink: np.ndarray,
    class_id: int,
    base: np.ndarray,
    digit_scale: tuple[float, float],
) -> None:
    """Blend one upscaled digit into the canvas and overwrite its pixels in the label map."""
    canvas, label = scene
    size = label.shape[0]
    low, high = (round(fraction * size) for fraction in digit_scale)
    side = int(rng.integers(max(low, 1), high + 1))
    ink = torch.from_numpy(ink)[None, None]  # [8,8] -> [1,1,8,8]
    alpha = F.interpolate(ink, size=(side, side), mode="bilinear")[0, 0].numpy()  # -> [side,side]
    top, left = _least_covered_corner(rng, label, side)
    # Half a turn of the colour wheel away from the background's base colour, per channel,
    # keeps every digit at least ~50 levels away from any background pixel.
    colour = (base + 128 + rng.uniform(-30, 30, 3)) % 256
    window = canvas[top : top + side, left : left + side]
    window += alpha[..., None] * (colour - window)
    ink_mask = torch.from_numpy(alpha > _LABEL_THRESHOLD).float()[None, None]  # [side,side] -> [1,1,side,side]
    region = F.max_pool2d(ink_mask, _HALO, stride=1, padding=_HALO // 2)[0, 0].numpy() > 0
    label[top : top + side, left : left + side][region] = class_id


def _compose_scene(
    rng: np.random.Generator, digits: tuple[np.ndarray, np.ndarray], pool: np.ndarray, cfg: DigitScenesConfig
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """One scene: uint8 image [S,S,3], uint8 label [S,S] and the sklearn samples used."""
    inks, classes = digits
    base = rng.uniform(0, 255, 3)
    canvas = _texture(rng, base, cfg.image_size)
    label = np.zeros((cfg.image_size, cfg.image_size), np.uint8)
    low, high = cfg.digits_per_image
    chosen = rng.choice(pool, size=int(rng.integers(low, high + 1)), replace=False)
    for sample in chosen:
        _paste_digit(rng, (canvas, label), inks[sample], int(classes[sample]) + 1, base, cfg.digit_scale)
    return canvas.clip(0, 255).round().astype(np.uint8), label, chosen.tolist()


def _digit_features(size: int) -> datasets.Features:
    """The arrow schema of a digit-scenes split."""
    return datasets.Features(
        {
            "image": datasets.Array3D((size, size, 3), "uint8"),
            "label": datasets.Array2D((size, size), "uint8"),
            "digit_samples": datasets.Sequence(datasets.Value("int32")),
        }
    )


def _build_split(
    rng: np.random.Generator,
    digits: tuple[np.ndarray, np.ndarray],
    pool: np.ndarray,
    count: int,
    cfg: DigitScenesConfig,
    key: str,
) -> datasets.Dataset:
    """`count` scenes drawn from the sklearn samples in `pool`, a table named `key`."""
    images, labels, samples = zip(*(_compose_scene(rng, digits, pool, cfg) for _ in range(count)))
    columns = {"image": np.stack(images), "label": np.stack(labels), "digit_samples": list(samples)}
    return keyed_table(columns, key, _digit_features(cfg.image_size))


def build_digit_scenes(cfg: DigitScenesConfig, seed: int) -> datasets.DatasetDict:
    """Generate the train, val and test digit scenes from disjoint 80/10/10 parts of sklearn's digits."""
    sklearn_digits = load_digits()
    digits = ((sklearn_digits.images / 16).astype(np.float32), sklearn_digits.target)  # ink 0..16 -> 0..1
    pools = digit_pools(seed, len(sklearn_digits.target))
    counts = (cfg.train_images, cfg.val_images, cfg.test_images)
    key = digit_scenes_key(cfg, seed)
    # Each split draws from its own stream: [seed, 1] and [seed, 2] as before the test split existed.
    return datasets.DatasetDict({
        split: _build_split(np.random.default_rng([seed, stream]), digits, pool, count, cfg, f"{key}-{split}")
        for stream, (split, pool, count) in enumerate(zip(SPLITS, pools, counts), start=1)
    })


def load_digit_scenes(cfg: DigitScenesConfig, seed: int, root: Path) -> datasets.DatasetDict:
    """The digit-scenes splits from `root/<key>`, generated and saved there on first use."""
    path = Path(root) / digit_scenes_key(cfg, seed)
    if not path.is_dir():
        splits = build_digit_scenes(cfg, seed)
        publish(path, lambda scratch: splits.save_to_disk(str(scratch)))
    return datasets.load_from_disk(str(path))


def decode_arrays(row: dict) -> tuple[np.ndarray, np.ndarray]:
    """A digit-scenes row (numpy format) as a uint8 RGB image [H,W,3] and a uint8 label [H,W]."""
    return np.asarray(row["image"], np.uint8), np.asarray(row["label"], np.uint8)
