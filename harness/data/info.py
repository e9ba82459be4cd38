"""What models, metrics and reports need to know about a dataset's classes."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

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

