"""Evaluation: whole / slide / multi-scale + flip prediction, exact distributed mIoU, region centers, samples."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from harness.contrast import region_entries, truth_sums
from harness.data import DatasetInfo, base_factor
from harness.engine.context import RunContext
from harness.labels import IGNORE_INDEX
from harness.metrics import confusion_matrix, iou_from_confusion
from harness.models import SegOutput
from harness.ops import resize_labels, upsample_to
from harness.progress import bar
from harness.recipe import EvalConfig

QUALITATIVE_IMAGES = 4  # the paper's Fig. 4 shows four


class CenterTap:
    """Ground-truth region centers of the head features, read off the evaluation's own forwards.

    Fed every forward of a batch's scale-1, unflipped view (the whole image, or each slide
    window); sums and pixel counts add up over windows. For the paper's Fig. 3 t-SNE.
    """

    def __init__(self, labels: torch.Tensor, num_classes: int) -> None:
        self.labels, self.num_classes = labels, num_classes  # labels [B,H,W] at the tapped view's size
        self.sums = self.counts = None

    def __call__(self, output: SegOutput, top: int, left: int, size: tuple[int, int], row: int = 0) -> None:
        """Add the head features of the window at (top, left) of `size` pixels: the B rows of output.features
        from `row` on (a batched forward also holds other windows and the flipped view)."""
        features = output.features[row : row + len(self.labels)]
        window = self.labels[:, top : top + size[0], left : left + size[1]]
        window = F.pad(window, (0, size[1] - window.shape[2], 0, size[0] - window.shape[1]), value=IGNORE_INDEX)
        sums, counts = truth_sums(features, resize_labels(window, tuple(features.shape[-2:])), self.num_classes)
        self.sums = sums if self.sums is None else self.sums + sums
        self.counts = counts if self.counts is None else self.counts + counts

    def centers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Centers [B,N,C] and valid [B,N]."""
        return self.sums / self.counts.clamp_min(1)[..., None], self.counts > 0


def probabilities(logits: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """fp32 class probabilities [B,N,*size] of logits [B,N,h,w]: a bf16 forward's logits are summed in fp32."""
    return upsample_to(logits.float(), size, align_corners).softmax(1)


def forward_whole(
    model: torch.nn.Module, images: torch.Tensor, tap: CenterTap | None = None, origin: tuple[int, int] = (0, 0),
    align_corners: bool = False,
) -> torch.Tensor:
    """Class probabilities [B,N,H,W] from one whole-image forward; `tap` sees its first rows, placed at `origin`."""
    output = model(images)
    if tap is not None:
        tap(output, *origin, tuple(images.shape[-2:]))
    return probabilities(output.logits, tuple(images.shape[-2:]), align_corners)


def forward_slide(
    model: torch.nn.Module, images: torch.Tensor, crop: int, stride: int, tap: CenterTap | None = None,
    align_corners: bool = False, batch_windows: int = 1,
) -> torch.Tensor:
    """Class probabilities [B,N,H,W] averaged over overlapping crop x crop windows, `batch_windows` per forward.

    Windows are added in the same order whatever the batching, so only the forwards' own rounding
    can tell batched from unbatched.
    """
    height, width = images.shape[-2:]
    padded = F.pad(images, (0, max(crop - width, 0), 0, max(crop - height, 0)))
    pad_h, pad_w = padded.shape[-2:]
    rows = images.shape[0]
    tops, lefts = window_starts(pad_h, crop, stride), window_starts(pad_w, crop, stride)
    windows = [(top, left) for top in tops for left in lefts]
    total = count = None
    for first in range(0, len(windows), batch_windows):
        group = windows[first:first + batch_windows]
        crops = [padded[..., top:top + crop, left:left + crop] for top, left in group]
        output = model(torch.cat(crops))  # n x [B,3,c,c] -> [nB,3,c,c]
        probs = probabilities(output.logits, (crop, crop), align_corners)
        probs = probs.unflatten(0, (len(group), rows))  # [nB,N,c,c] -> [n,B,N,c,c]
        if total is None:
            total = probs.new_zeros(rows, probs.shape[2], pad_h, pad_w)
            count = probs.new_zeros(1, 1, pad_h, pad_w)
        for index, (top, left) in enumerate(group):
            if tap is not None:
                tap(output, top, left, (crop, crop), row=index * rows)
            total[..., top:top + crop, left:left + crop] += probs[index]
            count[..., top:top + crop, left:left + crop] += 1
    return (total / count)[..., :height, :width]


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Window offsets covering [0, length), the last one flush with the end."""
    starts = list(range(0, max(length - crop, 0) + 1, stride))
    if starts[-1] + crop < length:
        starts.append(length - crop)
    return starts


def view_size(size: tuple[int, int], cfg: EvalConfig, scale: float) -> tuple[int, int]:
    """The (height, width) images of `size` are predicted at for one of the protocol's scales (base factor included)."""
    base = base_factor(size, cfg.base_size)
    return tuple(max(1, round(side * base * scale)) for side in size)


def predict(
    model: torch.nn.Module, images: torch.Tensor, cfg: EvalConfig, tap: CenterTap | None = None, *,
    align_corners: bool,
) -> torch.Tensor:
    """Probabilities [B,N,H,W] averaged over the recipe's scales and flips; `tap` (built at the scale-1 view's
    size) sees the scale-1, unflipped view.

    Each scale multiplies the base factor fitting the images into cfg.base_size (1 without one),
    as mmsegmentation's test pipeline resizes to its base scale before its ratios; predictions
    are scored at the native size. `align_corners` (the model's) places the logits on the pixels;
    images are rescaled by half-pixel centres, as mmsegmentation's test pipeline resizes them.
    A scale's flipped view shares its shape, so both go through the same forwards, batched.
    """
    size, batch = tuple(images.shape[-2:]), images.shape[0]
    total = None
    for scale in cfg.scales:
        scaled_size = view_size(size, cfg, scale)
        scaled = images if scaled_size == size else F.interpolate(images, size=scaled_size, mode="bilinear",
                                                                   align_corners=False)
        views = torch.cat([scaled, scaled.flip(-1)]) if cfg.flip else scaled  # [VB,3,h,w], unflipped rows first
        view_tap = tap if scale == 1.0 else None
        if cfg.mode == "slide":
            probs = forward_slide(model, views, cfg.slide_crop, cfg.slide_stride, view_tap, align_corners,
                                  cfg.batch_windows)
        else:
            probs = forward_whole(model, views, view_tap, align_corners=align_corners)
        for index, view_probs in enumerate(probs.split(batch)):  # [VB,N,h,w] -> V x [B,N,h,w]
            view_probs = upsample_to(view_probs.flip(-1) if index == 1 else view_probs, size, align_corners)
            total = view_probs if total is None else total + view_probs
    return total / (len(cfg.scales) * (2 if cfg.flip else 1))


@dataclass
class Evaluation:
    miou: float
    per_class: torch.Tensor
    confusion: torch.Tensor  # [N,N] counts over the split, rows = ground truth
    centers: np.ndarray | None = None  # [M, C] ground-truth region centers of the val set
    center_labels: np.ndarray | None = None  # [M]


def center_tap(labels: torch.Tensor, cfg: EvalConfig, num_classes: int) -> CenterTap:
    """A CenterTap of labels [B,H,W] at the size of the view it will see, the protocol's scale 1 (nearest)."""
    size = view_size(tuple(labels.shape[-2:]), cfg, 1.0)
    return CenterTap(labels if size == tuple(labels.shape[-2:]) else resize_labels(labels, size), num_classes)


@torch.no_grad()
def evaluate(
    ctx: RunContext, model: torch.nn.Module, loader: DataLoader, cfg: EvalConfig, num_classes: int,
    collect_centers: bool = False,
) -> Evaluation:
    """mIoU over the whole evaluated split: per-image confusion matrices, gathered without padding duplicates."""
    accelerator = ctx.accelerator
    model.eval()
    total = torch.zeros(num_classes, num_classes, dtype=torch.long, device=ctx.device)
    centers, center_labels = [], []
    for batch_index, batch in enumerate(bar(loader, desc="eval", leave=False, enabled=accelerator.is_main_process)):
        if cfg.max_images is not None and batch_index * loader.total_batch_size >= cfg.max_images:
            break
        images, labels = ctx.model_input(batch["image"]), batch["label"].long()  # uint8 from the loader
        tap = center_tap(labels, cfg, num_classes) if collect_centers else None
        preds = predict(model, images, cfg, tap, align_corners=ctx.align_corners).argmax(1)
        per_image = torch.stack([confusion_matrix(p, t, num_classes) for p, t in zip(preds, labels)])  # [B,N,N]
        total += accelerator.gather_for_metrics(per_image).sum(0)
        if tap is not None and tap.sums is not None:
            batch_centers, valid = tap.centers()
            vectors, vector_labels, present = (
                part.cpu() for part in region_entries(*accelerator.gather_for_metrics((batch_centers, valid)))
            )
            centers.append(vectors[present].float())
            center_labels.append(vector_labels[present])
    model.train()
    confusion = total.cpu()
    miou, per_class = iou_from_confusion(confusion)
    if not collect_centers:
        return Evaluation(miou, per_class, confusion)
    if not centers:  # no unscaled view in the protocol: nothing to tap
        return Evaluation(miou, per_class, confusion, np.zeros((0, 0), np.float32), np.zeros(0, np.int64))
    return Evaluation(miou, per_class, confusion, torch.cat(centers).numpy(), torch.cat(center_labels).numpy())


@torch.no_grad()
def qualitative_samples(
    ctx: RunContext, model: torch.nn.Module, dataset: Dataset, cfg: EvalConfig, info: DatasetInfo
) -> dict[str, np.ndarray]:
    """Image, ground truth and prediction for the first images of the evaluated split (the paper's Fig. 4).

    Every rank runs the forward, so models sharded by DeepSpeed ZeRO-3 do not hang.
    """
    model.eval()
    items = [dataset[index] for index in range(min(QUALITATIVE_IMAGES, len(dataset)))]
    images = [ctx.model_input(item["image"][None].to(ctx.device)) for item in items]
    preds = [predict(model, image, cfg, align_corners=ctx.align_corners).argmax(1)[0] for image in images]
    model.train()
    return {
        "images": np.stack([item["image"].permute(1, 2, 0).numpy() for item in items]),  # Q x [3,H,W] -> [Q,H,W,3]
        "labels": np.stack([item["label"].numpy().astype(np.uint8) for item in items]),
        "preds": np.stack([pred.cpu().numpy().astype(np.uint8) for pred in preds]),
        "palette": np.asarray(info.palette, dtype=np.uint8),
        "class_names": np.asarray(info.class_names),
        "indices": np.arange(len(items)),
    }
