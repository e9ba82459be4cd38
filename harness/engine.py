"""The one place that talks to Accelerate: prepare, train, gather, evaluate, record.

Every distributed act goes through the Accelerator. The contrastive banks are
kept out of `accelerator.prepare` (DDP would broadcast their buffers from rank 0
and DeepSpeed would cast them); instead each rank gathers the batch's region
centers and pushes the same entries in the same order.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedType, set_seed
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from harness import contrast, measure, sharded
from harness.data import DatasetInfo, build_datasets, collate, denormalize
from harness.losses import pixel_loss, total_loss, upsample_to
from harness.metrics import confusion_matrix, iou_from_confusion
from harness.models import SegmentationModel, SegOutput, batchnorm_in_float32, build_model
from harness.recipe import ContrastConfig, EvalConfig, OptimConfig, Recipe, Variant

QUALITATIVE_IMAGES = 4
CHECKPOINT = "checkpoint"


# ---------------------------------------------------------------- files


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Atomic JSON; NaN becomes null so every JSON reader accepts the file."""
    write_atomic(path, json.dumps(_nan_to_none(payload), indent=2) + "\n")


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(item) for item in value]
    return value


def _complete_before(line: str, iteration: int) -> bool:
    """Whether a log line is whole (a kill can cut the last one) and at or before `iteration`."""
    try:
        return json.loads(line)["iter"] <= iteration
    except (json.JSONDecodeError, KeyError, TypeError):
        return False


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """np.savez through a temporary file and a rename."""
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    os.replace(tmp.name, path)


class MetricsLog:
    """JSON-lines log of training and evaluation records, written by the main process."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def truncate_after(self, iteration: int) -> None:
        """Drop records past `iteration` (all of them for a fresh start): a resumed run rewrites them."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if _complete_before(line, iteration)]
        write_atomic(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(_nan_to_none(record)) + "\n")


# ---------------------------------------------------------------- optimisation


def poly_lr(cfg: OptimConfig, iteration: int) -> float:
    """The poly schedule: lr * (1 - it / max_it) ** power, a pure function of the iteration."""
    return cfg.lr * (1.0 - iteration / cfg.iterations) ** cfg.poly_power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The paper's SGD with momentum, or AdamW (betas (momentum, 0.999)); both with weight decay."""
    if cfg.name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def input_dtype(accelerator: Accelerator) -> torch.dtype:
    """The dtype images must have: DeepSpeed casts the model itself to bf16/fp16 instead of autocasting."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)


# ---------------------------------------------------------------- contrast


def build_bank(
    accelerator: Accelerator, cfg: ContrastConfig, num_classes: int, model: SegmentationModel,
    train_images: int, crop_size: int,
) -> torch.nn.Module | None:
    """The memory bank the recipe asks for; a region bank's size defaults to the training-set size."""
    dim, dtype = model.feature_dim, getattr(torch, cfg.bank_dtype)
    if cfg.kind == "region":
        size = train_images if cfg.bank_size is None else cfg.bank_size
        if cfg.bank_layout == "sharded":
            return sharded.ShardedRegionBank(
                num_classes, size, dim, dtype, rank=accelerator.process_index, world_size=accelerator.num_processes
            )
        return contrast.RegionBank(num_classes, size, dim, dtype)
    if cfg.kind == "pixel":
        return contrast.PixelBank(num_classes, cfg.pixel.memory_size, dim, cfg.pixel.pixel_update_freq, dtype)
    if cfg.kind == "all_pixel":
        side = math.ceil(crop_size / model.feature_stride)  # feature map of one training crop
        return contrast.AllPixelBank(train_images, side, side, dim, dtype)
    return None


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour label map at the feature resolution: [B,H,W] -> [B,h,w]."""
    resized = F.interpolate(labels[:, None].float(), size=size, mode="nearest")  # [B,1,h,w]
    return resized[:, 0].long()


def embedding(cfg: ContrastConfig, output: SegOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """The feature map that the contrast uses and the logits at its resolution."""
    features = output.features if cfg.feature == "head" else output.backbone_features
    return features, upsample_to(output.logits, tuple(features.shape[-2:]))


def region_term(
    accelerator: Accelerator, cfg: ContrastConfig, bank: contrast.RegionBank,
    output: SegOutput, labels: torch.Tensor,
) -> torch.Tensor:
    """Eq. 4 for this rank's region centers; then every rank pushes the gathered centers."""
    features, logits = embedding(cfg, output)
    num_classes = logits.shape[1]
    small_labels = resize_labels(labels, tuple(features.shape[-2:]))
    centers, valid = contrast.region_centers(features, logits, small_labels, num_classes, cfg.variant)
    # Fixed [B,N,C] + [B,N] per rank, so the gather never meets ragged shapes.
    all_centers = accelerator.gather(centers.detach())  # [world*B, N, C]
    all_valid = accelerator.gather(valid)  # [world*B, N]
    queries, query_labels = contrast.flatten_regions(centers, valid)  # [M,C], [M]
    if bank.size == 0:
        loss = in_batch_term(accelerator, cfg, centers, all_centers, all_valid)
    elif isinstance(bank, sharded.ShardedRegionBank):
        loss = sharded.sharded_region_contrast_loss(queries, query_labels, bank, cfg.tau, chunk_size=cfg.chunk_size)
    else:
        loss = contrast.region_contrast_loss(
            queries, query_labels, bank.keys, bank.valid, cfg.tau, chunk_size=cfg.chunk_size
        )
    bank.push(*contrast.flatten_regions(all_centers, all_valid))
    return loss


def in_batch_term(
    accelerator: Accelerator, cfg: ContrastConfig, centers: torch.Tensor,
    all_centers: torch.Tensor, all_valid: torch.Tensor,
) -> torch.Tensor:
    """Bank size 0: this rank's centers contrasted with the whole gathered batch."""
    batch = centers.shape[0]
    start = accelerator.process_index * batch
    # Put the local centers (with their graph) back in place of their detached copies.
    keys = torch.cat([all_centers[:start], centers, all_centers[start + batch:]])  # [world*B, N, C]
    return contrast.in_batch_contrast_loss(
        keys, all_valid, cfg.tau, query_images=slice(start, start + batch), chunk_size=cfg.chunk_size
    )


def pixel_term(
    accelerator: Accelerator, cfg: ContrastConfig, bank: contrast.PixelBank | contrast.AllPixelBank,
    output: SegOutput, batch: dict[str, torch.Tensor], generator: torch.Generator,
) -> torch.Tensor:
    """A pixel-to-bank loss (ContrastiveSeg's queues or every pixel); every rank pushes identically."""
    features, logits = embedding(cfg, output)
    small_labels = resize_labels(batch["label"], tuple(features.shape[-2:]))
    loss = contrast.pixel_contrast_loss(
        features, small_labels, logits.argmax(1), bank, cfg.tau,
        max_samples=cfg.pixel.max_samples, max_views=cfg.pixel.max_views, chunk_size=cfg.chunk_size,
    )
    all_features, all_labels = accelerator.gather(features.detach()), accelerator.gather(small_labels)
    if isinstance(bank, contrast.AllPixelBank):
        bank.push(all_features, all_labels, accelerator.gather(batch["index"]))
    else:
        # The same generator state on every rank: identical sampled pixels, identical banks.
        bank.push(all_features, all_labels, generator=generator)
    return loss


# ---------------------------------------------------------------- evaluation


def forward_whole(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class probabilities [B,N,H,W] from one whole-image forward."""
    logits = model(images).logits
    return upsample_to(logits.float(), tuple(images.shape[-2:])).softmax(1)


def forward_slide(model: torch.nn.Module, images: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """Class probabilities [B,N,H,W] averaged over overlapping crop x crop windows."""
    height, width = images.shape[-2:]
    padded = F.pad(images, (0, max(crop - width, 0), 0, max(crop - height, 0)))
    pad_h, pad_w = padded.shape[-2:]
    total = count = None
    for top in _window_starts(pad_h, crop, stride):
        for left in _window_starts(pad_w, crop, stride):
            probs = forward_whole(model, padded[..., top:top + crop, left:left + crop])
            if total is None:
                total = probs.new_zeros(probs.shape[0], probs.shape[1], pad_h, pad_w)
                count = probs.new_zeros(1, 1, pad_h, pad_w)
            total[..., top:top + crop, left:left + crop] += probs
            count[..., top:top + crop, left:left + crop] += 1
    return (total / count)[..., :height, :width]


def _window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Window offsets covering [0, length), the last one flush with the end."""
    starts = list(range(0, max(length - crop, 0) + 1, stride))
    if starts[-1] + crop < length:
        starts.append(length - crop)
    return starts


def predict(model: torch.nn.Module, images: torch.Tensor, cfg: EvalConfig) -> torch.Tensor:
    """Probabilities [B,N,H,W] averaged over the recipe's scales and flips."""
    size = tuple(images.shape[-2:])
    total = None
    for scale in cfg.scales:
        scaled = images if scale == 1.0 else F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
        views = [scaled, scaled.flip(-1)] if cfg.flip else [scaled]
        for index, view in enumerate(views):
            if cfg.mode == "slide":
                probs = forward_slide(model, view, cfg.slide_crop, cfg.slide_stride)
            else:
                probs = forward_whole(model, view)
            probs = upsample_to(probs.flip(-1) if index == 1 else probs, size)
            total = probs if total is None else total + probs
    return total / (len(cfg.scales) * (2 if cfg.flip else 1))


@dataclass
class Evaluation:
    miou: float
    per_class: torch.Tensor
    centers: np.ndarray | None = None  # [M, C] ground-truth region centers of the val set
    center_labels: np.ndarray | None = None  # [M]


@torch.no_grad()
def evaluate(
    accelerator: Accelerator, model: torch.nn.Module, loader: DataLoader, cfg: EvalConfig,
    num_classes: int, collect_centers: bool = False,
) -> Evaluation:
    """mIoU over the whole val set: per-image confusion matrices, gathered without padding duplicates."""
    model.eval()
    total = torch.zeros(num_classes, num_classes, dtype=torch.long, device=accelerator.device)
    centers, center_labels = [], []
    for batch_index, batch in enumerate(tqdm(loader, desc="eval", leave=False, disable=not accelerator.is_main_process)):
        if cfg.max_images is not None and batch_index * loader.total_batch_size >= cfg.max_images:
            break
        images, labels = batch["image"].to(input_dtype(accelerator)), batch["label"]
        preds = predict(model, images, cfg).argmax(1)
        per_image = torch.stack([confusion_matrix(p, t, num_classes) for p, t in zip(preds, labels)])  # [B,N,N]
        total += accelerator.gather_for_metrics(per_image).sum(0)
        if collect_centers:
            batch_centers, valid = val_centers(model, images, labels, num_classes)
            vectors, vector_labels = contrast.flatten_regions(*accelerator.gather_for_metrics((batch_centers, valid)))
            centers.append(vectors.float().cpu())
            center_labels.append(vector_labels.cpu())
    model.train()
    miou, per_class = iou_from_confusion(total.cpu())
    if not collect_centers:
        return Evaluation(miou, per_class)
    return Evaluation(miou, per_class, torch.cat(centers).numpy(), torch.cat(center_labels).numpy())


def val_centers(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth region centers [B,N,C] of the head features (for the paper's Fig. 3 t-SNE)."""
    output = model(images)
    small_labels = resize_labels(labels, tuple(output.features.shape[-2:]))
    logits = upsample_to(output.logits, tuple(output.features.shape[-2:]))
    return contrast.region_centers(output.features.float(), logits.float(), small_labels, num_classes, "ep_hp")


@torch.no_grad()
def qualitative_samples(
    accelerator: Accelerator, model: torch.nn.Module, dataset: Dataset, cfg: EvalConfig, info: DatasetInfo,
) -> dict[str, np.ndarray]:
    """Image, ground truth and prediction for the first val images (the paper's Fig. 4).

    Every rank runs the forward, so models sharded by DeepSpeed ZeRO-3 do not hang.
    """
    model.eval()
    items = [dataset[index] for index in range(min(QUALITATIVE_IMAGES, len(dataset)))]
    dtype = input_dtype(accelerator)
    preds = [predict(model, item["image"][None].to(accelerator.device, dtype), cfg).argmax(1)[0] for item in items]
    model.train()
    return {
        "images": np.stack([denormalize(item["image"]) for item in items]),
        "labels": np.stack([item["label"].numpy().astype(np.uint8) for item in items]),
        "preds": np.stack([pred.cpu().numpy().astype(np.uint8) for pred in preds]),
        "palette": np.asarray(info.palette, dtype=np.uint8),
        "class_names": np.asarray(info.class_names),
        "indices": np.arange(len(items)),
    }


# ---------------------------------------------------------------- training


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


def library_versions() -> dict[str, str]:
    names = ["torch", "timm", "accelerate", "deepspeed", "datasets"]
    return {"python": sys.version.split()[0], **{name: version(name) for name in names}}


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite: the variant stops instead of training on garbage."""


@dataclass
class Trainer:
    """Everything one variant's training loop touches."""

    accelerator: Accelerator
    recipe: Recipe
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    bank: torch.nn.Module | None
    bank_generator: torch.Generator  # seeded alike on every rank: banks sample the same pixels

    def step(self, batch: dict[str, torch.Tensor], iteration: int) -> dict[str, float]:
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

    def loss_parts(self, output: SegOutput, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """CE, aux and contrast terms, unweighted."""
        cfg, labels = self.recipe.loss, batch["label"]
        parts = {"ce": pixel_loss(cfg, output.logits, labels)}
        if output.aux_logits is not None and cfg.aux_weight > 0:
            parts["aux"] = pixel_loss(cfg, output.aux_logits, labels)
        if cfg.contrast.kind == "region":
            parts["contrast"] = region_term(self.accelerator, cfg.contrast, self.bank, output, labels)
        elif cfg.contrast.kind in ("pixel", "all_pixel"):
            parts["contrast"] = pixel_term(self.accelerator, cfg.contrast, self.bank, output, batch, self.bank_generator)
        return parts


def run_info(accelerator: Accelerator) -> dict[str, Any]:
    """How this run was launched: world size, precision, distributed type, device, versions."""
    plugin = accelerator.state.deepspeed_plugin
    return {
        "world_size": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "distributed_type": accelerator.distributed_type.value,
        "zero_stage": plugin.zero_stage if plugin is not None else None,
        "device": measure.device_name(accelerator.device),
        "versions": library_versions(),
    }


def variant_fields(variant: Variant) -> dict[str, Any]:
    """The summary fields that describe what a variant is."""
    recipe = variant.recipe
    contrast_cfg = recipe.loss.contrast
    return {
        "recipe": recipe.run.name, "variant": variant.name,
        "backbone": recipe.model.backbone, "head": recipe.model.head,
        "output_stride": recipe.model.output_stride,
        "contrast_kind": contrast_cfg.kind,
        "center_variant": contrast_cfg.variant if contrast_cfg.kind == "region" else None,
        "bank_size": contrast_cfg.bank_size if contrast_cfg.kind != "none" else None,
        "paper": recipe.paper.model_dump() if recipe.paper else None,
        "iterations": recipe.optim.iterations,
    }


def make_accelerator(recipe: Recipe) -> Accelerator:
    """A fresh Accelerator per variant: its own prepared objects, checkpoint registry and accumulation.

    The seedable sampler makes each epoch's order a function of (seed, epoch) alone.
    """
    return Accelerator(
        gradient_accumulation_steps=recipe.optim.grad_accum_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=recipe.run.seed),
    )


class Progress:
    """Loop state that lives in no module: the next iteration and the bank sampling generator."""

    def __init__(self, generator: torch.Generator) -> None:
        self.iteration, self.generator = 0, generator

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = state["iteration"]
        self.generator.set_state(state["generator"])


def save_checkpoint(accelerator: Accelerator, out_dir: Path, bank: torch.nn.Module | None) -> None:
    """Everything a resume needs, through save_state; swapped in whole, so a kill never leaves half of one."""
    final, scratch, old = (out_dir / name for name in (CHECKPOINT, f"{CHECKPOINT}.tmp", f"{CHECKPOINT}.old"))
    accelerator.save_state(str(scratch))
    if isinstance(bank, sharded.ShardedRegionBank):
        sharded.save_shard(bank, scratch)  # save_state keeps custom objects of the main rank only
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            final.rename(old)
        scratch.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint: a kill between the two renames leaves only the old one."""
    for name in (CHECKPOINT, f"{CHECKPOINT}.old"):
        if (out_dir / name).is_dir():
            return out_dir / name
    return None


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors (names, dtypes and bytes): equal digests mean bitwise-equal state."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def identical_on_all_ranks(accelerator: Accelerator, digest: str) -> bool:
    """Whether every rank computed the same digest."""
    local = torch.tensor([int(digest[:15], 16)], device=accelerator.device)  # 60 bits fit an int64
    gathered = accelerator.gather(local)
    return bool((gathered == gathered[0]).all())


def per_rank_measurements(accelerator: Accelerator, seconds: float | None, peak_bytes: int) -> list[dict[str, Any]]:
    """Step time and peak memory of every rank, gathered so the main process can record them."""
    local = torch.tensor([[seconds or math.nan, float(peak_bytes)]], dtype=torch.float64, device=accelerator.device)
    rows = accelerator.gather(local).cpu().tolist()  # [world, 2]
    return [{"rank": rank, "s_per_iter": row[0], "peak_memory_bytes": int(row[1])} for rank, row in enumerate(rows)]


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
    """Data, model, bank and optimizer, prepared; the bank is registered but never prepared."""
    set_seed(recipe.run.seed, deterministic=recipe.run.deterministic)
    train_set, val_set, info = build_datasets(recipe.data, recipe.run.seed)
    model = build_model(recipe.model, info.num_classes)
    if recipe.model.sync_bn and accelerator.num_processes > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if input_dtype(accelerator) != torch.float32:
        batchnorm_in_float32(model)
    bank = build_bank(accelerator, recipe.loss.contrast, info.num_classes, model, len(train_set), recipe.data.crop_size)
    if bank is not None:
        bank.to(accelerator.device)
    optimizer = build_optimizer(model, recipe.optim)
    train_loader, val_loader = make_loaders(train_set, val_set, recipe)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    progress = Progress(torch.Generator(accelerator.device).manual_seed(recipe.run.seed))
    # A sharded bank differs per rank; save_state would keep rank 0's only, so it saves its own shards.
    replicated = bank is not None and not isinstance(bank, sharded.ShardedRegionBank)
    accelerator.register_for_checkpointing(progress, *([bank] if replicated else []))
    trainer = Trainer(accelerator, recipe, model, optimizer, bank, progress.generator)
    return Setup(trainer, progress, train_loader, val_loader, train_set, val_set, info)


def resume_from(accelerator: Accelerator, out_dir: Path, progress: Progress, bank: torch.nn.Module | None) -> int:
    """Load the latest checkpoint, if any; the iteration to continue from."""
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is None:
        return 0
    accelerator.load_state(str(checkpoint))
    if isinstance(bank, sharded.ShardedRegionBank):
        sharded.load_shard(bank, checkpoint)
    accelerator.print(f"resuming {out_dir} at iteration {progress.iteration}")
    return progress.iteration


def train_variant(accelerator: Accelerator, variant: Variant, out_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train and evaluate one variant; write its metrics log, summary and report inputs."""
    recipe = variant.recipe
    setup = set_up(accelerator, recipe)
    trainer, model = setup.trainer, setup.trainer.model
    start = resume_from(accelerator, out_dir, setup.progress, trainer.bank) if resume else 0
    log = MetricsLog(out_dir / "metrics.jsonl", accelerator.is_main_process)
    log.truncate_after(start)
    flops = measure.flops_per_image(
        accelerator.unwrap_model(model), recipe.data.crop_size, accelerator.device, input_dtype(accelerator)
    )
    remaining = recipe.optim.iterations - start
    # Skip warm-up iterations (allocator, caches), but keep some in very short runs.
    timer = measure.StepTimer(accelerator.device, warmup=min(5, remaining // 2))
    batches = endless(setup.train_loader, setup.train_set, start * recipe.optim.grad_accum_steps)
    progress_bar = tqdm(total=recipe.optim.iterations, initial=start, desc=variant.name,
                        disable=not accelerator.is_main_process)
    with measure.PeakMemory(accelerator.device) as memory:
        for iteration in range(start, recipe.optim.iterations):
            timer.start()
            lr = poly_lr(recipe.optim, iteration)
            set_lr(trainer.optimizer, lr)
            for _ in range(recipe.optim.grad_accum_steps):
                losses = trainer.step(next(batches), iteration)
            step_time = timer.stop()
            setup.progress.iteration = done = iteration + 1
            if done % recipe.run.log_interval == 0 or iteration == start:
                log.write({"kind": "train", "iter": done, **losses, "lr": lr, "step_time": step_time})
            progress_bar.update(1)
            progress_bar.set_postfix(loss=f"{losses['loss']:.3f}")
            if done < recipe.optim.iterations and _due(done, recipe.eval.interval):
                interim = evaluate(accelerator, model, setup.val_loader, recipe.eval, setup.info.num_classes)
                log.write({"kind": "eval", "iter": done, "val_miou": interim.miou})
            if done < recipe.optim.iterations and _due(done, recipe.run.checkpoint_interval):
                save_checkpoint(accelerator, out_dir, trainer.bank)
        progress_bar.close()
        final = evaluate(accelerator, model, setup.val_loader, recipe.eval, setup.info.num_classes, collect_centers=True)
        samples = qualitative_samples(accelerator, model, setup.val_set, recipe.eval, setup.info)
    log.write({"kind": "eval", "iter": recipe.optim.iterations, "val_miou": final.miou})
    summary = {
        **variant_fields(variant), "status": "ok", "error": None,
        "val_miou": final.miou, "per_class_iou": final.per_class.tolist(), "class_names": list(setup.info.class_names),
        **throughput_and_memory(accelerator, recipe, timer.seconds_per_iter(), memory),
        "params": measure.count_parameters(accelerator.unwrap_model(model)), "flops_per_image": flops,
        **bank_fields(accelerator, trainer.bank),
        **run_info(accelerator),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if accelerator.is_main_process:
        save_npz_atomic(out_dir / "val_centers.npz", centers=final.centers, labels=final.center_labels)
        save_npz_atomic(out_dir / "val_samples.npz", **samples)
        write_json(out_dir / "summary.json", summary)
        for name in (CHECKPOINT, f"{CHECKPOINT}.old"):
            shutil.rmtree(out_dir / name, ignore_errors=True)  # the run is complete: nothing to resume
    accelerator.free_memory()
    return summary


def _due(done: int, interval: int) -> bool:
    """Whether a periodic action (every `interval` iterations; 0 = never) falls at `done`."""
    return interval > 0 and done % interval == 0


def throughput_and_memory(
    accelerator: Accelerator, recipe: Recipe, seconds: float | None, memory: measure.PeakMemory
) -> dict[str, Any]:
    """Per-rank and global speed and memory; the slowest rank sets the global pace."""
    ranks = per_rank_measurements(accelerator, seconds, memory.peak_bytes)
    slowest = max((rank["s_per_iter"] for rank in ranks), default=math.nan)
    local_batch = recipe.data.batch_size * recipe.optim.grad_accum_steps
    for rank in ranks:
        rank["images_per_s"] = local_batch / rank["s_per_iter"]
    return {
        "s_per_iter": slowest, "train_images_per_s": local_batch * accelerator.num_processes / slowest,
        "peak_memory_bytes": max(rank["peak_memory_bytes"] for rank in ranks), "memory_kind": memory.kind,
        "per_rank": ranks,
    }


def bank_fields(accelerator: Accelerator, bank: torch.nn.Module | None) -> dict[str, Any]:
    """Bank bytes, its resolved size, and proof that every rank holds the same bank."""
    if bank is None:
        return {"bank_bytes": 0}
    digest = state_digest(bank.state_dict())
    # Shards hold different slots by design; what must agree is where every rank writes next.
    shared = state_digest({"ptr": bank.ptr}) if isinstance(bank, sharded.ShardedRegionBank) else digest
    fields = {"bank_bytes": bank.nbytes(), "bank_digest": digest,  # per rank for a sharded bank
              "bank_identical_across_ranks": identical_on_all_ranks(accelerator, shared)}
    if isinstance(bank, (contrast.RegionBank, sharded.ShardedRegionBank)):
        fields["bank_size"] = bank.size  # "one slot per training image" resolved to a number
    return fields


def write_resolved_recipe(out_dir: Path, variant: Variant) -> None:
    """The exact recipe this variant ran with, as YAML."""
    write_atomic(out_dir / "recipe.yaml", yaml.safe_dump(variant.recipe.model_dump(mode="json"), sort_keys=False))


def failed_summary(accelerator: Accelerator, variant: Variant, error: BaseException) -> dict[str, Any]:
    """The summary of a variant that did not finish, with its error."""
    return {
        **variant_fields(variant), "status": "failed", "error": f"{type(error).__name__}: {error}",
        **run_info(accelerator), "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
