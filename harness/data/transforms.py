"""Tensor conversion and training augmentation: scale, pad, crop, flip, from a given generator.

Images stay uint8 until they reach the model's device, where harness.ops.normalize turns them
into floats normalised by the backbone's pretraining statistics: a quarter of the bytes
through worker queues, pinning and host-to-device copies. The training crop is resampled
from the window of the original image it covers, never from the whole image scaled first;
only the source pixels that window's filter reads are copied, so an item of a memory-mapped
prepared store costs its window, not its image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from harness.labels import IGNORE_INDEX


def to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """A uint8 RGB image [H,W,3] and a uint8 label [H,W] (views of a store too) -> uint8 [3,H,W] and [H,W] copies."""
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # [H,W,3] -> [3,H,W]
    return pixels, torch.from_numpy(np.array(label))


def pad_to(
    image: torch.Tensor, label: torch.Tensor, height: int, width: int, colour: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad bottom/right to at least height x width: image with `colour`, label with IGNORE_INDEX."""
    rows, cols = label.shape
    height, width = max(height, rows), max(width, cols)
    if (height, width) == (rows, cols):
        return image, label
    pixels = torch.tensor(colour, dtype=image.dtype).view(3, 1, 1).repeat(1, height, width)  # [3] -> [3,H,W]
    pixels[:, :rows, :cols] = image
    labels = label.new_full((height, width), IGNORE_INDEX)
    labels[:rows, :cols] = label
    return pixels, labels


@dataclass(frozen=True)
class Window:
    """A crop of the scaled image: that image's size, and the crop's part inside it (the rest is padding)."""

    scaled: tuple[int, int]  # (height, width) of the whole image after scaling
    top: int
    left: int
    height: int  # at most crop_size: fewer rows where the scaled image is shorter than the crop
    width: int


def base_factor(size: tuple[int, int], base_size: tuple[int, int] | None) -> float:
    """The factor fitting an image of `size` (height, width) into base_size (long, short), aspect kept; 1 without one.

    mmsegmentation's keep-ratio Resize: the largest factor at which neither the long side passes
    the base's long side nor the short side its short side.
    """
    if base_size is None:
        return 1.0
    return min(base_size[0] / max(size), base_size[1] / min(size))


def random_window(
    size: tuple[int, int], crop_size: int, scale: tuple[float, float], generator: torch.Generator | None = None,
    base: float = 1.0,
) -> Window:
    """Scale by `base` times a factor drawn uniformly from `scale`, pad to crop_size, and place a crop uniformly."""
    low, high = scale
    factor = base * (low + (high - low) * torch.rand((), generator=generator).item())
    scaled_height, scaled_width = (max(1, round(side * factor)) for side in size)
    # Padding goes bottom/right, so a crop of a scaled image smaller than it starts at 0.
    top = int(torch.randint(max(scaled_height, crop_size) - crop_size + 1, (), generator=generator))
    left = int(torch.randint(max(scaled_width, crop_size) - crop_size + 1, (), generator=generator))
    height, width = min(crop_size, scaled_height - top), min(crop_size, scaled_width - left)
    return Window((scaled_height, scaled_width), top, left, height, width)


def _nearest(start: int, count: int, source: int, scaled: int) -> np.ndarray:
    """Source indices of scaled pixels start..start+count-1: floor((i + 0.5) * source / scaled), "nearest-exact".

    In integers, so that a centre exactly on a source pixel edge always picks the later pixel
    (torch's float32 rounding picks either).
    """
    return (2 * np.arange(start, start + count) + 1) * source // (2 * scaled)


def _span(start: int, count: int, source: int, scaled: int) -> tuple[float, float, int, int]:
    """The window's edges in source pixels along one axis, and the source pixels [first, last) its filter reads.

    PIL reads a box as float32, so the edges are rounded to float32 here: shifted by the integer
    `first`, they stay exactly the numbers PIL would read for the whole image. The filter reaches
    one source pixel around each output centre, widened by the shrink factor when it shrinks.
    """
    low, high = (float(np.float32(edge * source / scaled)) for edge in (start, start + count))
    reach = math.ceil(max(1.0, source / scaled)) + 1
    return low, high, max(0, math.floor(low) - reach), min(source, math.ceil(high) + reach)


def resize_window(image: np.ndarray, label: np.ndarray, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """The window's part of the scaled image [h,w,3] and uint8 label [h,w], resampled from the originals:
    bilinear, nearest.

    PIL's bilinear resize widens its filter when it shrinks (antialiasing, as torch's
    antialias=True did on the whole image) and, given a box, reads the pixels around that box:
    resizing the box within the source pixels the filter reaches gives the same window of the
    whole image resized, pixel for pixel, at the cost of the window alone.
    """
    height, width = label.shape
    left, right, first_col, last_col = _span(window.left, window.width, width, window.scaled[1])
    top, bottom, first_row, last_row = _span(window.top, window.height, height, window.scaled[0])
    source = Image.fromarray(np.ascontiguousarray(image[first_row:last_row, first_col:last_col]))
    box = (left - first_col, top - first_row, right - first_col, bottom - first_row)
    pixels = source.resize((window.width, window.height), Image.Resampling.BILINEAR, box=box)
    rows = _nearest(window.top, window.height, height, window.scaled[0])
    cols = _nearest(window.left, window.width, width, window.scaled[1])
    return np.asarray(pixels), label[rows][:, cols]  # [H,W] -> [h,W] -> [h,w]


@dataclass(frozen=True)
class TrainTransform:
    """Training augmentation of a decoded (image, label): scale, pad, crop, flip, into uint8 tensors."""

    crop_size: int
    scale: tuple[float, float]
    flip: bool
    pad_colour: tuple[int, int, int]  # the backbone's mean colour (ImageStatistics.pad_colour)
    base_size: tuple[int, int] | None = None  # (long, short); see base_factor

    def __call__(
        self, image: np.ndarray, label: np.ndarray, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A uint8 RGB image [H,W,3] and label [H,W] -> the augmented crop, uint8 [3,C,C] and [C,C]."""
        base = base_factor(label.shape, self.base_size)
        window = random_window(label.shape, self.crop_size, self.scale, generator, base)
        pixels, labels = to_tensors(*resize_window(image, label, window))
        pixels, labels = pad_to(pixels, labels, self.crop_size, self.crop_size, self.pad_colour)
        if self.flip and torch.rand((), generator=generator) < 0.5:
            pixels, labels = pixels.flip(-1), labels.flip(-1)
        return pixels, labels
