"""One training step: forward, CE + aux + contrast, backward, and an optimizer step when due.

A step never waits for the host: losses stay on the device until the loop logs them,
and a non-finite loss is noticed there too (NonFiniteWatch), before any checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from accelerate import Accelerator

from harness.contrast import Bank
from harness.engine.context import RunContext
from harness.engine.terms import Batch, ContrastTerm
from harness.losses import segmentation_losses, total_loss
from harness.measure import SpanTimer
from harness.models import SegOutput


class NonFinite(FloatingPointError):
    """The loss or the trained state became NaN or infinite: the variant stops instead of training on garbage."""


class NonFiniteWatch:
    """Remembers, on the device, whether any loss since the last check was NaN or infinite."""

    def __init__(self, device: torch.device, first_iteration: int) -> None:
        self.seen = torch.zeros((), dtype=torch.bool, device=device)
        self.since = first_iteration + 1  # the first iteration not yet checked (1-based, like the log)

    def add(self, loss: torch.Tensor) -> None:
        """Fold in one step's loss, without a host sync."""
        self.seen |= ~torch.isfinite(loss.detach())

    def check(self, done: int) -> None:
        """Raise if a loss of iterations since..done was not finite (one host sync)."""
        if bool(self.seen):
            raise NonFinite(
                f"the loss became NaN or infinite between iterations {self.since} and {done}: stopping this variant"
            )
        self.since = done + 1


@dataclass
class Trainer:
    """Everything one variant's training step touches, and the cost of its contrast term."""

    ctx: RunContext
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    contrast: ContrastTerm | None
    # The contrast term plus its bank push, per step (events on a GPU, read at log intervals).
    contrast_timer: SpanTimer = field(init=False)

    def __post_init__(self) -> None:
        self.contrast_timer = SpanTimer(self.ctx.device)

    @property
    def accelerator(self) -> Accelerator:
        """The run's accelerator."""
        return self.ctx.accelerator

    @property
    def bank(self) -> Bank | None:
        """The contrast's memory bank, if it has one."""
        return self.contrast.bank if self.contrast is not None else None

    def step(self, batch: Batch, iteration: int) -> dict[str, torch.Tensor]:
        """One micro-batch: forward, the weighted losses, backward, and an optimizer step when due.

        Returns the total and each part, detached, still on the device (reading them is a host sync).
        """
        batch = {**batch, "label": batch["label"].long()}  # uint8 from the loader, widened on the device
        with self.accelerator.accumulate(self.model):
            output = self.model(self.ctx.model_input(batch["image"]))
            parts = self.loss_parts(output, batch, iteration)
            loss = total_loss(self.ctx.recipe.loss, parts)
            self.accelerator.backward(loss)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.detach(), **{f"loss_{name}": value.detach() for name, value in parts.items()}}

    def loss_parts(self, output: SegOutput, batch: Batch, iteration: int) -> dict[str, torch.Tensor]:
        """CE, aux and contrast terms, unweighted; before loss.contrast.warmup_iters the bank fills, unused."""
        cfg = self.ctx.recipe.loss
        parts = segmentation_losses(cfg, output.logits, output.aux_logits, batch["label"], self.ctx.align_corners)
        if self.contrast is not None:
            self.contrast_timer.start()
            # The bank is written once per optimizer step: accumulated micro-batches all read the bank
            # as it was before the step, as the micro-batches of one large batch would.
            contrast = self.contrast(output, batch, with_loss=iteration >= cfg.contrast.warmup_iters,
                                     push=self.accelerator.sync_gradients)
            self.contrast_timer.stop()
            if contrast is not None:
                parts["contrast"] = contrast
        return parts
