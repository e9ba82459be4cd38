"""Region centers: one per image and class present (Eq. 2, and Eq. 3's dynamic sampling).

Paper: Hu, Cui, Wang, "Region-aware Contrastive Learning for Semantic Segmentation",
ICCV 2021, Section 3.2.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from harness.contrast.streaming import full_precision
from harness.labels import IGNORE_INDEX


def pixel_members(index: Tensor, keep: Tensor, num_classes: int) -> Tensor:
    """Indicator [B,N,P] of pixel p having class n in `index` [B,P] (kept pixels only)."""
    classes = torch.arange(num_classes, device=index.device)
    return ((index[:, None, :] == classes[None, :, None]) & keep[:, None, :]).float()


def _direct_average(truth: Tensor, predicted: Tensor, confidence: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 2: every pixel predicted as class i, weight 1."""
    return predicted, predicted.sum(2)


def _ground_truth_average(truth: Tensor, predicted: Tensor, confidence: Tensor) -> tuple[Tensor, Tensor]:
    """EP + HP without weights: every ground-truth pixel of class i, weight 1."""
    return truth, truth.sum(2)


def _dynamic_sampling(truth: Tensor, predicted: Tensor, confidence: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 3: easy positives weigh 1 - c, hard positives 1; normalised by the ground-truth count."""
    easy = truth * predicted
    return truth - easy * confidence[:, None, :], truth.sum(2)


# Each maps (ground-truth members, predicted members [B,N,P], confidence [B,P]) to
# (pixel weights [B,N,P], denominators [B,N]).
CENTER_VARIANTS: dict[str, Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]] = {
    "average": _direct_average,
    "ep_hp": _ground_truth_average,
    "weighted": _dynamic_sampling,
}


def weighted_centers(features: Tensor, weights: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image class centers [B,N,C] = sum_p w[n,p] F[:,p] / counts[n], and counts > 0."""
    flat = features.float().flatten(2)  # [B,C,H,W] -> [B,C,P]
    sums = torch.einsum("bnp,bcp->bnc", weights, flat)
    return sums / counts.clamp_min(1)[..., None], counts > 0


def truth_sums(features: Tensor, labels: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """Per image and class, the fp32 sum of the features [B,N,C] of its ground-truth pixels, and their count [B,N]."""
    with full_precision(features.device):
        flat_labels = labels.flatten(1)  # [B,H,W] -> [B,P]
        truth = pixel_members(flat_labels, flat_labels != ignore_index, num_classes)  # [B,N,P]
        return torch.einsum("bnp,bcp->bnc", truth, features.float().flatten(2)), truth.sum(2)  # [B,C,H,W] -> [B,C,P]


def region_centers(
    features: Tensor,
    logits: Tensor,
    labels: Tensor,
    num_classes: int,
    variant: str,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[Tensor, Tensor]:
    """Region centers [B,N,C] (fp32, not normalised) and valid [B,N], one per image and class."""
    if variant not in CENTER_VARIANTS:
        raise KeyError(f"unknown region-center variant {variant!r}; choose from {sorted(CENTER_VARIANTS)}")
    with full_precision(features.device):
        truth_labels = labels.flatten(1)  # [B,H,W] -> [B,P]
        keep = truth_labels != ignore_index
        # The prediction and its confidence only choose and weigh pixels, like a sampler;
        # the paper gives them no gradient path, so the logits are detached.
        probs = logits.detach().float().flatten(2).softmax(1)  # [B,N,H,W] -> [B,N,P]
        confidence, predicted_labels = probs.max(1)
        truth = pixel_members(truth_labels, keep, num_classes)
        predicted = pixel_members(predicted_labels, keep, num_classes)
        weights, counts = CENTER_VARIANTS[variant](truth, predicted, confidence)
        return weighted_centers(features, weights, counts)


def region_entries(centers: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Every slot of centers [B,N,C] as entries [BN,C], class labels [BN] and valid [BN], image-major.

    Fixed shapes (the padding masked by `valid`, never dropped), so nothing waits for the host.
    """
    batch, num_classes, dim = centers.shape
    labels = torch.arange(num_classes, device=centers.device).repeat(batch)
    return centers.reshape(batch * num_classes, dim), labels, valid.reshape(batch * num_classes)  # [B,N,*] -> [BN,*]
