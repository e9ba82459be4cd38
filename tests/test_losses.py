"""Tests for harness.losses: OHEM's threshold, min_kept and ignore rules against hand-computed losses."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.labels import IGNORE_INDEX
from harness.losses import ohem_cross_entropy, segmentation_losses
from harness.ops import upsample_to
from harness.recipe import LossConfig

# True-class probabilities of six labelled pixels, as a 2x3 map.
P_TRUE = np.array([[0.9, 0.2, 0.6], [0.75, 0.4, 0.05]])
LABELS = np.array([[0, 1, 1], [0, 0, 1]])


def two_class_case(p_true: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [1,2,H,W] whose softmax gives each pixel's labelled class probability p_true, and labels [1,H,W]."""
    true_class = np.where(labels == 1, 1, 0)  # ignored pixels get class 0's layout
    probs = np.stack([np.where(true_class == n, p_true, 1 - p_true) for n in range(2)])  # [2,H,W]
    logits = torch.tensor(np.log(probs)[None], dtype=torch.float64, requires_grad=True)
    return logits, torch.tensor(labels[None], dtype=torch.long)


def mean_ce(p_true: list[float]) -> float:
    """The mean cross-entropy of pixels with these true-class probabilities."""
    return float(np.mean(-np.log(p_true)))


def test_threshold_keeps_the_pixels_at_or_below_it():
    logits, labels = two_class_case(P_TRUE, LABELS)
    loss = ohem_cross_entropy(logits, labels, thresh=0.7, min_kept=1)
    assert loss.item() == pytest.approx(mean_ce([0.2, 0.6, 0.4, 0.05]))
    loss.backward()
    # Only the kept (hard) pixels get a gradient.
    touched = logits.grad.abs().sum(1)[0] > 0
    assert touched.tolist() == (P_TRUE <= 0.7).tolist()


@pytest.mark.parametrize(
    ("thresh", "min_kept", "kept"),
    [
        (0.3, 4, [0.05, 0.2, 0.4, 0.6]),  # 2 below 0.3: the threshold rises to the 4th smallest p
        (0.3, 2, [0.05, 0.2]),  # exactly min_kept below the threshold
        (0.01, 1, [0.05]),  # none below: the single least confident pixel
        (0.3, 100, [0.9, 0.2, 0.6, 0.75, 0.4, 0.05]),  # min_kept beyond the pixel count: all of them
    ],
)
def test_min_kept_keeps_the_least_confident(thresh, min_kept, kept):
    logits, labels = two_class_case(P_TRUE, LABELS)
    assert ohem_cross_entropy(logits, labels, thresh, min_kept).item() == pytest.approx(mean_ce(kept))


def test_ignored_pixels_never_count():
    # A very unconfident ignored pixel would be the hardest if it counted, and would fill a min_kept slot.
    p_true = np.concatenate([P_TRUE, [[0.001, 0.002, 0.003]]])
    labels = np.concatenate([LABELS, np.full((1, 3), IGNORE_INDEX)])
    logits, labels = two_class_case(p_true, labels)
    assert ohem_cross_entropy(logits, labels, 0.7, 1).item() == pytest.approx(mean_ce([0.2, 0.6, 0.4, 0.05]))
    assert ohem_cross_entropy(logits, labels, 0.3, 3).item() == pytest.approx(mean_ce([0.05, 0.2, 0.4]))
    ohem_cross_entropy(logits, labels, 0.3, 3).backward()
    assert logits.grad[..., 2, :].abs().sum() == 0


def test_all_ignored_is_zero_with_a_graph():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.full((2, 4, 4), IGNORE_INDEX)
    loss = ohem_cross_entropy(logits, labels, 0.7, 10)
    assert loss.item() == 0 and not math.isnan(loss.item()) and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_aux_head_gets_plain_ce_even_under_ohem():
    generator = torch.Generator().manual_seed(0)
    logits, aux_logits = (torch.randn(2, 3, 4, 4, generator=generator) for _ in range(2))
    labels = torch.randint(0, 3, (2, 8, 8), generator=generator)
    cfg = LossConfig(kind="ohem", ohem_thresh=0.7, ohem_min_kept=4)
    parts = segmentation_losses(cfg, logits, aux_logits, labels, False)
    plain = segmentation_losses(LossConfig(kind="ce"), logits, aux_logits, labels, False)
    upsampled = upsample_to(aux_logits, (8, 8), align_corners=False)
    assert parts["aux"].item() == pytest.approx(F.cross_entropy(upsampled, labels).item())
    assert parts["aux"].item() == pytest.approx(plain["aux"].item())
    # The main head is mined: a mean over its hardest pixels only, so above the plain mean.
    assert parts["ce"].item() > plain["ce"].item()


def test_no_aux_term_without_aux_logits_or_weight():
    logits, labels = torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)
    assert set(segmentation_losses(LossConfig(), logits, None, labels, False)) == {"ce"}
    assert set(segmentation_losses(LossConfig(aux_weight=0), logits, logits, labels, False)) == {"ce"}


@pytest.mark.parametrize("cells", [97, 13])  # a 769 crop at stride 8, and a small one of 8 * 12 + 1
def test_align_corners_puts_stride_8_cell_k_on_pixel_8k(cells: int):
    pixels = 8 * (cells - 1) + 1
    logits = torch.randn(1, 2, cells, cells, generator=torch.Generator().manual_seed(cells), dtype=torch.float64)
    aligned = upsample_to(logits, (pixels, pixels), align_corners=True)
    torch.testing.assert_close(aligned[..., ::8, ::8], logits, rtol=0, atol=1e-12)
    # Half-pixel centres (False) shift the map by 3.5 px: cell k's value is no longer at pixel 8k.
    shifted = upsample_to(logits, (pixels, pixels), align_corners=False)
    assert not torch.allclose(shifted[..., ::8, ::8], logits)
    # The loss sees the aligned map: CE on aligned logits equals CE on upsample_to(..., True).
    labels = torch.randint(0, 2, (1, pixels, pixels), generator=torch.Generator().manual_seed(1))
    loss = segmentation_losses(LossConfig(), logits, None, labels, align_corners=True)["ce"]
    assert loss.item() == pytest.approx(F.cross_entropy(aligned, labels).item())
    assert loss.item() != pytest.approx(F.cross_entropy(shifted, labels).item())
