"""Pixel losses (CE / OHEM), the auxiliary loss and their weighting into one loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.labels import IGNORE_INDEX
from harness.ops import upsample_to
from harness.recipe import LossConfig


def ohem_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, thresh: float, min_kept: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """CE over the hard pixels: true-class probability at most `thresh`, and at least the `min_kept` least confident.

    Masks and a device-side threshold, never a host round trip; all pixels ignored gives 0 with a graph.
    """
    pixel_loss = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none").flatten()
    valid = labels.flatten() != ignore_index
    # p(true class) = exp(-CE); ignored pixels get 2, above any probability, so they sort last.
    true_prob = torch.where(valid, torch.exp(-pixel_loss.detach()), 2.0)
    smallest = true_prob.topk(min(min_kept, true_prob.numel()), largest=False).values  # ascending
    # The min_kept-th least confident valid pixel (or the last valid one) raises the threshold.
    kth = (valid.sum().clamp(max=min_kept) - 1).clamp_min(0)
    threshold = smallest[kth].clamp_min(thresh)
    hard = valid & (true_prob <= threshold)
    return (pixel_loss * hard).sum() / hard.sum().clamp_min(1)


def pixel_loss(
    cfg: LossConfig, logits: torch.Tensor, labels: torch.Tensor, align_corners: bool, hard_mining: bool = True
) -> torch.Tensor:
    """The recipe's pixel loss (CE, or OHEM where hard_mining allows it) on logits resized to the label map."""
    logits = upsample_to(logits, tuple(labels.shape[-2:]), align_corners).float()
    if cfg.kind == "ohem" and hard_mining:
        return ohem_cross_entropy(logits, labels, cfg.ohem_thresh, cfg.ohem_min_kept)
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def segmentation_losses(
    cfg: LossConfig, logits: torch.Tensor, aux_logits: torch.Tensor | None, labels: torch.Tensor, align_corners: bool
) -> dict[str, torch.Tensor]:
    """The unweighted CE (or OHEM) term of the main logits and, when there is one, the aux head's plain CE.

    OHEM mines the main head's pixels only, as mmsegmentation's OHEM configs do (the sampler sits on
    the decode head): the aux head is a deep-supervision regulariser of stage 3, weighted 0.4.
    """
    parts = {"ce": pixel_loss(cfg, logits, labels, align_corners)}
    if aux_logits is not None and cfg.aux_weight > 0:
        parts["aux"] = pixel_loss(cfg, aux_logits, labels, align_corners, hard_mining=False)
    return parts


def total_loss(cfg: LossConfig, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Eq. 5: L = L_CE + alpha * L_AUX + beta * L_contrast, over the parts present."""
    weights = {"ce": 1.0, "aux": cfg.aux_weight, "contrast": cfg.contrast.weight}
    return sum(weights[name] * value for name, value in parts.items())
