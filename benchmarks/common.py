"""What the benchmarks share: dataset geometries, synthetic banks and queries, and a dense Eq. 4 reference.

Run the scripts from the repository root, as modules (`python -m benchmarks.contrast_scale`)
or as files (`python benchmarks/contrast_scale.py`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from harness import contrast
from harness.data import ADE20K, CITYSCAPES, COCO_STUFF, DIGIT_SCENES
from harness.models.heads import DEFAULT_HEAD_CHANNELS
from harness.recipe import ContrastConfig, DataConfig, DigitScenesConfig, ModelConfig

TAU = ContrastConfig().tau
DIM = DEFAULT_HEAD_CHANNELS  # DeepLabV3's feature map F
FILL_CHUNK = 65536  # entries pushed per call while filling a bank, to bound the temporaries


@dataclass(frozen=True)
class Geometry:
    """What sizes a bank: classes, training images, and the feature map of one training crop."""

    name: str
    num_classes: int
    train_images: int
    crop: int
    stride: int = ModelConfig().output_stride
    dim: int = DIM
    dtype: torch.dtype = torch.float32

    @property
    def side(self) -> int:
        """Feature-map side ceil(crop / stride), as a padded stride-8 backbone gives (769 -> 97)."""
        return math.ceil(self.crop / self.stride)

    def with_images(self, train_images: int) -> Geometry:
        """The same geometry over a training set of another size."""
        return dataclasses.replace(self, train_images=train_images)


GEOMETRIES: dict[str, Geometry] = {
    geometry.name: geometry
    for geometry in (
        Geometry("cityscapes", CITYSCAPES.num_classes, 2975, 769),
        Geometry("ade20k", ADE20K.num_classes, 20210, 512),
        # 9k training images as the paper states for COCO-Stuff (the 10k release), 171 classes.
        Geometry("coco_stuff", COCO_STUFF.num_classes, 9000, 520),
        Geometry(
            "digit_scenes", DIGIT_SCENES.num_classes, DigitScenesConfig().train_images, DataConfig().crop_size
        ),
    )
}
GEOMETRY_NOTES = {
    "ade20k": "the paper trains ADE20K at crop 480 (60x60 features)",
    "coco_stuff": "9k training images as the paper states (the COCO-Stuff-10k split), harness.data's 171 classes",
}


def random_unit_bank(geometry: Geometry, generator: torch.Generator) -> Tensor:
    """A full bank [N,K,C] of random unit keys, one slot per training image, normalised in place."""
    keys = torch.randn(geometry.num_classes, geometry.train_images, geometry.dim, generator=generator)
    return keys.div_(keys.norm(dim=2, keepdim=True))


def batch_queries(
    classes: int, generator: torch.Generator, images: int = 16, present: int = 10, dim: int = DIM
) -> tuple[Tensor, Tensor]:
    """Region centers [M,C] and labels [M] of `images` images with `present` distinct classes each."""
    labels = torch.cat([torch.randperm(classes, generator=generator)[:present] for _ in range(images)])
    return torch.randn(len(labels), dim, generator=generator), labels


def fill_queues(queues: contrast.ClassQueues, generator: torch.Generator) -> None:
    """Push random keys until every slot of every class holds one (a bank at steady state)."""
    device = queues.slots.device
    labels = torch.arange(queues.num_classes, device=device).repeat_interleave(queues.size)  # [NK]
    for part in labels.split(FILL_CHUNK):
        queues.push(torch.randn(len(part), queues.dim, generator=generator, device=device), part)


def fill_all_pixels(bank: contrast.AllPixelBank, num_classes: int, generator: torch.Generator) -> None:
    """Every pixel slot of every image: a random unit key of a random class."""
    keys = torch.randn(bank.keys.shape, generator=generator, device=bank.keys.device)
    bank.keys.copy_(F.normalize(keys, dim=2))
    classes = torch.randint(num_classes, bank.labels.shape, generator=generator, device=bank.labels.device)
    bank.labels.copy_(classes)


def fill_bank(bank: contrast.Bank, num_classes: int, generator: torch.Generator) -> None:
    """Fill any bank kind to the brim, as a long run leaves it."""
    if isinstance(bank, contrast.AllPixelBank):
        fill_all_pixels(bank, num_classes, generator)
        return
    queues = {contrast.PixelBank: lambda b: [b.pixels, b.segments], contrast.ShardedRegionBank: lambda b: [b.queues]}
    for part in queues.get(type(bank), lambda b: [b])(bank):
        fill_queues(part, generator)


def dense_info_nce(
    queries: Tensor, query_labels: Tensor, keys: Tensor, key_labels: Tensor, usable: Tensor, tau: float,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Eq. 4 with the whole [M,K] score matrix under autograd: the reference the streamed loss must equal.

    `usable` [M,K] (or [1,K]) says which keys count for which query. In float64 it is the tests'
    reference; in float32 it is the direct loss the streamed one replaced, for time and memory.
    """
    scores = F.normalize(queries.to(dtype), dim=1) @ F.normalize(keys.to(dtype), dim=1).T / tau  # [M,K]
    same = query_labels[:, None] == key_labels[None, :]
    positive = same & usable
    negatives = scores.masked_fill(same | ~usable, float("-inf")).logsumexp(1, keepdim=True)  # [M,1]
    # -log(e^s / (e^s + sum_n e^n)) = softplus(logsumexp_n - s); exactly 0 without negatives.
    per_pair = torch.where(positive, F.softplus(negatives - scores), 0.0)
    count = positive.sum(1)
    has_positive = count > 0
    per_query = per_pair.sum(1) / count.clamp_min(1)
    return (per_query * has_positive).sum() / has_positive.sum().clamp_min(1)


def dense_bank_loss(
    queries: Tensor, query_labels: Tensor, bank_keys: Tensor, bank_valid: Tensor, tau: float,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """dense_info_nce against a per-class bank [N,K,C] with valid [N,K]."""
    num_classes, size, dim = bank_keys.shape
    key_labels = torch.arange(num_classes, device=bank_keys.device).repeat_interleave(size)
    keys = bank_keys.reshape(num_classes * size, dim)  # [N,K,C] -> [NK,C]
    usable = bank_valid.reshape(1, num_classes * size)  # [N,K] -> [1,NK]
    return dense_info_nce(queries, query_labels, keys, key_labels, usable, tau, dtype)
