"""What every contrast kind shares: the term's protocol, what it is built from, held bank writes, its embedding."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from harness.contrast import Bank
from harness.engine.context import RunContext
from harness.models import SegOutput
from harness.ops import upsample_to
from harness.recipe import ContrastConfig

Batch = dict[str, torch.Tensor]


class ContrastTerm(Protocol):
    """One contrast kind: its bank (None for in-batch) and its unweighted loss for a step."""

    bank: Bank | None

    def __call__(
        self, output: SegOutput, batch: Batch, with_loss: bool = True, push: bool = True
    ) -> torch.Tensor | None:
        """The loss of this rank's batch (None unless with_loss); then the gathered batch goes into the bank,
        now if push, else together with the next pushed micro-batch (see PendingPushes)."""


@dataclass(frozen=True)
class TermInputs:
    """What a contrast kind is built from: the run, its classes and training set, the feature map it reads."""

    ctx: RunContext
    num_classes: int
    train_images: int
    feature_dim: int  # channels of the feature map loss.contrast.feature names
    feature_stride: int  # its stride in pixels
    generator: torch.Generator  # the run's bank-sampling generator: the same state on every rank, checkpointed

    @property
    def cfg(self) -> ContrastConfig:
        """The recipe's loss.contrast section."""
        return self.ctx.recipe.loss.contrast


TermFactory = Callable[[TermInputs], "ContrastTerm | None"]


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


def embedding(cfg: ContrastConfig, output: SegOutput, align_corners: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The feature map that the contrast uses and the logits at its resolution."""
    features = output.features if cfg.feature == "head" else output.backbone_features
    return features, upsample_to(output.logits, tuple(features.shape[-2:]), align_corners)
