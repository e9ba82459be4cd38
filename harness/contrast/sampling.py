"""Pixel sampling with fixed shapes: ContrastiveSeg's hard-anchor sampling, and random pixels per image and class.

Every tensor's shape follows from the inputs' shapes alone. Pixels are grouped by sorting, counted
with searchsorted, chosen by a mask and packed, in order, into a fixed number of slots whose padding
a mask marks, so a step never waits for the host to learn how many pixels a class has.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from harness.labels import IGNORE_INDEX


class PixelSample(NamedTuple):
    """Chosen pixels in fixed slots: flat indices b * H * W + p [S] (0 in padding slots) and valid [S]."""

    pixels: Tensor
    valid: Tensor

    def features(self, features: Tensor) -> Tensor:
        """The chosen pixels' features [S,C] from a feature map [B,C,H,W] (padding slots: pixel 0's)."""
        per_image = features[0, 0].numel()
        by_pixel = features.flatten(2).transpose(1, 2)  # [B,C,H,W] -> [B,P,C], a view: only S rows are copied
        return by_pixel[self.pixels // per_image, self.pixels % per_image]

    def labels(self, labels: Tensor, padding: int) -> Tensor:
        """The chosen pixels' labels [S] from labels [B,H,W], `padding` in padding slots."""
        return torch.where(self.valid, labels.flatten().long()[self.pixels], padding)  # [B,H,W] -> [BP] -> [S]


def image_class_groups(labels: Tensor, eligible: Tensor) -> Tensor:
    """Each pixel's (image, class) group [BP], numbered image-major then by class; the ineligible last.

    The classes' span is a device scalar (the largest eligible label + 1), so no count reaches the host.
    """
    batch = labels.shape[0]
    classes = torch.where(eligible, labels, 0).flatten(1).long()  # [B,H,W] -> [B,P]
    span = classes.max() + 1
    images = torch.arange(batch, device=labels.device)[:, None]  # [B,1]
    return torch.where(eligible.flatten(1), images * span + classes, batch * span).flatten()  # [B,P] -> [BP]


def shuffle_within_groups(groups: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """A group-major order of the items, uniformly random inside each group, and each ordered item's rank in it."""
    device = generator.device if generator is not None else groups.device
    noise = torch.rand(groups.shape, generator=generator, device=device).to(groups.device)
    order = noise.argsort()
    order = order[groups[order].argsort(stable=True)]  # stable sort keeps the random order inside a group
    sorted_groups = groups[order]
    first = torch.searchsorted(sorted_groups, sorted_groups)  # where each item's group starts
    return order, torch.arange(groups.numel(), device=groups.device) - first


def group_sizes(sorted_groups: Tensor, groups: Tensor) -> Tensor:
    """How many items of the ascending `sorted_groups` belong to each of `groups` (any shape)."""
    return torch.searchsorted(sorted_groups, groups, right=True) - torch.searchsorted(sorted_groups, groups)


def pack(order: Tensor, chosen: Tensor, capacity: int) -> PixelSample:
    """The items of `order` [S] that `chosen` [S] marks, in that order, in `capacity` slots.

    The caller guarantees at most `capacity` are chosen. Unchosen items are written to one spare
    slot past the end, so the scatter needs no count from the host.
    """
    slots = chosen.long().cumsum(0) - 1
    target = torch.where(chosen, slots, capacity)
    pixels = order.new_zeros(capacity + 1).index_copy_(0, target, order)[:capacity]
    valid = torch.arange(capacity, device=order.device) < chosen.sum()
    return PixelSample(torch.where(valid, pixels, 0), valid)


def anchor_quotas(easy: Tensor, hard: Tensor, views: Tensor) -> tuple[Tensor, Tensor]:
    """How many easy and hard pixels an (image, class) pair with `easy` and `hard` of them gives (any shape).

    Half hard, half easy; when one kind runs short the other fills up (ContrastiveSeg).
    """
    take_hard = torch.minimum(hard, torch.maximum(views - easy, views // 2))
    return torch.minimum(easy, views - take_hard), take_hard


def anchor_pixels(
    labels: Tensor,
    predictions: Tensor,
    max_samples: int,
    max_views: int,
    generator: torch.Generator | None,
    ignore_index: int = IGNORE_INDEX,
) -> PixelSample:
    """ContrastiveSeg's hard-anchor choice in min(max_samples, B*H*W) slots, pair-major (see sample_anchors)."""
    eligible = labels != ignore_index
    hard = (predictions != labels).flatten().long()  # [B,H,W] -> [BP]
    groups = image_class_groups(labels, eligible) * 2 + hard  # (pair, easy / hard)
    order, rank = shuffle_within_groups(groups, generator)
    sorted_groups, sorted_hard, sorted_eligible = groups[order], hard[order], eligible.flatten()[order]
    own, other = group_sizes(sorted_groups, sorted_groups), group_sizes(sorted_groups, sorted_groups ^ 1)
    # A pair starts wherever the sorted pair number changes; the ineligible group is not one.
    pair = sorted_groups // 2
    starts = torch.ones_like(sorted_eligible)
    starts[1:] = pair[1:] != pair[:-1]
    pairs = (starts & sorted_eligible).sum()
    views = (max_samples // pairs.clamp_min(1)).clamp_max(max_views)
    take_easy, take_hard = anchor_quotas(torch.where(sorted_hard == 1, other, own),
                                         torch.where(sorted_hard == 1, own, other), views)
    chosen = sorted_eligible & (rank < torch.where(sorted_hard == 1, take_hard, take_easy))
    return pack(order, chosen, min(max_samples, labels.numel()))


def class_pixels(
    labels: Tensor, per_class: int, num_classes: int, generator: torch.Generator | None,
    ignore_index: int = IGNORE_INDEX,
) -> PixelSample:
    """Up to `per_class` random pixels of each image and class of labels [B,H,W] in [0, num_classes), image-major."""
    eligible = labels != ignore_index
    order, rank = shuffle_within_groups(image_class_groups(labels, eligible), generator)
    chosen = eligible.flatten()[order] & (rank < per_class)
    return pack(order, chosen, min(labels.shape[0] * num_classes * per_class, labels.numel()))


def sample_anchors(
    features: Tensor,
    labels: Tensor,
    predictions: Tensor,
    max_samples: int = 1024,
    max_views: int = 100,
    generator: torch.Generator | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[Tensor, Tensor]:
    """ContrastiveSeg's hard-anchor sampling: anchor features [A,C] and labels [A], A = min(max_samples, B*H*W).

    Per image and ground-truth class present (ignored pixels never count), up to
    views = min(max_views, max_samples // pairs) pixels, uniformly at random: half hard
    (prediction != label) and half easy, the other kind filling up where one runs short,
    so never more than max_samples in all. Unlike ContrastiveSeg, a class with fewer pixels
    than that still gives all it has instead of being dropped, which at stride 8 on small
    crops would drop every class. Anchors come pair-major (image, then class), easy before
    hard; the slots after them are padding, labelled ignore_index.
    """
    sample = anchor_pixels(labels, predictions, max_samples, max_views, generator, ignore_index)
    return sample.features(features), sample.labels(labels, ignore_index)
