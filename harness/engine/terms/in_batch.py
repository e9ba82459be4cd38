"""Bank size 0: this rank's region centers contrasted with the whole gathered batch, as one process would."""

from __future__ import annotations

import torch
from accelerate import Accelerator

from harness import contrast
from harness.engine.terms.base import Batch, TermInputs
from harness.engine.terms.region import local_centers
from harness.models import SegOutput


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


class InBatchTerm:
    """In-batch contrast: no bank; every rank's centers are queries and keys of one global batch.

    The keys are gathered with their graphs, and the loss is this rank's share of the mean over the
    global batch's queries (DDP then averages the ranks), so loss and gradients do not depend on how
    many processes share the batch.
    """

    bank = None

    def __init__(self, inputs: TermInputs) -> None:
        self.inputs, self.accelerator = inputs, inputs.ctx.accelerator

    def __call__(self, output: SegOutput, batch: Batch, with_loss: bool = True, push: bool = True) -> torch.Tensor | None:
        if not with_loss:
            return None  # no bank to fill
        centers, valid = local_centers(self.inputs, output, batch["label"])
        count, world = centers.shape[0], self.accelerator.num_processes
        start = self.accelerator.process_index * count
        all_centers = GatherWithGrad.apply(centers, self.accelerator)  # [W*B,N,C]
        all_valid = self.accelerator.gather(valid)  # [W*B,N]
        queries = slice(start, start + count)
        cfg = self.inputs.cfg
        loss = contrast.in_batch_contrast_loss(
            all_centers, all_valid, cfg.tau, query_images=queries, chunk_size=cfg.chunk_size
        )
        if world == 1:
            return loss
        # The loss is a mean over this rank's queries; rescale it to their share of the global mean.
        counted = queries_with_positive(all_valid)  # [W*B,N]
        share = world * counted[queries].sum() / counted.sum().clamp(min=1)
        return loss * share
