"""Cityscapes, ADE20K and COCO-Stuff as they lie on disk: class tables, label maps, file indexes, decoding.

Hugging Face `datasets` tables index the (image, label) file pairs; each row names the
label map that turns the label file's pixel values into train ids, and is decoded with
PIL (per item, or once into the prepared store). A file that cannot be used is a DataError naming it.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import scipy.io
from PIL import Image

from harness.data.info import RGB, DatasetInfo, generated_palette, keyed_table
from harness.labels import IGNORE_INDEX
from harness.recipe import RecipeError

Row = dict[str, Any]

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

CITYSCAPES = DatasetInfo(
    "cityscapes",
    19,
    [name for name, _ in _CITYSCAPES_CLASSES.values()],
    [colour for _, colour in _CITYSCAPES_CLASSES.values()],
)
ADE20K = DatasetInfo("ade20k", 150, _ADE20K_NAMES, generated_palette(150))
COCO_STUFF = DatasetInfo("coco_stuff", 171, _COCO_STUFF_NAMES, generated_palette(171))
# COCO-Stuff-10k, the paper's 9k / 1k benchmark: the same 171 classes, another split and file format.
COCO_STUFF10K = DatasetInfo("coco_stuff10k", 171, _COCO_STUFF_NAMES, generated_palette(171))


class DataError(ValueError):
    """A dataset file that cannot be used: the message names it and says what is wrong."""


@dataclass(frozen=True)
class LabelMap:
    """How a label file's values become train ids."""

    table: np.ndarray  # uint8 [256]: raw value -> train id; IGNORE_INDEX for what is not evaluated
    # A labelTrainIds file's class count: an id from it to IGNORE_INDEX - 1 is a broken file, not ignored
    # (it would index past the classifier). None: raw ids, whose unlisted values are void classes, ignored.
    classes: int | None = None

    def apply(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Train ids [H,W] of a label file's raw values [H,W]; a train id outside the table is a DataError."""
        if self.classes is not None:
            present = np.bincount(raw.ravel(), minlength=256)  # [H,W] -> [256] counts
            outside = np.flatnonzero(present[self.classes:IGNORE_INDEX]) + self.classes
            if outside.size:
                raise DataError(f"{path}: train ids {outside.tolist()} outside the table "
                                f"(0-{self.classes - 1}, and {IGNORE_INDEX} for ignored pixels)")
        return self.table[raw]


def _lookup(train_ids: dict[int, int]) -> LabelMap:
    """Raw label values to train ids, everything else to IGNORE_INDEX."""
    table = np.full(256, IGNORE_INDEX, np.uint8)
    table[list(train_ids)] = list(train_ids.values())
    return LabelMap(table)


def _train_ids(classes: int) -> LabelMap:
    """A labelTrainIds file's values as they are: ids below `classes`, or IGNORE_INDEX."""
    return LabelMap(np.arange(256, dtype=np.uint8), classes)


# How a label file's pixel values become train ids, by the `label_map` column of an index.
LABEL_MAPS: dict[str, LabelMap] = {
    "cityscapes_train_ids": _train_ids(CITYSCAPES.num_classes),
    "cityscapes_label_ids": _lookup({label_id: k for k, label_id in enumerate(_CITYSCAPES_CLASSES)}),
    "ade20k": _lookup({k + 1: k for k in range(150)}),
    "coco_stuff_train_ids": _train_ids(COCO_STUFF.num_classes),
    "coco_stuff_raw": _lookup({raw: k for k, raw in enumerate(_COCO_USED_IDS)}),
    # COCO-Stuff-10k's .mat labels count from 1 (0 = unlabeled): the 164k ids shifted by one.
    "coco_stuff10k_mat": _lookup({raw + 1: k for k, raw in enumerate(_COCO_USED_IDS)}),
}


def _inverse(label_map: LabelMap) -> np.ndarray:
    """A 256-entry table sending each train id back to the raw label value `label_map` sends to it."""
    raw_values = np.flatnonzero(label_map.table != IGNORE_INDEX)
    inverse = np.zeros(256, np.uint8)
    inverse[label_map.table[raw_values]] = raw_values
    return inverse


# How predicted train ids become the values a benchmark's test server expects: the inverse label maps.
SUBMISSION_MAPS: dict[str, np.ndarray] = {
    "cityscapes": _inverse(LABEL_MAPS["cityscapes_label_ids"]),  # labelIds
    "ade20k": _inverse(LABEL_MAPS["ade20k"]),  # 1..150
    "coco_stuff": _inverse(LABEL_MAPS["coco_stuff_raw"]),  # the stuffthingmaps' own ids
    "coco_stuff10k": _inverse(LABEL_MAPS["coco_stuff10k_mat"]),  # its .mat ids, 1..182
}

# ---------------------------------------------------------------- real datasets on disk


def _pair(image: Path, candidates: list[tuple[Path, str]]) -> Row:
    """The index row of `image`: the first label candidate that exists, with its label map."""
    for label, label_map in candidates:
        if label.is_file():
            return {"image": str(image), "label": str(label), "label_map": label_map}
    expected = " or ".join(str(label) for label, _ in candidates)
    raise RecipeError("data.root", f"label file missing for {image}: expected {expected}")


def _cityscapes_images(root: Path, split: str) -> list[Path]:
    """leftImg8bit/<split>/<city>/*_leftImg8bit.png."""
    return sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))


def _cityscapes_rows(root: Path, split: str) -> list[Row]:
    """leftImg8bit images paired with gtFine labelTrainIds (when present) or labelIds."""
    rows = []
    for image in _cityscapes_images(root, split):
        stem = image.name.removesuffix("_leftImg8bit.png")
        labels = root / "gtFine" / split / image.parent.name
        candidates = [
            (labels / f"{stem}_gtFine_labelTrainIds.png", "cityscapes_train_ids"),
            (labels / f"{stem}_gtFine_labelIds.png", "cityscapes_label_ids"),
        ]
        rows.append(_pair(image, candidates))
    return rows


def _ade20k_base(root: Path) -> Path:
    """The folder holding images/ and annotations/: root itself or its ADEChallengeData2016/."""
    return root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root


def _ade20k_images(root: Path, split: str) -> list[Path]:
    """[ADEChallengeData2016/]images/<split>/*.jpg."""
    return sorted((_ade20k_base(root) / "images" / split).glob("*.jpg"))


def _ade20k_rows(root: Path, split: str) -> list[Row]:
    """images/<split>/*.jpg paired with annotations/<split>/*.png (0 = other)."""
    labels = _ade20k_base(root) / "annotations" / split
    return [_pair(image, [(labels / f"{image.stem}.png", "ade20k")]) for image in _ade20k_images(root, split)]


def _coco_stuff_images(root: Path, split: str) -> list[Path]:
    """images/<split>/*.jpg."""
    return sorted((root / "images" / split).glob("*.jpg"))


def _coco_stuff_rows(root: Path, split: str) -> list[Row]:
    """images/<split>/*.jpg paired with *_labelTrainIds.png, else the raw stuffthingmaps *.png."""
    labels = root / "annotations" / split
    rows = []
    for image in _coco_stuff_images(root, split):
        candidates = [
            (labels / f"{image.stem}_labelTrainIds.png", "coco_stuff_train_ids"),
            (labels / f"{image.stem}.png", "coco_stuff_raw"),
        ]
        rows.append(_pair(image, candidates))
    return rows


def _coco_stuff10k_images(root: Path, split: str) -> list[Path]:
    """images/<name>.jpg for each name in imageLists/<split>.txt (none without the list)."""
    listing = root / "imageLists" / f"{split}.txt"
    if not listing.is_file():
        return []
    images = [root / "images" / f"{name}.jpg" for name in listing.read_text().split()]
    for image in images:
        if not image.is_file():
            raise RecipeError("data.root", f"{listing} names {image.stem}, but {image} is missing")
    return images


def _coco_stuff10k_rows(root: Path, split: str) -> list[Row]:
    """The listed images with annotations/<name>.mat."""
    return [
        _pair(image, [(root / "annotations" / f"{image.stem}.mat", "coco_stuff10k_mat")])
        for image in _coco_stuff10k_images(root, split)
    ]


@dataclass(frozen=True)
class Layout:
    """How one real dataset lies on disk."""

    info: DatasetInfo
    splits: tuple[str, str]  # folder names of the (train, val) splits
    rows: Callable[[Path, str], list[Row]]
    expected: str  # the layout, spelled out for error messages


LAYOUTS = {
    "cityscapes": Layout(
        CITYSCAPES,
        ("train", "val"),
        _cityscapes_rows,
        "<root>/leftImg8bit/{train,val}/<city>/<city>_*_leftImg8bit.png with "
        "<root>/gtFine/{train,val}/<city>/<city>_*_gtFine_labelIds.png",
    ),
    "ade20k": Layout(
        ADE20K,
        ("training", "validation"),
        _ade20k_rows,
        "<root>[/ADEChallengeData2016]/images/{training,validation}/*.jpg with "
        "annotations/{training,validation}/*.png",
    ),
    "coco_stuff": Layout(
        COCO_STUFF,
        ("train2017", "val2017"),
        _coco_stuff_rows,
        "<root>/images/{train2017,val2017}/*.jpg with "
        "<root>/annotations/{train2017,val2017}/*_labelTrainIds.png (or raw stuffthingmaps *.png)",
    ),
    "coco_stuff10k": Layout(
        COCO_STUFF10K,
        ("train", "test"),
        _coco_stuff10k_rows,
        "<root>/imageLists/{train,test}.txt naming <root>/images/<name>.jpg with <root>/annotations/<name>.mat "
        "(matrix S: 0 = unlabeled, 1-182 = COCO-Stuff ids)",
    ),
}


def index_files(name: str, root: Path | None) -> datasets.DatasetDict:
    """Index a real dataset's (image, label) file pairs into train and val tables."""
    layout = LAYOUTS[name]
    if root is None or not Path(root).is_dir():
        message = f"{name} needs data.root, an existing folder laid out as {layout.expected}; got {root}"
        raise RecipeError("data.root", message)
    tables = {}
    for split, folder in zip(("train", "val"), layout.splits):
        rows = layout.rows(Path(root), folder)
        if not rows:
            raise RecipeError("data.root", f"no {name} '{folder}' images under {root}; expected {layout.expected}")
        paths = hashlib.sha256("\n".join(row["image"] for row in rows).encode()).hexdigest()[:16]
        tables[split] = keyed_table({column: [row[column] for row in rows] for column in rows[0]}, f"{name}-{paths}")
    return datasets.DatasetDict(tables)


@dataclass(frozen=True)
class Submission:
    """How a test server wants one real dataset's predictions."""

    images: Callable[[Path, str], list[Path]]  # a split's images, labelled or not
    file_name: Callable[[Path], str]  # the prediction file's name for an image
    table: np.ndarray  # train id -> submitted value


SUBMISSIONS = {
    # cityscapesScripts finds a prediction by the <city>_<seq>_<frame> in its name.
    "cityscapes": Submission(_cityscapes_images, lambda image: image.name, SUBMISSION_MAPS["cityscapes"]),
    "ade20k": Submission(_ade20k_images, lambda image: f"{image.stem}.png", SUBMISSION_MAPS["ade20k"]),
    "coco_stuff": Submission(_coco_stuff_images, lambda image: f"{image.stem}.png", SUBMISSION_MAPS["coco_stuff"]),
    "coco_stuff10k": Submission(
        _coco_stuff10k_images, lambda image: f"{image.stem}.png", SUBMISSION_MAPS["coco_stuff10k"]
    ),
}


def index_images(name: str, root: Path | None, split: str | None) -> datasets.Dataset:
    """The images of one split (a test split has no labels; default: the val split), as a table for decode_image."""
    if name not in SUBMISSIONS:
        raise RecipeError("data.dataset", f"{name} has no test-server format; exports exist for {', '.join(SUBMISSIONS)}")
    split = split or LAYOUTS[name].splits[1]
    images = SUBMISSIONS[name].images(Path(root), split) if root is not None else []
    if not images:
        raise RecipeError("data.root", f"no {name} '{split}' images under {root}; expected {LAYOUTS[name].expected}")
    paths = hashlib.sha256("\n".join(str(image) for image in images).encode()).hexdigest()[:16]
    return keyed_table({"image": [str(image) for image in images]}, f"{name}-images-{paths}")


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """An image file open in PIL; one PIL cannot read (truncated, not an image) is a DataError naming it."""
    try:
        with Image.open(path) as image:
            yield image
    except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for broken files
        raise DataError(f"{path}: unreadable image ({error})") from None


def read_image(path: Path) -> np.ndarray:
    """An image file's pixels as uint8 RGB [H,W,3]."""
    with _opened(path) as image:
        return np.asarray(image.convert("RGB"))


def image_size(path: Path) -> tuple[int, int]:
    """An image file's (height, width), from its header alone."""
    with _opened(path) as image:
        return image.height, image.width


def decode_image(row: Row) -> tuple[np.ndarray, np.ndarray]:
    """Read an image (uint8 RGB [H,W,3]) with no label: every pixel IGNORE_INDEX."""
    pixels = read_image(Path(row["image"]))
    return pixels, np.full(pixels.shape[:2], IGNORE_INDEX, np.uint8)


def decode_files(row: Row) -> tuple[np.ndarray, np.ndarray]:
    """Read an image (uint8 RGB [H,W,3]) and its label (mapped to uint8 train ids [H,W]) with PIL.

    Every way a pair can be broken is a DataError naming the file: unreadable, a label whose size
    differs from its image's, a train id outside the table.
    """
    pixels = read_image(Path(row["image"]))
    raw = read_label(Path(row["label"]))
    if pixels.shape[:2] != raw.shape:
        raise DataError(f"{row['label']}: label is {raw.shape[1]}x{raw.shape[0]} (width x height), "
                        f"but its image {row['image']} is {pixels.shape[1]}x{pixels.shape[0]}")
    return pixels, LABEL_MAPS[row["label_map"]].apply(raw, Path(row["label"]))


def read_label(path: Path) -> np.ndarray:
    """A label file's raw values [H,W] as uint8: a one-channel PNG, or the matrix S of a COCO-Stuff-10k .mat file."""
    try:
        if path.suffix == ".mat":
            raw = scipy.io.loadmat(path, variable_names=["S"]).get("S")
        else:
            with Image.open(path) as label:
                raw = np.asarray(label)
    except (OSError, SyntaxError, ValueError) as error:  # PIL's and scipy's errors for broken files
        raise DataError(f"{path}: unreadable label ({error})") from None
    if raw is None or raw.ndim != 2 or (raw.dtype != np.uint8 and (raw.min() < 0 or raw.max() > 255)):
        raise DataError(f"{path}: holds no label map of ids 0-255 (one channel; in a .mat file, the matrix S)")
    return raw.astype(np.uint8, copy=False)
