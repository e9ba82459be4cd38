"""One training step: forward, CE + aux + contrast, backward, and an optimizer step when due."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from harness.contrast import Bank
from harness.engine.terms import Batch, ContrastTerm
from harness.losses import pixel_loss, total_loss
from harness.models import SegOutput
from harness.recipe import Recipe


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite: the variant stops instead of training on garbage."""


def input_dtype(accelerator: Accelerator) -> torch.dtype:
    """The dtype images must have: DeepSpeed casts the model itself to bf16/fp16 instead of autocasting."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)


@dataclass
class Trainer:
    """Everything one variant's training step touches."""

    accelerator: Accelerator
    recipe: Recipe
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    contrast: ContrastTerm | None

    @property
    def bank(self) -> Bank | None:
        """The contrast's memory bank, if it has one."""
        return self.contrast.bank if self.contrast is not None else None

    def step(self, batch: Batch, iteration: int) -> dict[str, float]:
        """One micro-batch: forward, the weighted losses, backward, and an optimizer step when due."""
        with self.accelerator.accumulate(self.model):
            output = self.model(batch["image"].to(input_dtype(self.accelerator)))
            parts = self.loss_parts(output, batch)
            loss = total_loss(self.recipe.loss, parts)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"loss is {loss.item()} at iteration {iteration}: stopping this variant")
            self.accelerator.backward(loss)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.item(), **{f"loss_{name}": value.item() for name, value in parts.items()}}

    def loss_parts(self, output: SegOutput, batch: Batch) -> dict[str, torch.Tensor]:
        """CE, aux and contrast terms, unweighted."""
        cfg, labels = self.recipe.loss, batch["label"]
        parts = {"ce": pixel_loss(cfg, output.logits, labels)}
        if output.aux_logits is not None and cfg.aux_weight > 0:
            parts["aux"] = pixel_loss(cfg, output.aux_logits, labels)
        if self.contrast is not None:
            parts["contrast"] = self.contrast(output, batch)
        return parts
