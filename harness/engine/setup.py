"""One variant's prepared objects: Accelerator, data loaders, model, optimizer and contrast term."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader, Dataset

from harness import measure
from harness.data import DatasetInfo, auto_num_workers, build_datasets, collate, image_statistics
from harness.engine.step import Trainer, input_dtype
from harness.engine.terms import build_term
from harness.models import batchnorm_in_float32, build_model, synchronised_batch_norms, weights_origin
from harness.pretrain import digit_backbone_file
from harness.recipe import ModelConfig, OptimConfig, Recipe
from harness.results import TRACKERS_DIR


def make_accelerator(recipe: Recipe, out_dir: Path | None = None) -> Accelerator:
    """A fresh Accelerator per variant: its own prepared objects, checkpoint registry and accumulation.

    The seedable sampler makes each epoch's order a function of (seed, epoch) alone; batches from
    pinned memory reach the GPU without blocking the host. With `out_dir` (a training run), the
    recipe's trackers log into out_dir/trackers/.
    """
    loading = DataLoaderConfiguration(use_seedable_sampler=True, data_seed=recipe.run.seed, non_blocking=True)
    tracking = {}
    if out_dir is not None and recipe.run.trackers:
        project = ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / TRACKERS_DIR))
        tracking = {"log_with": list(recipe.run.trackers), "project_config": project}
    return Accelerator(gradient_accumulation_steps=recipe.optim.grad_accum_steps, dataloader_config=loading, **tracking)


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The paper's SGD with momentum, or AdamW (betas (momentum, 0.999)); both with weight decay."""
    if cfg.name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def resolve_weights(recipe: Recipe) -> ModelConfig:
    """The model config with the digits stand-in's cached file as its weights, pretraining it if needed."""
    cfg = recipe.model
    if not (cfg.pretrained and cfg.pretrained_source == "digits"):
        return cfg
    return cfg.model_copy(update={"weights": digit_backbone_file(cfg.backbone, recipe.data.digit_scenes.seed)})


def loading_options(recipe: Recipe) -> dict[str, Any]:
    """DataLoader options of every split: decoding worker processes, pinned batches where CUDA is, collate.

    Workers persist across epochs (no restart per epoch); SegmentationDataset.set_epoch reaches
    them through shared memory. Pinned batches copy to the GPU faster. Batches of differently
    sized images are padded with the backbone's mean colour.
    """
    workers = auto_num_workers() if recipe.data.num_workers is None else recipe.data.num_workers
    pad_colour = image_statistics(recipe.model.backbone).pad_colour
    return dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
                collate_fn=functools.partial(collate, pad_colour=pad_colour))


def make_loaders(train: Dataset, val: Dataset, recipe: Recipe) -> tuple[DataLoader, DataLoader]:
    """Shuffled training batches (full batches only) and in-order val batches, decoded by worker processes."""
    generator = torch.Generator().manual_seed(recipe.run.seed)
    train_loader = DataLoader(
        train, batch_size=recipe.data.batch_size, shuffle=True, drop_last=True, generator=generator,
        **loading_options(recipe),
    )
    return train_loader, make_eval_loader(val, recipe)


def make_eval_loader(dataset: Dataset, recipe: Recipe) -> DataLoader:
    """In-order batches of a split to evaluate or predict on."""
    # Real datasets have images of different sizes: evaluate them one at a time.
    batch_size = recipe.data.batch_size if recipe.data.dataset == "digit_scenes" else 1
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **loading_options(recipe))


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
    weights: str  # where the backbone's weights came from (models.weights_origin)
    flops_per_image: int  # forward FLOPs of one training crop, counted before compiling
    train_loader: DataLoader
    val_loader: DataLoader
    train_set: Dataset
    val_set: Dataset
    info: DatasetInfo


def set_up(accelerator: Accelerator, recipe: Recipe) -> Setup:
    """Data, model, contrast term and optimizer, prepared; a bank is registered but never prepared."""
    set_seed(recipe.run.seed, deterministic=recipe.run.deterministic)
    with accelerator.main_process_first():  # the main process builds the caches; the others read them
        statistics = image_statistics(recipe.model.backbone)
        train_set, val_set, info = build_datasets(recipe.data, recipe.run.seed, statistics, recipe.eval.split)
        model_cfg = resolve_weights(recipe)
    model = build_model(model_cfg, info.num_classes)
    if recipe.model.sync_bn and accelerator.num_processes > 1:
        model = synchronised_batch_norms(model)
    if input_dtype(accelerator) != torch.float32:
        batchnorm_in_float32(model)
    model.to(accelerator.device)
    # Counted in fp32 before prepare (DeepSpeed casts the model there): FLOPs do not depend on the dtype.
    flops = measure.flops_per_image(model, recipe.data.crop_size, accelerator.device)
    if accelerator.device.type == "cuda":
        # Training crops have one shape: let cuDNN pick its fastest kernels once.
        torch.backends.cudnn.benchmark = not recipe.run.deterministic
    # The same generator state on every rank: pixel banks sample the same pixels everywhere.
    progress = Progress(torch.Generator(accelerator.device).manual_seed(recipe.run.seed))
    contrast = build_term(accelerator, recipe, model, info.num_classes, len(train_set), progress.generator)
    optimizer = build_optimizer(model, recipe.optim)
    train_loader, val_loader = make_loaders(train_set, val_set, recipe)
    if recipe.run.compile:
        model = torch.compile(model)  # the model only: the contrast's shapes depend on the data
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    trainer = Trainer(accelerator, recipe, model, optimizer, contrast)
    # save_state keeps custom objects of the main rank only: a sharded bank saves its own shards.
    bank = trainer.bank
    accelerator.register_for_checkpointing(progress, *([bank] if bank is not None and bank.replicated else []))
    return Setup(trainer, progress, weights_origin(model_cfg), flops, train_loader, val_loader, train_set, val_set, info)
