"""Segmentation datasets: the embedded digit scenes, Cityscapes, ADE20K and COCO-Stuff.

Hugging Face `datasets` tables are the storage and index layer: pixel arrays for the
digit scenes (cached with `save_to_disk`), file paths for the real datasets (decoded
with PIL on access). `SegmentationDataset` turns a row into torch tensors,
`{"image": float32 [3,H,W], "label": int64 [H,W], "index": int}`, normalised with the
ImageNet statistics; training items are also randomly scaled, padded, cropped and flipped.
"""

from __future__ import annotations

import colorsys
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits

from harness.recipe import DataConfig, DigitScenesConfig, RecipeError

IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_DIGIT_SCENES_ROOT = Path(".cache/digit_scenes")

_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)  # [3] -> [3,1,1]
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)  # [3] -> [3,1,1]

RGB = tuple[int, int, int]
Row = dict[str, Any]


@dataclass(frozen=True)
class DatasetInfo:
    """What models, metrics and reports need to know about a dataset's classes."""

    name: str
    num_classes: int
    class_names: list[str]
    palette: list[RGB]
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        if not len(self.class_names) == len(self.palette) == self.num_classes:
            raise ValueError(f"{self.name}: need one name and one colour per class")


def generated_palette(count: int) -> list[RGB]:
    """Distinct deterministic colours: golden-ratio hue steps over three brightness levels."""
    return [_hsv_colour((k * 0.618033988749895) % 1.0, (1.0, 0.8, 0.6)[k % 3]) for k in range(count)]


def _hsv_colour(hue: float, value: float) -> RGB:
    """An 8-bit RGB colour of saturation 0.75."""
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.75, value)
    return round(red * 255), round(green * 255), round(blue * 255)


# ---------------------------------------------------------------- class tables

# Cityscapes labelId -> (name, colour) of the 19 evaluated classes, in train-id order.
_CITYSCAPES_CLASSES: dict[int, tuple[str, RGB]] = {
    7: ("road", (128, 64, 128)),
    8: ("sidewalk", (244, 35, 232)),
    11: ("building", (70, 70, 70)),
    12: ("wall", (102, 102, 156)),
    13: ("fence", (190, 153, 153)),
    17: ("pole", (153, 153, 153)),
    19: ("traffic light", (250, 170, 30)),
    20: ("traffic sign", (220, 220, 0)),
    21: ("vegetation", (107, 142, 35)),
    22: ("terrain", (152, 251, 152)),
    23: ("sky", (70, 130, 180)),
    24: ("person", (220, 20, 60)),
    25: ("rider", (255, 0, 0)),
    26: ("car", (0, 0, 142)),
    27: ("truck", (0, 0, 70)),
    28: ("bus", (0, 60, 100)),
    31: ("train", (0, 80, 100)),
    32: ("motorcycle", (0, 0, 230)),
    33: ("bicycle", (119, 11, 32)),
}

_ADE20K_NAMES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]  # fmt: skip

# COCO-Stuff 164k: the 80 thing classes, then the 91 stuff classes (labels.txt order).
_COCO_STUFF_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence",
    "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog",
    "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill",
    "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud",
    "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform",
    "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad",
    "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone",
    "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
]  # fmt: skip

# 0-based COCO ids with no annotations in COCO-Stuff (thing ids dropped from COCO's 91).
_COCO_UNUSED_IDS = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}
_COCO_USED_IDS = [raw for raw in range(182) if raw not in _COCO_UNUSED_IDS]

DIGIT_SCENES = DatasetInfo(
    "digit_scenes", 11, ["background"] + [str(d) for d in range(10)], [(0, 0, 0)] + generated_palette(10)
)
CITYSCAPES = DatasetInfo(
    "cityscapes",
    19,
    [name for name, _ in _CITYSCAPES_CLASSES.values()],
    [colour for _, colour in _CITYSCAPES_CLASSES.values()],
)
ADE20K = DatasetInfo("ade20k", 150, _ADE20K_NAMES, generated_palette(150))
COCO_STUFF = DatasetInfo("coco_stuff", 171, _COCO_STUFF_NAMES, generated_palette(171))


def _lookup(train_ids: dict[int, int]) -> np.ndarray:
    """A 256-entry table sending raw label values to train ids and everything else to 255."""
    table = np.full(256, IGNORE_INDEX, np.uint8)
    table[list(train_ids)] = list(train_ids.values())
    return table


# How a label file's pixel values become train ids, by the `label_map` column of an index.
_LABEL_MAPS: dict[str, np.ndarray] = {
    "train_ids": np.arange(256, dtype=np.uint8),
    "cityscapes_label_ids": _lookup({label_id: k for k, label_id in enumerate(_CITYSCAPES_CLASSES)}),
    "ade20k": _lookup({k + 1: k for k in range(150)}),
    "coco_stuff_raw": _lookup({raw: k for k, raw in enumerate(_COCO_USED_IDS)}),
}


# ---------------------------------------------------------------- digit scenes

# Bump whenever the generator's output changes, so stale caches are never reused.
_DIGIT_SCENES_VERSION = 3
_VAL_FRACTION = 0.2
_LABEL_THRESHOLD = 0.25  # upscaled ink intensity above which a pixel is the digit's ink
_HALO = 3  # the label is the ink dilated by a 3x3 window: a region, not a 1-px stroke
_PLACEMENT_TRIES = 8


def digit_scenes_key(cfg: DigitScenesConfig, seed: int) -> str:
    """The cache folder name: everything that changes the generated images."""
    low, high = cfg.digits_per_image
    small, large = cfg.digit_scale
    return (
        f"v{_DIGIT_SCENES_VERSION}-seed{seed}-size{cfg.image_size}"
        f"-train{cfg.train_images}-val{cfg.val_images}-digits{low}to{high}-scale{small:g}to{large:g}"
    )


def digit_pools(seed: int, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted sklearn sample indices for the train (80 %) and val (20 %) scenes."""
    order = np.random.default_rng([seed, 0]).permutation(num_samples)
    cut = num_samples - int(_VAL_FRACTION * num_samples)
    return np.sort(order[:cut]), np.sort(order[cut:])


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
) -> datasets.Dataset:
    """`count` scenes drawn from the sklearn samples in `pool`."""
    images, labels, samples = zip(*(_compose_scene(rng, digits, pool, cfg) for _ in range(count)))
    columns = {"image": np.stack(images), "label": np.stack(labels), "digit_samples": list(samples)}
    return datasets.Dataset.from_dict(columns, features=_digit_features(cfg.image_size))


def build_digit_scenes(cfg: DigitScenesConfig, seed: int) -> datasets.DatasetDict:
    """Generate the train and val digit scenes from disjoint 80/20 parts of sklearn's digits."""
    sklearn_digits = load_digits()
    digits = ((sklearn_digits.images / 16).astype(np.float32), sklearn_digits.target)  # ink 0..16 -> 0..1
    train_pool, val_pool = digit_pools(seed, len(sklearn_digits.target))
    return datasets.DatasetDict(
        train=_build_split(np.random.default_rng([seed, 1]), digits, train_pool, cfg.train_images, cfg),
        val=_build_split(np.random.default_rng([seed, 2]), digits, val_pool, cfg.val_images, cfg),
    )


def _save_atomically(splits: datasets.DatasetDict, path: Path) -> None:
    """Save into a private folder, then rename, so concurrent ranks never read half a cache."""
    scratch = path.with_name(f"{path.name}.tmp{os.getpid()}")
    splits.save_to_disk(str(scratch))
    try:
        scratch.rename(path)
    except OSError:  # another process renamed its identical copy first
        shutil.rmtree(scratch)


def load_digit_scenes(cfg: DigitScenesConfig, seed: int, root: Path) -> datasets.DatasetDict:
    """The digit-scenes splits from `root/<key>`, generated and saved there on first use."""
    path = Path(root) / digit_scenes_key(cfg, seed)
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_atomically(build_digit_scenes(cfg, seed), path)
    return datasets.load_from_disk(str(path))


# ---------------------------------------------------------------- real datasets on disk


def _pair(image: Path, candidates: list[tuple[Path, str]]) -> Row:
    """The index row of `image`: the first label candidate that exists, with its label map."""
    for label, label_map in candidates:
        if label.is_file():
            return {"image": str(image), "label": str(label), "label_map": label_map}
    expected = " or ".join(str(label) for label, _ in candidates)
    raise RecipeError("data.root", f"label file missing for {image}: expected {expected}")


def _cityscapes_rows(root: Path, split: str) -> list[Row]:
    """leftImg8bit images paired with gtFine labelTrainIds (when present) or labelIds."""
    rows = []
    for image in sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png")):
        stem = image.name.removesuffix("_leftImg8bit.png")
        labels = root / "gtFine" / split / image.parent.name
        candidates = [
            (labels / f"{stem}_gtFine_labelTrainIds.png", "train_ids"),
            (labels / f"{stem}_gtFine_labelIds.png", "cityscapes_label_ids"),
        ]
        rows.append(_pair(image, candidates))
    return rows


def _ade20k_rows(root: Path, split: str) -> list[Row]:
    """images/<split>/*.jpg paired with annotations/<split>/*.png (0 = other)."""
    if (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    labels = root / "annotations" / split
    images = sorted((root / "images" / split).glob("*.jpg"))
    return [_pair(image, [(labels / f"{image.stem}.png", "ade20k")]) for image in images]


def _coco_stuff_rows(root: Path, split: str) -> list[Row]:
    """images/<split>/*.jpg paired with *_labelTrainIds.png, else the raw stuffthingmaps *.png."""
    labels = root / "annotations" / split
    rows = []
    for image in sorted((root / "images" / split).glob("*.jpg")):
        candidates = [
            (labels / f"{image.stem}_labelTrainIds.png", "train_ids"),
            (labels / f"{image.stem}.png", "coco_stuff_raw"),
        ]
        rows.append(_pair(image, candidates))
    return rows


@dataclass(frozen=True)
class _Layout:
    """How one real dataset lies on disk."""

    info: DatasetInfo
    splits: tuple[str, str]  # folder names of the (train, val) splits
    rows: Callable[[Path, str], list[Row]]
    expected: str  # the layout, spelled out for error messages


_LAYOUTS = {
    "cityscapes": _Layout(
        CITYSCAPES,
        ("train", "val"),
        _cityscapes_rows,
        "<root>/leftImg8bit/{train,val}/<city>/<city>_*_leftImg8bit.png with "
        "<root>/gtFine/{train,val}/<city>/<city>_*_gtFine_labelIds.png",
    ),
    "ade20k": _Layout(
        ADE20K,
        ("training", "validation"),
        _ade20k_rows,
        "<root>[/ADEChallengeData2016]/images/{training,validation}/*.jpg with "
        "annotations/{training,validation}/*.png",
    ),
    "coco_stuff": _Layout(
        COCO_STUFF,
        ("train2017", "val2017"),
        _coco_stuff_rows,
        "<root>/images/{train2017,val2017}/*.jpg with "
        "<root>/annotations/{train2017,val2017}/*_labelTrainIds.png (or raw stuffthingmaps *.png)",
    ),
}


def index_files(name: str, root: Path | None) -> datasets.DatasetDict:
    """Index a real dataset's (image, label) file pairs into train and val tables."""
    layout = _LAYOUTS[name]
    if root is None or not Path(root).is_dir():
        message = f"{name} needs data.root, an existing folder laid out as {layout.expected}; got {root}"
        raise RecipeError("data.root", message)
    tables = {}
    for split, folder in zip(("train", "val"), layout.splits):
        rows = layout.rows(Path(root), folder)
        if not rows:
            raise RecipeError("data.root", f"no {name} '{folder}' images under {root}; expected {layout.expected}")
        tables[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(tables)


# ---------------------------------------------------------------- decoding and transforms


def _decode_arrays(row: Row) -> tuple[np.ndarray, np.ndarray]:
    """A digit-scenes row (numpy format) as uint8 image [H,W,3] and label [H,W]."""
    return np.asarray(row["image"], np.uint8), np.asarray(row["label"], np.uint8)


def _decode_files(row: Row) -> tuple[np.ndarray, np.ndarray]:
    """Read an image (as RGB) and its label (mapped to train ids) with PIL."""
    with Image.open(row["image"]) as image, Image.open(row["label"]) as label:
        pixels, raw = np.array(image.convert("RGB")), np.array(label)
    if pixels.shape[:2] != raw.shape:
        raise ValueError(f"{row['label']} is {raw.shape}, but {row['image']} is {pixels.shape[:2]}")
    return pixels, _LABEL_MAPS[row["label_map"]][raw]


def _to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 arrays [H,W,3], [H,W] -> ImageNet-normalised float32 [3,H,W] and int64 [H,W]."""
    pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 255  # [H,W,3] -> [3,H,W]
    return (pixels - _MEAN) / _STD, torch.from_numpy(label.astype(np.int64))


def denormalize(image: torch.Tensor) -> np.ndarray:
    """A normalised float image [3,H,W] as displayable uint8 [H,W,3]."""
    pixels = (image.detach().float().cpu() * _STD + _MEAN).clamp(0, 1) * 255
    return pixels.round().to(torch.uint8).permute(1, 2, 0).numpy()  # [3,H,W] -> [H,W,3]


def random_scale(
    image: torch.Tensor, label: torch.Tensor, scale: tuple[float, float], generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize by a factor drawn uniformly from `scale`: image bilinear, label nearest."""
    low, high = scale
    factor = low + (high - low) * torch.rand((), generator=generator).item()
    size = [max(1, round(side * factor)) for side in label.shape]
    image = F.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0]  # [3,H,W] -> [3,h,w]
    label = F.interpolate(label[None, None].float(), size=size, mode="nearest-exact")[0, 0]  # [H,W] -> [h,w]
    return image, label.long()


def pad_to(image: torch.Tensor, label: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad bottom/right to at least height x width: image with 0 (the mean colour), label with 255."""
    extra = (0, max(width - label.shape[1], 0), 0, max(height - label.shape[0], 0))
    return F.pad(image, extra, value=0.0), F.pad(label, extra, value=IGNORE_INDEX)


def random_crop(
    image: torch.Tensor, label: torch.Tensor, size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A size x size window at a uniformly random position (inputs at least that large)."""
    top = int(torch.randint(label.shape[0] - size + 1, (), generator=generator))
    left = int(torch.randint(label.shape[1] - size + 1, (), generator=generator))
    return image[:, top : top + size, left : left + size], label[top : top + size, left : left + size]


@dataclass(frozen=True)
class TrainTransform:
    """Training augmentation on a normalised image and its label: scale, pad, crop, flip."""

    crop_size: int
    scale: tuple[float, float]
    flip: bool

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = random_scale(image, label, self.scale, generator)
        image, label = pad_to(image, label, self.crop_size, self.crop_size)
        image, label = random_crop(image, label, self.crop_size, generator)
        if self.flip and torch.rand((), generator=generator) < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return image, label


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
        image, label = _to_tensors(*self.decode(self.table[index]))
        if self.transform is not None:
            item_seed = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
            generator = torch.Generator().manual_seed(int(item_seed))
            image, label = self.transform(image, label, generator)
        return {"image": image, "label": label, "index": index}


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Batch items; differently sized ones (ADE20K / COCO val) are padded with 0 / 255."""
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
        decode, info = _decode_arrays, DIGIT_SCENES
    else:
        tables, decode, info = index_files(cfg.dataset, cfg.root), _decode_files, _LAYOUTS[cfg.dataset].info
    augment = TrainTransform(cfg.crop_size, cfg.augment.scale, cfg.augment.flip)
    train = SegmentationDataset(tables["train"], decode, augment, seed)
    return train, SegmentationDataset(tables["val"], decode), info
