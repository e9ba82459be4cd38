"""The contrastive terms: which bank a recipe asks for, and each kind's loss and push.

A term is where the gathers happen. Each rank computes its own queries into fixed
shapes, gathers them, and pushes the gathered entries in the same order on every
rank, so replicated banks stay bitwise identical. The loss reads the bank before
this step's push: a query never meets its own center.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Protocol

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from harness import contrast
from harness.contrast import Bank
from harness.losses import upsample_to
from harness.models import SegmentationModel, SegOutput
from harness.recipe import ContrastConfig, Recipe

Batch = dict[str, torch.Tensor]


class ContrastTerm(Protocol):
    """One contrast kind: its bank (None for in-batch) and its unweighted loss for a step."""

    bank: Bank | None

    def __call__(
        self, output: SegOutput, batch: Batch, with_loss: bool = True, push: bool = True
    ) -> torch.Tensor | None:
        """The loss of this rank's batch (None unless with_loss); then the gathered batch goes into the bank,
        now if push, else together with the next pushed micro-batch (see PendingPushes)."""


class PendingPushes:
    """Bank writes held back until the optimizer step, then made in the order of their micro-batches."""

    def __init__(self) -> None:
        self.writes: list[Callable[[], None]] = []

    def add(self, write: Callable[[], None], now: bool) -> None:
        """Hold `write`; when `now`, make every held write."""
        self.writes.append(write)
        if now:
            for held in self.writes:
                held()
            self.writes.clear()


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour label map at the feature resolution: [B,H,W] -> [B,h,w]."""
    resized = F.interpolate(labels[:, None].float(), size=size, mode="nearest")  # [B,1,h,w]
    return resized[:, 0].long()


def embedding(cfg: ContrastConfig, output: SegOutput, align_corners: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The feature map that the contrast uses and the logits at its resolution."""
    features = output.features if cfg.feature == "head" else output.backbone_features
    return features, upsample_to(output.logits, tuple(features.shape[-2:]), align_corners)


class RegionTerm:
    """Eq. 4 of this rank's region centers against a region bank (replicated or sharded), then a push."""

    def __init__(self, accelerator: Accelerator, cfg: ContrastConfig, bank: contrast.RegionBank | contrast.ShardedRegionBank,
                 num_classes: int, align_corners: bool = False) -> None:
        self.accelerator, self.cfg, self.bank, self.num_classes = accelerator, cfg, bank, num_classes
        self.align_corners = align_corners  # the model's: how its logits resize onto the contrast's feature map
        # Most (image, class) slots are padding (classes absent from the image). On a GPU they stay, masked,
        # so that no step waits for the host to count them; on a CPU, host and device are one, and dropping
        # them saves most of the loss's work. A sharded bank needs every rank's rows alike, so it keeps them.
        self.drop_padding = accelerator.device.type == "cpu" and bank is not None and bank.replicated
        self.pending = PendingPushes()

    def local_centers(self, output: SegOutput, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's region centers [B,N,C] (with their graph) and valid [B,N]."""
        features, logits = embedding(self.cfg, output, self.align_corners)
        small_labels = resize_labels(labels, tuple(features.shape[-2:]))
        return contrast.region_centers(features, logits, small_labels, self.num_classes, self.cfg.variant)

    def centers(self, output: SegOutput, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's centers [B,N,C] and valid [B,N], and the whole gathered batch's, detached."""
        centers, valid = self.local_centers(output, labels)
        # Fixed [B,N,C] + [B,N] per rank, so the gather never meets ragged shapes.
        return centers, valid, self.accelerator.gather(centers.detach()), self.accelerator.gather(valid)

    def loss(self, centers: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Eq. 4 of this rank's centers against the whole bank."""
        queries, query_labels, query_valid = contrast.region_entries(centers, valid)  # [BN,C], [BN], [BN]
        if self.drop_padding:
            queries, query_labels, query_valid = (part[query_valid] for part in (queries, query_labels, query_valid))
        if self.bank.replicated:
            return contrast.region_contrast_loss(
                queries, query_labels, self.bank.keys, self.bank.valid, self.cfg.tau, self.cfg.chunk_size,
                query_valid, keys_unit=True,
            )
        return contrast.sharded_region_contrast_loss(
            queries, query_labels, self.bank, self.cfg.tau, self.cfg.chunk_size, query_valid=query_valid
        )

    def __call__(self, output: SegOutput, batch: Batch, with_loss: bool = True, push: bool = True) -> torch.Tensor | None:
        centers, valid, all_centers, all_valid = self.centers(output, batch["label"])
        loss = self.loss(centers, valid) if with_loss else None
        self.pending.add(partial(self.bank.push, *contrast.region_entries(all_centers, all_valid)), now=push)
        return loss


class GatherWithGrad(torch.autograd.Function):
    """Every rank's rows [B,...] as one [W*B,...] that stays differentiable.

    Every rank's queries pull on every rank's keys, so the backward sums the gathered gradient over
    the ranks and hands each rank the part for its own rows: the gradient one process fed the
    global batch would get, whatever the world size.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, rows: torch.Tensor, accelerator: Accelerator) -> torch.Tensor:
        ctx.accelerator, ctx.count = accelerator, rows.shape[0]
        return accelerator.gather(rows.contiguous())

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        total = ctx.accelerator.reduce(grad.contiguous(), reduction="sum")  # [W*B,...], the same on every rank
        start = ctx.accelerator.process_index * ctx.count
        return total[start:start + ctx.count], None


def queries_with_positive(valid: torch.Tensor) -> torch.Tensor:
    """Which (image, class) slots of a batch's valid [B,N] have a positive: the class in another image."""
    images_per_class = valid.sum(0, keepdim=True)  # [1,N]
    return valid & (images_per_class >= 2)


class InBatchTerm(RegionTerm):
    """Bank size 0: this rank's centers contrasted with the whole gathered batch, as one process would.

    The keys are gathered with their graphs, and the loss is this rank's share of the mean over the
    global batch's queries (DDP then averages the ranks), so loss and gradients do not depend on how
    many processes share the batch.
    """

    def __init__(self, accelerator: Accelerator, cfg: ContrastConfig, num_classes: int, align_corners: bool = False) -> None:
        super().__init__(accelerator, cfg, None, num_classes, align_corners)

    def __call__(self, output: SegOutput, batch: Batch, with_loss: bool = True, push: bool = True) -> torch.Tensor | None:
        if not with_loss:
            return None  # no bank to fill
        centers, valid = self.local_centers(output, batch["label"])
        count, world = centers.shape[0], self.accelerator.num_processes
        start = self.accelerator.process_index * count
        all_centers = GatherWithGrad.apply(centers, self.accelerator)  # [W*B,N,C]
        all_valid = self.accelerator.gather(valid)  # [W*B,N]
        queries = slice(start, start + count)
        loss = contrast.in_batch_contrast_loss(
            all_centers, all_valid, self.cfg.tau, query_images=queries, chunk_size=self.cfg.chunk_size
        )
        if world == 1:
            return loss
        # The loss is a mean over this rank's queries; rescale it to their share of the global mean.
        counted = queries_with_positive(all_valid)  # [W*B,N]
        share = world * counted[queries].sum() / counted.sum().clamp(min=1)
        return loss * share


class PixelTerm:
    """Sampled anchors against ContrastiveSeg's pixel + segment queues; every rank pushes alike."""

    def __init__(self, accelerator: Accelerator, cfg: ContrastConfig, bank: contrast.PixelBank | contrast.AllPixelBank,
                 generator: torch.Generator, align_corners: bool = False) -> None:
        self.accelerator, self.cfg, self.bank, self.generator = accelerator, cfg, bank, generator
        self.pending = PendingPushes()
        self.align_corners = align_corners  # the model's: how its logits resize onto the contrast's feature map

    def __call__(self, output: SegOutput, batch: Batch, with_loss: bool = True, push: bool = True) -> torch.Tensor | None:
        features, logits = embedding(self.cfg, output, self.align_corners)
        small_labels = resize_labels(batch["label"], tuple(features.shape[-2:]))
        pixel, loss = self.cfg.pixel, None
        if with_loss:
            loss = contrast.pixel_contrast_loss(
                features, small_labels, logits.argmax(1), self.bank, self.cfg.tau,
                max_samples=pixel.max_samples, max_views=pixel.max_views, chunk_size=self.cfg.chunk_size,
            )
        gathered = self.accelerator.gather(features.detach()), self.accelerator.gather(small_labels)
        self.pending.add(partial(self.push, *gathered, batch), now=push)
        return loss

    def push(self, features: torch.Tensor, labels: torch.Tensor, batch: Batch) -> None:
        """Push the gathered features [W*B,C,h,w] and labels [W*B,h,w]."""
        # The same generator state on every rank: identical sampled pixels, identical banks.
        self.bank.push(features, labels, generator=self.generator)


class AllPixelTerm(PixelTerm):
    """Sampled anchors against every feature pixel of the training set."""

    def push(self, features: torch.Tensor, labels: torch.Tensor, batch: Batch) -> None:
        """Overwrite the gathered images' slots."""
        self.bank.push(features, labels, self.accelerator.gather(batch["index"]))


def region_bank_size(cfg: ContrastConfig, train_images: int) -> int:
    """Slots per class of a region bank; unset means one per training image, as in the paper."""
    return train_images if cfg.bank_size is None else cfg.bank_size


def contrast_feature_geometry(cfg: ContrastConfig, model: SegmentationModel) -> tuple[int, int]:
    """(channels, stride) of the feature map the contrast reads: the head's F or the backbone's last stage."""
    if cfg.feature == "head":
        return model.feature_dim, model.feature_stride
    info = model.backbone.feature_info
    return info.channels()[-1], info.reduction()[-1]


def build_term(
    accelerator: Accelerator, recipe: Recipe, model: SegmentationModel, num_classes: int, train_images: int,
    generator: torch.Generator,
) -> ContrastTerm | None:
    """The contrast term the recipe asks for (None for CE only), its bank on the accelerator's device."""
    cfg = recipe.loss.contrast
    dim, stride = contrast_feature_geometry(cfg, model)
    dtype = getattr(torch, cfg.bank_dtype)
    if cfg.kind == "none":
        return None
    if cfg.kind == "region":
        size = region_bank_size(cfg, train_images)
        if size == 0:
            return InBatchTerm(accelerator, cfg, num_classes, model.align_corners)
        if cfg.bank_layout == "sharded":
            bank = contrast.ShardedRegionBank(
                num_classes, size, dim, dtype, rank=accelerator.process_index, world_size=accelerator.num_processes
            )
        else:
            bank = contrast.RegionBank(num_classes, size, dim, dtype)
        return RegionTerm(accelerator, cfg, bank.to(accelerator.device), num_classes, model.align_corners)
    if cfg.kind == "pixel":
        bank = contrast.PixelBank(num_classes, cfg.pixel.memory_size, dim, cfg.pixel.pixel_update_freq, dtype)
        return PixelTerm(accelerator, cfg, bank.to(accelerator.device), generator, model.align_corners)
    side = math.ceil(recipe.data.crop_size / stride)  # feature map of one training crop
    bank = contrast.AllPixelBank(train_images, side, side, dim, dtype)
    return AllPixelTerm(accelerator, cfg, bank.to(accelerator.device), generator, model.align_corners)
