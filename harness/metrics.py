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


# One class predicted on at least this share of the labelled pixels (where the truth gives it less) is a model
# that learned to say one thing: e.g. background everywhere, every other class at IoU 0.
COLLAPSE_SHARE = 0.98
# An mIoU this close to what predicting the truth's most common class everywhere scores is no better than it.
FLOOR_MARGIN = 0.005


def collapse(cm: torch.Tensor, class_names: list[str]) -> str | None:
    """Why a confusion matrix [N,N] (rows truth) shows a model that learned nothing, or None when it learned."""
    cm = cm.double()
    total = cm.sum()
    predicted, truth = cm.sum(0) / total, cm.sum(1) / total  # [N] shares of the labelled pixels
    top = int(predicted.argmax())
    if predicted[top] >= COLLAPSE_SHARE and truth[top] < COLLAPSE_SHARE:
        return (f"'{class_names[top]}' predicted on {predicted[top]:.1%} of the labelled pixels "
                f"(it covers {truth[top]:.1%})")
    miou, _ = iou_from_confusion(cm)
    floor = float(truth.max() / (truth > 0).sum())  # IoU of the majority class alone, over the classes present
    if miou <= floor + FLOOR_MARGIN:
        return f"mIoU {miou:.1%} at the floor of predicting '{class_names[int(truth.argmax())]}' everywhere ({floor:.1%})"
    return None


def iou_from_confusion(cm: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(mIoU, per-class IoU); classes with an empty union are NaN and left out of the mean."""
    cm = cm.double()
    intersection = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - intersection
    per_class = intersection / union  # 0/0 -> NaN for classes absent from truth and prediction
    present = ~per_class.isnan()
    miou = per_class[present].mean().item() if present.any() else float("nan")
    return miou, per_class
