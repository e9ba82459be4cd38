"""One variant's objects: the Accelerator, the run's context, then data loaders, model, optimizer and
contrast term, built (`build`) and then prepared (`prepare`)."""

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
from harness.data import DatasetInfo, auto_num_workers, build_datasets, collate
from harness.engine.context import RunContext, make_context
from harness.engine.control import leave_stop_signals_to_the_main_process
from harness.engine.step import Trainer
from harness.engine.terms import (
    ContrastTerm,
    TermInputs,
    build_term,
    contrast_feature_geometry,
)
from harness.models import (
    batchnorm_in_float32,
    build_model,
    synchronised_batch_norms,
    weights_origin,
)
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


def loading_options(ctx: RunContext) -> dict[str, Any]:
    """DataLoader options of every split: decoding worker processes, pinned batches where CUDA is, collate.

    Workers persist across epochs (no restart per epoch); SegmentationDataset.set_epoch reaches
    them through shared memory. They leave the stop signals to the main process, which saves and
    ends them. Pinned batches copy to the GPU faster. Batches of differently sized images are
    padded with the backbone's mean colour.
    """
    data = ctx.recipe.data
    workers = auto_num_workers() if data.num_workers is None else data.num_workers
    return dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=ctx.device.type == "cuda",
                worker_init_fn=leave_stop_signals_to_the_main_process,
                collate_fn=functools.partial(collate, pad_colour=ctx.pad_colour))


def make_loaders(train: Dataset, evaluated: Dataset, ctx: RunContext) -> tuple[DataLoader, DataLoader]:
    """Shuffled training batches (full batches only) and in-order batches of the evaluated split."""
    generator = torch.Generator().manual_seed(ctx.recipe.run.seed)
    train_loader = DataLoader(
        train, batch_size=ctx.recipe.data.batch_size, shuffle=True, drop_last=True, generator=generator,
        **loading_options(ctx),
    )
    return train_loader, make_eval_loader(evaluated, ctx)


def make_eval_loader(dataset: Dataset, ctx: RunContext) -> DataLoader:
    """In-order batches of a split to evaluate or predict on."""
    # Real datasets have images of different sizes: evaluate them one at a time.
    batch_size = ctx.recipe.data.batch_size if ctx.recipe.data.dataset == "digit_scenes" else 1
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **loading_options(ctx))


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
    """Loop state that lives in no module and survives a resume: the next iteration, the bank sampling
    generator, the step and contrast times and bank fill measured so far, and how often the run was requeued."""

    def __init__(self, generator: torch.Generator) -> None:
        self.iteration, self.generator = 0, generator
        self.step_seconds: list[float] = []  # SteadyState's timers append to these lists
        self.contrast_seconds: list[float] = []
        self.fill_total = torch.zeros((), device=generator.device)  # summed on the device, read at saves
        self.fill_count = 0
        self.requeue_count = 0  # resumes from a checkpoint saved on a stop signal

    def state_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration, "generator": self.generator.get_state(),
            "step_seconds": self.step_seconds, "contrast_seconds": self.contrast_seconds,
            "fill_total": float(self.fill_total), "fill_count": self.fill_count, "requeue_count": self.requeue_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = state["iteration"]
        self.generator.set_state(state["generator"])
        # In place: the timers hold these lists.
        self.step_seconds[:] = state.get("step_seconds", [])
        self.contrast_seconds[:] = state.get("contrast_seconds", [])
        self.fill_total.fill_(state.get("fill_total", 0.0))
        self.fill_count = state.get("fill_count", 0)
        self.requeue_count = state.get("requeue_count", 0)


@dataclass
class Training:
    """One run's model, optimizer and contrast term, built but not yet prepared."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    contrast: ContrastTerm | None
    progress: Progress
    weights: str  # where the backbone's weights came from (models.weights_origin)
    flops_per_image: int  # forward FLOPs of one training crop, counted before compiling


def build(ctx: RunContext, num_classes: int, train_images: int) -> Training:
    """The model (weights resolved, norms as the launch needs them), its contrast term and optimizer.

    Draws from the global RNG in a fixed order (the model's initialisation first), so a run's seed
    fixes them; nothing is prepared yet.
    """
    recipe, accelerator = ctx.recipe, ctx.accelerator
    with accelerator.main_process_first():  # the main process pretrains the digits stand-in; the others read it
        model_cfg = resolve_weights(recipe)
    model = build_model(model_cfg, num_classes)
    if recipe.model.sync_bn and ctx.world_size > 1:
        model = synchronised_batch_norms(model)
    if ctx.input_dtype != torch.float32:
        batchnorm_in_float32(model)
    model.to(ctx.device)
    # Counted in fp32 before prepare (DeepSpeed casts the model there): FLOPs do not depend on the dtype.
    flops = measure.flops_per_image(model, recipe.data.crop_size, ctx.device)
    if ctx.device.type == "cuda":
        # Training crops have one shape: let cuDNN pick its fastest kernels once.
        torch.backends.cudnn.benchmark = not recipe.run.deterministic
    # The same generator state on every rank: pixel banks sample the same pixels everywhere.
    progress = Progress(torch.Generator(ctx.device).manual_seed(recipe.run.seed))
    dim, stride = contrast_feature_geometry(recipe.loss.contrast, model)
    contrast = build_term(TermInputs(ctx, num_classes, train_images, dim, stride, progress.generator))
    # Only a contrast on the backbone's features reads them: no other step pays for their fp32 copy.
    model.keep_backbone_features = contrast is not None and recipe.loss.contrast.feature == "backbone"
    optimizer = build_optimizer(model, recipe.optim)
    return Training(model, optimizer, contrast, progress, weights_origin(model_cfg), flops)


def prepare(ctx: RunContext, training: Training, *loaders: DataLoader) -> tuple[Trainer, list[DataLoader]]:
    """accelerator.prepare the model, optimizer and `loaders`; the Trainer, and the loaders prepared.

    The bank is registered for checkpointing but never prepared (DDP would broadcast it, DeepSpeed cast it).
    """
    model = training.model
    if ctx.compile:
        # The model; the contrast term stays eager (README: run.compile). Evaluation's batches have other
        # shapes than training's: dynamo compiles them again, with a dynamic batch after the first change.
        model = torch.compile(model)
    model, optimizer, *prepared = ctx.accelerator.prepare(model, training.optimizer, *loaders)
    trainer = Trainer(ctx, model, optimizer, training.contrast)
    # save_state keeps custom objects of the main rank only: a sharded bank saves its own shards.
    bank = trainer.bank
    ctx.accelerator.register_for_checkpointing(training.progress,
                                               *([bank] if bank is not None and bank.replicated else []))
    return trainer, prepared


@dataclass
class Setup:
    """One variant's prepared objects."""

    ctx: RunContext
    trainer: Trainer
    training: Training  # what build made: progress, weights' origin, FLOPs
    train_loader: DataLoader
    eval_loader: DataLoader
    train_set: Dataset
    eval_set: Dataset  # eval.split's images
    info: DatasetInfo


def set_up(accelerator: Accelerator, recipe: Recipe) -> Setup:
    """The run's context, data, model, contrast term and optimizer: built, then prepared."""
    set_seed(recipe.run.seed, deterministic=recipe.run.deterministic)
    ctx = make_context(accelerator, recipe)
    with accelerator.main_process_first():  # the main process builds the caches; the others read them
        train_set, eval_set, info = build_datasets(recipe.data, recipe.run.seed, ctx.pad_colour, recipe.eval.split)
    training = build(ctx, info.num_classes, len(train_set))
    trainer, (train_loader, eval_loader) = prepare(ctx, training, *make_loaders(train_set, eval_set, ctx))
    return Setup(ctx, trainer, training, train_loader, eval_loader, train_set, eval_set, info)
