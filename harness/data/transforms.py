"""Normalisation and training augmentation: scale, pad, crop, flip, each from a given generator."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from harness.labels import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)  # [3] -> [3,1,1]
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)  # [3] -> [3,1,1]


def to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
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
    """Pad bottom/right to at least height x width: image with 0 (the mean colour), label with IGNORE_INDEX."""
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


