"""Small tensor helpers every layer uses: image normalisation, logit upsampling, label resizing.

Base layer: torch and harness.labels only, so data, models, losses, contrast and the engine
all read images, logits and label maps the same way.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ImageStatistics:
    """The per-channel mean and std (fractions of 255) a backbone's pretraining normalised its images with."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def pad_colour(self) -> tuple[int, int, int]:
        """The uint8 colour closest to the mean: padding with it normalises to (almost exactly) 0, as
        mmsegmentation's padding of normalised images with 0 does."""
        red, green, blue = (round(255 * mean) for mean in self.mean)
        return red, green, blue


IMAGENET = ImageStatistics((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@functools.cache
def _on_device(statistics: ImageStatistics, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and std [3,1,1] on `device`, made once: a fresh copy from the host each step would sync."""
    mean = torch.tensor(statistics.mean, device=device).view(3, 1, 1)  # [3] -> [3,1,1]
    std = torch.tensor(statistics.std, device=device).view(3, 1, 1)  # [3] -> [3,1,1]
    return mean, std


def normalize(images: torch.Tensor, dtype: torch.dtype, statistics: ImageStatistics) -> torch.Tensor:
    """uint8 images [B,3,H,W] on any device -> `dtype` normalised by `statistics`, computed in float32."""
    mean, std = _on_device(statistics, images.device)
    return ((images.float() / 255 - mean) / std).to(dtype)


def upsample_to(logits: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """Bilinearly resize logits [B,N,h,w] to [B,N,*size], as DeepLab does before the loss.

    align_corners (model.align_corners) pins the corner cells to the corner pixels: with a crop of
    stride * k + 1 pixels (DeepLab's 769 = 8 * 96 + 1), cell k then lands exactly on pixel stride * k.
    """
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour label map at the feature resolution: [B,H,W] -> [B,h,w]."""
    resized = F.interpolate(labels[:, None].float(), size=size, mode="nearest")  # [B,1,h,w]
    return resized[:, 0].long()
