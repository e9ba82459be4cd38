"""Pixel sampling: ContrastiveSeg's hard-anchor sampling, and random pixels per image and class."""

from __future__ import annotations

import torch
from torch import Tensor

from harness.labels import IGNORE_INDEX


def flat_pixels(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pixel features [BP,C], labels [BP] and image indices [BP]."""
    batch, dim = features.shape[:2]
    flat_features = features.flatten(2).transpose(1, 2).reshape(-1, dim)  # [B,C,H,W] -> [B,P,C] -> [BP,C]
    flat_labels = labels.flatten().long()  # [B,H,W] -> [BP]
    images = torch.arange(batch, device=labels.device).repeat_interleave(labels[0].numel())
    return flat_features, flat_labels, images


def shuffle_within_groups(groups: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """A group-major order of the items, random inside each group, and each item's rank in it."""
    device = generator.device if generator is not None else groups.device
    noise = torch.rand(groups.shape, generator=generator, device=device).to(groups.device)
    order = noise.argsort()
    order = order[groups[order].argsort(stable=True)]  # stable sort keeps the random order inside a group
    sorted_groups = groups[order]
    first = torch.searchsorted(sorted_groups, sorted_groups)  # where each item's group starts
    return order, torch.arange(groups.numel(), device=groups.device) - first


def anchor_quotas(counts: Tensor, views: int) -> Tensor:
    """Per (image, class) pair with [easy, hard] counts [U,2]: how many of each to sample [U,2].

    Half hard, half easy; when one kind runs short the other fills up (ContrastiveSeg).
    """
    easy, hard = counts.unbind(1)
    take_hard = torch.minimum(hard, torch.clamp(views - easy, min=views // 2))
    take_easy = torch.minimum(easy, views - take_hard)
    return torch.stack([take_easy, take_hard], 1)


def sample_anchors(
    features: Tensor,
    labels: Tensor,
    predictions: Tensor,
    max_samples: int = 1024,
    max_views: int = 100,
    generator: torch.Generator | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[Tensor, Tensor]:
    """ContrastiveSeg's hard-anchor sampling: anchor features [A,C] and labels [A].

    Per image and ground-truth class, up to min(max_views, max_samples // pairs)
    pixels, half hard (prediction != label) and half easy. Unlike ContrastiveSeg,
    a class with fewer pixels than that still gives all it has instead of being
    dropped, which at stride 8 on small crops would drop every class.
    """
    flat_features, flat_labels, images = flat_pixels(features, labels)
    kept = (flat_labels != ignore_index).nonzero()[:, 0]
    image_class = torch.stack([images[kept], flat_labels[kept]], 1)  # [S,2]
    pairs, pair_of = torch.unique(image_class, dim=0, return_inverse=True)
    views = min(max_views, max_samples // max(len(pairs), 1))
    hard = (predictions.flatten()[kept] != flat_labels[kept]).long()  # [B,H,W] -> [BP] -> [S]
    groups = pair_of * 2 + hard
    counts = torch.bincount(groups, minlength=2 * len(pairs)).reshape(-1, 2)  # [2U] -> [U,2]
    quotas = anchor_quotas(counts, views).flatten()  # [U,2] -> [2U]
    order, rank = shuffle_within_groups(groups, generator)
    chosen = kept[order[rank < quotas[groups[order]]]]
    return flat_features[chosen], flat_labels[chosen]


