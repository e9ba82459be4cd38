"""ContrastiveSeg's pixel-level contrast: sampled anchors against pixel + segment queues, or every pixel."""

from __future__ import annotations

import math
from functools import partial

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


class PixelTerm:
    """Sampled anchors against ContrastiveSeg's pixel + segment queues; every rank pushes alike."""

    def __init__(self, inputs: TermInputs, bank: contrast.PixelBank | contrast.AllPixelBank) -> None:
        self.inputs, self.cfg, self.bank = inputs, inputs.cfg, bank
        self.accelerator, self.generator = inputs.ctx.accelerator, inputs.generator
        self.pending = PendingPushes()

    def __call__(self, output: SegOutput, batch: Batch, with_loss: bool = True, push: bool = True) -> torch.Tensor | None:
        features, logits = embedding(self.cfg, output, self.inputs.ctx.align_corners)
        small_labels = resize_labels(batch["label"], tuple(features.shape[-2:]))
        pixel, loss = self.inputs.settings, None
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


def pixel_term(inputs: TermInputs) -> ContrastTerm:
    """ContrastiveSeg's pixel and segment queues."""
    pixel = inputs.settings
    bank = contrast.PixelBank(inputs.num_classes, pixel.memory_size, inputs.feature_dim, pixel.pixel_update_freq,
                              getattr(torch, inputs.cfg.bank_dtype))
    return PixelTerm(inputs, bank.to(inputs.ctx.device))


def all_pixel_term(inputs: TermInputs) -> ContrastTerm:
    """A bank of every feature pixel of every training image (tiny datasets only)."""
    side = math.ceil(inputs.ctx.recipe.data.crop_size / inputs.feature_stride)  # feature map of one training crop
    bank = contrast.AllPixelBank(inputs.train_images, side, side, inputs.feature_dim, getattr(torch, inputs.cfg.bank_dtype))
    return AllPixelTerm(inputs, bank.to(inputs.ctx.device))
