"""RegionContrast: Eq. 4 of this rank's region centers against a region bank (replicated or sharded), then a push.

Each rank computes its images' centers into a fixed [B,N,C] plus a valid mask, gathers them, and
pushes the same entries in the same order on every rank, so replicated banks stay bitwise
identical. The loss reads the bank before this step's push: a query never meets its own center.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from harness import contrast
from harness.engine.terms.base import (
    Batch,
    ContrastTerm,
    PendingPushes,
    TermInputs,
    embedding,
)
from harness.models import SegOutput
from harness.ops import resize_labels
from harness.recipe import ContrastConfig


def local_centers(inputs: TermInputs, output: SegOutput, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's region centers [B,N,C] (with their graph) and valid [B,N], by the recipe's center variant."""
    features, logits = embedding(inputs.cfg, output, inputs.ctx.align_corners)
    small_labels = resize_labels(labels, tuple(features.shape[-2:]))
    return contrast.region_centers(features, logits, small_labels, inputs.num_classes, inputs.cfg.variant)


class RegionTerm:
    """Eq. 4 of this rank's region centers against a region bank (replicated or sharded), then a push."""

    def __init__(self, inputs: TermInputs, bank: contrast.RegionBank | contrast.ShardedRegionBank) -> None:
        self.inputs, self.cfg, self.bank = inputs, inputs.cfg, bank
        self.accelerator = inputs.ctx.accelerator
        # Most (image, class) slots are padding (classes absent from the image). On a GPU they stay, masked,
        # so that no step waits for the host to count them; on a CPU, host and device are one, and dropping
        # them saves most of the loss's work. A sharded bank needs every rank's rows alike, so it keeps them.
        self.drop_padding = inputs.ctx.device.type == "cpu" and bank.replicated
        self.pending = PendingPushes()
        if inputs.ctx.compile and bank.replicated and not self.drop_padding:
            # Eq. 4 against the replicated bank is one graph with the padding masked: no break and no
            # recompile from step to step (tests/test_compile.py). A CPU's dropped padding has a
            # data-dependent shape, and a sharded bank talks to the other ranks: both stay eager.
            self.loss = torch.compile(self.loss)

    def centers(self, output: SegOutput, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's centers [B,N,C] and valid [B,N], and the whole gathered batch's, detached."""
        centers, valid = local_centers(self.inputs, output, labels)
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


def region_bank_size(cfg: ContrastConfig, train_images: int) -> int:
    """Slots per class of a region bank; unset means one per training image, as in the paper."""
    return train_images if cfg.bank_size is None else cfg.bank_size


def region_summary(cfg: ContrastConfig, train_images: int | None) -> dict[str, Any]:
    """The center variant and the bank's slots per class: resolved to a number once the run knows its training set
    (before that, null means one slot per training image)."""
    size = cfg.bank_size if train_images is None else region_bank_size(cfg, train_images)
    return {"center_variant": cfg.variant, "bank_size": size}


def region_term(inputs: TermInputs) -> ContrastTerm:
    """The paper's term: a region bank of the recipe's size (at least one slot) and layout."""
    cfg, ctx = inputs.cfg, inputs.ctx
    size, dtype = region_bank_size(cfg, inputs.train_images), getattr(torch, cfg.bank_dtype)
    if cfg.bank_layout == "sharded":
        bank = contrast.ShardedRegionBank(inputs.num_classes, size, inputs.feature_dim, dtype,
                                          rank=ctx.accelerator.process_index, world_size=ctx.world_size)
    else:
        bank = contrast.RegionBank(inputs.num_classes, size, inputs.feature_dim, dtype)
    return RegionTerm(inputs, bank.to(ctx.device))
