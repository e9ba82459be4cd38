"""The prototype kind: its settings block, its bank (the harness's Bank protocol), its term, and its spec."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from harness.engine.terms import Batch, ContrastKind, PendingPushes, TermInputs, local_centers
from harness.models import SegOutput
from harness.recipe import ContrastConfig

UNSEEN = -1e4  # the logit of a class without a prototype yet: finite, so no row of the softmax is all -inf


class PrototypeSettings(BaseModel):
    """loss.contrast.prototype: unknown keys and out-of-range values stop the run, naming the dotted key."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Weight of a prototype's past in each update; 0 keeps only the last batch's class mean.
    momentum: float = Field(0.99, ge=0, lt=1)


class PrototypeBank(nn.Module):
    """One unit prototype per class, `prototypes` [N,C], and which classes have one yet, `seen` [N].

    Buffers only, so state_dict is all a resume needs; every rank folds in the same gathered centers in the same
    order, so every rank holds the same bank.
    """

    replicated = True  # every rank holds it whole: checkpointed once, compared whole across ranks

    def __init__(self, num_classes: int, dim: int, momentum: float) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("prototypes", torch.zeros(num_classes, dim))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    @torch.no_grad()
    def push(self, centers: Tensor, valid: Tensor) -> None:
        """Fold the gathered batch's centers [M,N,C] (valid [M,N]) into the prototypes of the classes present.

        Masks, not indexing by them: the update never waits for the host to count the classes present.
        """
        present = valid.any(0)  # [N]
        mean = F.normalize((F.normalize(centers.float(), dim=2) * valid[..., None]).sum(0), dim=1)  # [M,N,C] -> [N,C]
        blended = self.momentum * self.prototypes + (1 - self.momentum) * mean
        updated = torch.where(self.seen[:, None], F.normalize(blended, dim=1), mean)  # a first sighting: the mean
        self.prototypes.copy_(torch.where(present[:, None], updated, self.prototypes))
        self.seen |= present

    def nbytes(self) -> int:
        """Bytes of its buffers."""
        return sum(buffer.numel() * buffer.element_size() for buffer in self.buffers())

    def fill(self) -> Tensor:
        """The fraction of classes that have a prototype."""
        return self.seen.float().mean()

    def agreement_state(self) -> dict[str, Tensor]:
        """All of it: a replicated bank is the same on every rank."""
        return self.state_dict()


class PrototypeTerm:
    """InfoNCE of this rank's region centers against the class prototypes; then the gathered centers update them."""

    def __init__(self, inputs: TermInputs) -> None:
        self.inputs, self.accelerator = inputs, inputs.ctx.accelerator
        self.bank = PrototypeBank(inputs.num_classes, inputs.feature_dim, inputs.settings.momentum).to(inputs.ctx.device)
        self.pending = PendingPushes()

    def __call__(self, output: SegOutput, batch: Batch, with_loss: bool = True, push: bool = True) -> Tensor | None:
        centers, valid = local_centers(self.inputs, output, batch["label"])  # [B,N,C] with their graph, [B,N]
        loss = self.loss(centers, valid) if with_loss else None
        # Fixed shapes on every rank, gathered; the update waits for the optimizer step (accumulated micro-batches).
        gathered = self.accelerator.gather(centers.detach()), self.accelerator.gather(valid)
        self.pending.add(partial(self.bank.push, *gathered), now=push)
        return loss

    def loss(self, centers: Tensor, valid: Tensor) -> Tensor:
        """The mean over this rank's centers whose class has a prototype (fp32 whatever the model's precision)."""
        images, classes, _ = centers.shape
        queries = F.normalize(centers.float(), dim=2).flatten(0, 1)  # [B,N,C] -> [BN,C]
        labels = torch.arange(classes, device=centers.device).repeat(images)  # [BN]
        # A copy: the backward needs the prototypes as they were, and this step's push updates the bank in place first.
        prototypes, seen = self.bank.prototypes.clone(), self.bank.seen.clone()
        logits = (queries @ prototypes.T / self.inputs.cfg.tau).masked_fill(~seen[None, :], UNSEEN)  # [BN,N]
        counted = valid.flatten() & seen[labels]  # [BN]
        per_query = F.cross_entropy(logits, labels, reduction="none")
        return (per_query * counted).sum() / counted.sum().clamp(min=1)


def prototype_summary(cfg: ContrastConfig, train_images: int | None) -> dict[str, Any]:
    """What the report shows as its bank: one slot (prototype) per class."""
    return {"bank_size": 1}


KIND = ContrastKind(PrototypeTerm, settings=PrototypeSettings, block="prototype", summary=prototype_summary)
