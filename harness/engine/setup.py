"""One variant's prepared objects: Accelerator, data loaders, model, optimizer and contrast term."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader, Dataset

from harness.data import DatasetInfo, build_datasets, collate
from harness.engine.step import Trainer, input_dtype
from harness.engine.terms import build_term
from harness.models import batchnorm_in_float32, build_model
from harness.recipe import OptimConfig, Recipe


def make_accelerator(recipe: Recipe) -> Accelerator:
    """A fresh Accelerator per variant: its own prepared objects, checkpoint registry and accumulation.

    The seedable sampler makes each epoch's order a function of (seed, epoch) alone.
    """
    return Accelerator(
        gradient_accumulation_steps=recipe.optim.grad_accum_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=recipe.run.seed),
    )


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The paper's SGD with momentum, or AdamW (betas (momentum, 0.999)); both with weight decay."""
    if cfg.name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_loaders(train: Dataset, val: Dataset, recipe: Recipe) -> tuple[DataLoader, DataLoader]:
    """Shuffled training batches (full batches only) and in-order val batches."""
    data = recipe.data
    generator = torch.Generator().manual_seed(recipe.run.seed)
    train_loader = DataLoader(
        train, batch_size=data.batch_size, shuffle=True, drop_last=True,
        num_workers=data.num_workers, generator=generator, collate_fn=collate,
    )
    # Real datasets have images of different sizes: evaluate them one at a time.
    val_batch = data.batch_size if data.dataset == "digit_scenes" else 1
    val_loader = DataLoader(val, batch_size=val_batch, shuffle=False, num_workers=data.num_workers, collate_fn=collate)
    return train_loader, val_loader


def endless(loader: DataLoader, dataset: Dataset, first_batch: int) -> Iterator[dict[str, torch.Tensor]]:
    """Batches forever from per-rank position `first_batch`, reshuffled each epoch.

    Order and augmentation are functions of (seed, epoch, index) alone, so a resumed run
    reads past the batches it already trained on (data loading only) and goes on exactly.
    """
    epoch, skip = divmod(first_batch, len(loader))
    while True:
        loader.set_epoch(epoch)
        dataset.set_epoch(epoch)
        for position, batch in enumerate(loader):
            if position >= skip:
                yield batch
        epoch, skip = epoch + 1, 0


class Progress:
    """Loop state that lives in no module: the next iteration and the bank sampling generator."""

    def __init__(self, generator: torch.Generator) -> None:
        self.iteration, self.generator = 0, generator

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = state["iteration"]
        self.generator.set_state(state["generator"])


@dataclass
class Setup:
    """One variant's prepared objects."""

    trainer: Trainer
    progress: Progress
    train_loader: DataLoader
    val_loader: DataLoader
    train_set: Dataset
    val_set: Dataset
    info: DatasetInfo


def set_up(accelerator: Accelerator, recipe: Recipe) -> Setup:
    """Data, model, contrast term and optimizer, prepared; a bank is registered but never prepared."""
    set_seed(recipe.run.seed, deterministic=recipe.run.deterministic)
    train_set, val_set, info = build_datasets(recipe.data, recipe.run.seed)
    model = build_model(recipe.model, info.num_classes)
    if recipe.model.sync_bn and accelerator.num_processes > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if input_dtype(accelerator) != torch.float32:
        batchnorm_in_float32(model)
    # The same generator state on every rank: pixel banks sample the same pixels everywhere.
    progress = Progress(torch.Generator(accelerator.device).manual_seed(recipe.run.seed))
    contrast = build_term(accelerator, recipe, model, info.num_classes, len(train_set), progress.generator)
    optimizer = build_optimizer(model, recipe.optim)
    train_loader, val_loader = make_loaders(train_set, val_set, recipe)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    trainer = Trainer(accelerator, recipe, model, optimizer, contrast)
    # save_state keeps custom objects of the main rank only: a sharded bank saves its own shards.
    bank = trainer.bank
    accelerator.register_for_checkpointing(progress, *([bank] if bank is not None and bank.replicated else []))
    return Setup(trainer, progress, train_loader, val_loader, train_set, val_set, info)
