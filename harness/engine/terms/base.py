"""What every contrast kind shares: its spec, the term's protocol, what a term is built from, held bank writes, its
embedding."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from pydantic import BaseModel, ValidationError

from harness.contrast import Bank
from harness.engine.context import RunContext
from harness.models import SegOutput
from harness.ops import upsample_to
from harness.recipe import ContrastConfig, RecipeError

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
    settings: BaseModel | None = None  # the kind's settings block, validated by its model (build_term fills it in)

    @property
    def cfg(self) -> ContrastConfig:
        """The recipe's loss.contrast section."""
        return self.ctx.recipe.loss.contrast


TermFactory = Callable[[TermInputs], "ContrastTerm | None"]
# (loss.contrast, the run's training images or None where it never knew them: a failed run) -> summary fields
SummaryFields = Callable[[ContrastConfig, "int | None"], dict[str, Any]]


def no_summary_fields(cfg: ContrastConfig, train_images: int | None) -> dict[str, Any]:
    """A kind that adds no field of its own to the summary."""
    return {}


@dataclass(frozen=True)
class ContrastKind:
    """Everything the harness knows of one contrast kind, built-in or declared by a package: the registry maps
    `loss.contrast.kind` to one, and nothing outside the registry compares a kind's name.

    build     the factory of its term (a factory may return None: no contrast term, CE + aux only)
    settings  the pydantic model of its settings block, loss.contrast.<block> (None: it has no block)
    block     that block's key under loss.contrast: the kind's name, by convention
    shards    whether its bank splits across ranks, so loss.contrast.bank_layout: sharded applies to it
    summary   the summary.json fields it adds (e.g. a bank size the report shows: the report cannot ask the registry)
    """

    build: TermFactory
    settings: type[BaseModel] | None = None
    block: str | None = None
    shards: bool = False
    summary: SummaryFields = no_summary_fields

    def settings_of(self, cfg: ContrastConfig) -> BaseModel | None:
        """Its block of `cfg` validated by its model (the model's defaults where the recipe gives none); a
        RecipeError names the dotted key of the first problem."""
        if self.settings is None:
            return None
        try:
            return self.settings.model_validate(cfg.model_dump().get(self.block) or {})
        except ValidationError as error:
            first = error.errors()[0]
            key = ".".join(["loss.contrast", self.block, *(str(part) for part in first["loc"])])
            raise RecipeError(key, first["msg"]) from None

    def summary_fields(self, cfg: ContrastConfig, train_images: int | None) -> dict[str, Any]:
        """What summary.json says of this kind: its own fields and, where it has a block, its settings as resolved."""
        settings = self.settings_of(cfg)
        resolved = {} if settings is None else {"contrast_settings": settings.model_dump(mode="json")}
        return resolved | self.summary(cfg, train_images)


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
