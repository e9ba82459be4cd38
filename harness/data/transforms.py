"""Tensor conversion and training augmentation: scale, pad, crop, flip, from a given generator.

Images stay uint8 until they reach the model's device, where harness.ops.normalize turns them
into floats normalised by the backbone's pretraining statistics: a quarter of the bytes
through worker queues, pinning and host-to-device copies. The training crop is
resampled from the window of the original image it covers, never from the whole image scaled first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from harness.labels import IGNORE_INDEX


def to_tensors(image: Image.Image, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """An RGB image and a uint8 label [H,W] -> uint8 [3,H,W] and int64 [H,W]."""
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # [H,W,3] -> [3,H,W]
    return pixels, torch.from_numpy(label.astype(np.int64))


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


def resize_window(image: Image.Image, label: np.ndarray, window: Window) -> tuple[Image.Image, np.ndarray]:
    """The window's part of the scaled image and uint8 label [h,w], resampled from the originals: bilinear, nearest.

    PIL's bilinear resize widens its filter when it shrinks (antialiasing, as torch's
    antialias=True did on the whole image) and, given a box, reads the pixels around that box
    too: the result equals the same window of the whole image resized, at a fraction of the cost.
    """
    height, width = label.shape
    scaled_height, scaled_width = window.scaled
    box = (
        window.left * width / scaled_width,
        window.top * height / scaled_height,
        (window.left + window.width) * width / scaled_width,
        (window.top + window.height) * height / scaled_height,
    )
    pixels = image.resize((window.width, window.height), Image.Resampling.BILINEAR, box=box)
    rows = _nearest(window.top, window.height, height, scaled_height)
    cols = _nearest(window.left, window.width, width, scaled_width)
    return pixels, label[rows[:, None], cols]  # [H,W] -> [h,w]


@dataclass(frozen=True)
class TrainTransform:
    """Training augmentation of a decoded (image, label): scale, pad, crop, flip, into uint8 / int64 tensors."""

    crop_size: int
    scale: tuple[float, float]
    flip: bool
    pad_colour: tuple[int, int, int]  # the backbone's mean colour (ImageStatistics.pad_colour)
    base_size: tuple[int, int] | None = None  # (long, short); see base_factor

    def __call__(
        self, image: Image.Image, label: np.ndarray, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        base = base_factor(label.shape, self.base_size)
        window = random_window(label.shape, self.crop_size, self.scale, generator, base)
        pixels, labels = to_tensors(*resize_window(image, label, window))
        pixels, labels = pad_to(pixels, labels, self.crop_size, self.crop_size, self.pad_colour)
        if self.flip and torch.rand((), generator=generator) < 0.5:
            pixels, labels = pixels.flip(-1), labels.flip(-1)
        return pixels, labels
