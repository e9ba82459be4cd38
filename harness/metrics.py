"""Confusion matrix and mIoU: the one definition every evaluation uses."""

from __future__ import annotations

import torch

from harness.labels import IGNORE_INDEX


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Counts[num_classes, num_classes], rows = ground truth, columns = prediction."""
    keep = target != ignore_index
    target, pred = target[keep].long(), pred[keep].long()
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"target labels must lie in [0, {num_classes}) or equal {ignore_index}")
    flat = target * num_classes + pred  # one bin per (truth, prediction) pair
    counts = torch.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)  # [N*N] -> [N, N]


def iou_from_confusion(cm: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(mIoU, per-class IoU); classes with an empty union are NaN and left out of the mean."""
    cm = cm.double()
    intersection = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - intersection
    per_class = intersection / union  # 0/0 -> NaN for classes absent from truth and prediction
    present = ~per_class.isnan()
    miou = per_class[present].mean().item() if present.any() else float("nan")
    return miou, per_class
