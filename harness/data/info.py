"""What models, metrics and reports need to know about a dataset's classes; tables named by their content."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Any

import datasets

RGB = tuple[int, int, int]




@dataclass(frozen=True)
class DatasetInfo:
    """What models, metrics and reports need to know about a dataset's classes."""

    name: str
    num_classes: int
    class_names: list[str]
    palette: list[RGB]

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



class _Unhashed(datasets.Dataset):
    """A Dataset built without hashing its bytes, only so that keyed_table can name it instead."""

    def __init__(self, arrow_table: Any, info: Any = None, split: Any = None, indices_table: Any = None,
                 fingerprint: str | None = None) -> None:
        super().__init__(arrow_table, info, split, indices_table, fingerprint or "unhashed")


def keyed_table(columns: dict[str, Any], key: str, features: datasets.Features | None = None) -> datasets.Dataset:
    """A `datasets` table of `columns`, fingerprinted by `key` (what it holds) rather than a hash of its bytes.

    `datasets` hashes a new table's every byte with dill to name it: slow for image arrays, and with
    pyarrow 26 on Python 3.12 it fails outright (dill cannot pickle pyarrow's MonthDayNano type).
    """
    built = _Unhashed.from_dict(columns, features=features)
    return datasets.Dataset(built.data, info=built.info, fingerprint=key)
