"""Batched evaluation (slide windows per forward, a scale's flips together) predicts what one forward per image,
view and window does; the validation centers are unchanged; under a bf16 launch the forwards autocast."""

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from harness.contrast import truth_sums
from harness.engine.evaluate import center_tap, predict, view_size, window_starts
from harness.labels import IGNORE_INDEX
from harness.models import build_model
from harness.ops import resize_labels
from harness.recipe import EvalConfig, ModelConfig
from tests.conftest import seeded

CLASSES = 5
# Batched and unbatched forwards of one fp32 model differ only in the kernels' summation order; this
# model's probabilities agree to ~1e-7, so 1e-5 has room yet is far below any change of the protocol.
TOLERANCE = dict(rtol=1e-5, atol=1e-5)
PROTOCOLS = {
    "whole": EvalConfig(),
    "slide": EvalConfig(mode="slide", slide_crop=24, slide_stride=16, batch_windows=4),  # 6 windows: 4 then 2
    "multi-scale+flip": EvalConfig(scales=(0.75, 1.0, 1.25), flip=True),
    "slide multi-scale+flip": EvalConfig(mode="slide", slide_crop=24, slide_stride=16, scales=(0.75, 1.0),
                                         flip=True, batch_windows=4),
}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """A tiny DeepLabV3 in eval mode (its batch norms read running statistics: no image depends on another)."""
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet10t", pretrained=False, head_channels=16, aux_head=False)
    return build_model(cfg, CLASSES).eval()


def one_forward(model: torch.nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities [1,N,h,w] of one image [1,3,h,w] and its head features."""
    output = model(image)
    return F.interpolate(output.logits, size=image.shape[-2:], mode="bilinear").softmax(1), output.features


def unbatched(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: EvalConfig):
    """The protocol with one forward per image, scale, flip and window: probabilities [B,N,H,W], and the
    per-class feature sums and pixel counts of the scale-1, unflipped windows."""
    size, results = tuple(images.shape[-2:]), []
    for image, label in zip(images.split(1), labels.split(1)):
        total, sums, counts = 0.0, 0.0, 0.0
        for scale in cfg.scales:
            scaled_size = view_size(size, cfg, scale)
            scaled = F.interpolate(image, size=scaled_size, mode="bilinear") if scaled_size != size else image
            for flip in (False, True) if cfg.flip else (False,):
                view = scaled.flip(-1) if flip else scaled
                crop = cfg.slide_crop if cfg.mode == "slide" else None
                padded = view if crop is None else F.pad(view, (0, max(crop - view.shape[-1], 0),
                                                                0, max(crop - view.shape[-2], 0)))
                height, width = padded.shape[-2:]
                crop_h, crop_w = (height, width) if crop is None else (crop, crop)
                stride = cfg.slide_stride or max(height, width)
                probs = torch.zeros(1, CLASSES, height, width)
                hits = torch.zeros(height, width)
                for top in window_starts(height, crop_h, stride):
                    for left in window_starts(width, crop_w, stride):
                        window_probs, features = one_forward(model, padded[..., top:top + crop_h, left:left + crop_w])
                        probs[..., top:top + crop_h, left:left + crop_w] += window_probs
                        hits[top:top + crop_h, left:left + crop_w] += 1
                        if scale == 1.0 and not flip:
                            window = label[:, top:top + crop_h, left:left + crop_w]  # padding is ignored
                            window = F.pad(window, (0, crop_w - window.shape[2], 0, crop_h - window.shape[1]),
                                           value=IGNORE_INDEX)
                            window_sums, window_counts = truth_sums(
                                features, resize_labels(window, tuple(features.shape[-2:])), CLASSES)
                            sums, counts = sums + window_sums, counts + window_counts
                probs = (probs / hits)[..., :view.shape[-2], :view.shape[-1]]
                probs = probs.flip(-1) if flip else probs
                total = total + F.interpolate(probs, size=size, mode="bilinear")
        results.append((total / (len(cfg.scales) * (2 if cfg.flip else 1)), sums, counts))
    probs, sums, counts = (torch.cat(parts) for parts in zip(*results))
    return probs, sums, counts


@pytest.mark.parametrize("protocol", PROTOCOLS)
@torch.no_grad()
def test_batched_predictions_and_centers_equal_unbatched(model: torch.nn.Module, protocol: str) -> None:
    cfg = PROTOCOLS[protocol]
    images = torch.randn(2, 3, 40, 56, generator=seeded(0))
    labels = torch.randint(0, CLASSES, (2, 40, 56), generator=seeded(1))
    labels[0, :5] = IGNORE_INDEX
    tap = center_tap(labels, cfg, CLASSES)
    probs = predict(model, images, cfg, tap, align_corners=False)
    expected, sums, counts = unbatched(model, images, labels, cfg)
    assert probs.shape == expected.shape == (2, CLASSES, 40, 56) and probs.dtype == torch.float32
    torch.testing.assert_close(probs, expected, **TOLERANCE)
    assert torch.equal(probs.argmax(1), expected.argmax(1))
    centers, valid = tap.centers()
    torch.testing.assert_close(tap.counts, counts, rtol=0, atol=0)  # pixel counts are integers
    torch.testing.assert_close(centers, sums / counts.clamp_min(1)[..., None], **TOLERANCE)
    assert torch.equal(valid, counts > 0) and bool(valid.any())


def test_slide_windows_go_through_batch_windows_per_forward(model: torch.nn.Module) -> None:
    batches = []
    handle = model.register_forward_pre_hook(lambda module, args: batches.append(tuple(args[0].shape)))
    try:
        with torch.no_grad():
            predict(model, torch.randn(2, 3, 40, 56, generator=seeded(2)), PROTOCOLS["slide multi-scale+flip"],
                    align_corners=False)
    finally:
        handle.remove()
    # 2 x 3 windows at both scales (0.75: 30 x 42, 1: 40 x 56), 4 then 2 per forward, each window with both
    # flips of both images (4 rows).
    assert batches == [(16, 3, 24, 24), (8, 3, 24, 24)] * 2


def test_evaluation_forwards_autocast_under_a_bf16_launch(model: torch.nn.Module) -> None:
    """Accelerate's prepare wraps the model's forward in autocast, as it does for training; outputs come back fp32."""
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        accelerator = Accelerator(cpu=True, mixed_precision="bf16")
        prepared = accelerator.prepare(build_model(ModelConfig(backbone="resnet10t", pretrained=False,
                                                               head_channels=16, aux_head=False), CLASSES).eval())
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    inner = []
    handle = prepared.head.register_forward_hook(lambda module, args, output: inner.append(output[1].dtype))
    with torch.no_grad():
        probs = predict(prepared, torch.randn(1, 3, 32, 32, generator=seeded(3)), PROTOCOLS["multi-scale+flip"],
                        align_corners=False)
    handle.remove()
    assert inner == [torch.bfloat16] * 3 and probs.dtype == torch.float32  # one batched forward per scale
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 32, 32))
