"""Tests for harness.engine and the metrics log: prediction modes, the poly schedule, contrast terms, bank digests."""

import hashlib
import json
import math
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import patch

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch import nn

from harness import results
from harness.contrast import AllPixelBank, PixelBank, RegionBank
from harness.engine import make_context, summary
from harness.engine.evaluate import (
    CenterTap,
    center_tap,
    evaluate,
    forward_slide,
    forward_whole,
    predict,
)
from harness.engine.loop import poly_lr
from harness.engine.summary import state_digest
from harness.engine.terms import (
    ContrastTerm,
    TermInputs,
    build_term,
    contrast_feature_geometry,
)
from harness.labels import IGNORE_INDEX
from harness.models import SegmentationModel, SegOutput, build_model
from harness.ops import resize_labels
from harness.recipe import EvalConfig, OptimConfig, Recipe
from harness.results import METRICS_FILE, MetricsLog, read_metrics
from tests.conftest import seeded, trainer_for
from tests.test_contrast_kinds import KINDS

NUM_CLASSES = 3
WEIGHT = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, 1.0], [-1.0, 0.5, 2.0]])  # [classes, channels]
CONTEXT = torch.tensor([3.0, -2.0, 1.0])  # [classes]
RAMP = torch.tensor([0.0, 2.0, -1.0])  # [classes]


# ---------------------------------------------------------------- prediction


class KnownModel(nn.Module):
    """Full-resolution logits: a linear map of each pixel, plus (with context) the mean and a left-right ramp."""

    def __init__(self, context: bool) -> None:
        super().__init__()
        self.context = context

    def forward(self, images: torch.Tensor) -> SimpleNamespace:
        logits = torch.einsum("nc,bchw->bnhw", WEIGHT, images)
        if self.context:  # the mean makes every window's output differ, the ramp makes flips differ
            ramp = torch.linspace(0, 1, images.shape[-1])
            logits = logits + CONTEXT[None, :, None, None] * images.mean((1, 2, 3))[:, None, None, None]
            logits = logits + RAMP[None, :, None, None] * ramp
        return SimpleNamespace(logits=logits)


def hand_slide(model: nn.Module, images: torch.Tensor, crop: int, tops: list[int], lefts: list[int]) -> torch.Tensor:
    """Per pixel, the mean softmax over the windows at these offsets that cover it."""
    total = torch.zeros(images.shape[0], NUM_CLASSES, *images.shape[-2:])
    count = torch.zeros(images.shape[-2:])
    for top in tops:
        for left in lefts:
            window = images[..., top:top + crop, left:left + crop]
            total[..., top:top + crop, left:left + crop] += model(window).logits.softmax(1)
            count[top:top + crop, left:left + crop] += 1
    assert (count > 0).all()
    return total / count


def test_slide_averages_overlapping_windows():
    images = torch.randn(2, 3, 8, 10, generator=seeded(0))
    model = KnownModel(context=True)
    # Rows: 0 then 2 (flush with the bottom); columns: 0, 3 then 4 (flush with the right edge).
    expected = hand_slide(model, images, 6, tops=[0, 2], lefts=[0, 3, 4])
    torch.testing.assert_close(forward_slide(model, images, crop=6, stride=3), expected)
    assert not torch.allclose(expected, forward_whole(model, images))  # the windows' contexts matter


def test_slide_equals_whole_when_one_window_is_the_image():
    images = torch.randn(2, 3, 8, 8, generator=seeded(1))
    model = KnownModel(context=True)
    torch.testing.assert_close(forward_slide(model, images, crop=8, stride=4), forward_whole(model, images))


def test_slide_larger_than_the_image_crops_its_padding_away():
    images = torch.randn(2, 3, 8, 6, generator=seeded(2))
    model = KnownModel(context=False)  # pointwise: padding changes nothing but the shape
    cfg = EvalConfig(mode="slide", slide_crop=12, slide_stride=8)
    torch.testing.assert_close(predict(model, images, cfg, align_corners=False),
                               predict(model, images, EvalConfig(), align_corners=False))


def test_multi_scale_flip_is_the_mean_of_the_unflipped_views():
    images = torch.randn(2, 3, 12, 12, generator=seeded(3))
    model = KnownModel(context=True)
    views = []
    for scale in (0.5, 1.0):
        scaled = F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
        for flip in (False, True):
            probs = model(scaled.flip(-1) if flip else scaled).logits.softmax(1)
            probs = probs.flip(-1) if flip else probs
            views.append(F.interpolate(probs, size=(12, 12), mode="bilinear", align_corners=False))
    expected = torch.stack(views).mean(0)  # [4,B,N,H,W] -> [B,N,H,W]
    torch.testing.assert_close(predict(model, images, EvalConfig(scales=(0.5, 1.0), flip=True), align_corners=False), expected)
    # Each view counts: dropping the flips or the half scale changes the result.
    assert not torch.allclose(expected, torch.stack(views[::2]).mean(0))
    assert not torch.allclose(expected, torch.stack(views[2:]).mean(0))


# ---------------------------------------------------------------- schedule


def test_poly_lr_follows_the_formula_and_decreases():
    cfg = OptimConfig(lr=0.02, iterations=100, poly_power=0.9)
    assert poly_lr(cfg, 0) == pytest.approx(0.02)
    assert poly_lr(cfg, 50) == pytest.approx(0.02 * 0.5**0.9)
    assert poly_lr(cfg, 99) == pytest.approx(0.02 * 0.01**0.9)  # the last iteration the loop runs
    rates = [poly_lr(cfg, iteration) for iteration in range(cfg.iterations)]
    assert all(later < earlier for earlier, later in zip(rates, rates[1:]))
    assert rates[-1] > 0


# ---------------------------------------------------------------- metrics log


def logged(tmp_path: Path, lines: list[str]) -> Path:
    """A metrics.jsonl holding these raw lines, the last one without its newline (as a killed run leaves it)."""
    path = tmp_path / METRICS_FILE
    path.write_text("\n".join(lines))
    return path


RECORDS = [
    {"kind": "train", "iter": 1, "loss": 2.0},
    {"kind": "train", "iter": 2, "loss": 1.5},
    {"kind": "eval", "iter": 2, "miou": 0.1},
    {"kind": "train", "iter": 3, "loss": 1.2},
]
TORN = '{"kind": "train", "iter": 4, "lo'


def test_truncate_keeps_records_up_to_the_iteration_and_drops_a_torn_line(tmp_path):
    path = logged(tmp_path, [json.dumps(record) for record in RECORDS] + [TORN])
    log = MetricsLog(tmp_path, enabled=True)
    log.truncate_after(2)
    assert [record.model_dump(exclude_unset=True) for record in read_metrics(path)] == RECORDS[:3]
    assert TORN not in path.read_text()
    # The next record starts on a line of its own.
    redone = {"kind": "train", "iter": 3, "loss": 1.1}
    log.write(redone)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [*RECORDS[:3], redone]


def test_truncate_at_zero_empties_the_log(tmp_path):
    path = logged(tmp_path, [json.dumps(record) for record in RECORDS])
    MetricsLog(tmp_path, enabled=True).truncate_after(0)
    assert path.read_text() == ""


def test_truncate_is_a_no_op_off_the_main_process_or_without_a_log(tmp_path):
    path = logged(tmp_path, [json.dumps(record) for record in RECORDS] + [TORN])
    before = path.read_bytes()
    MetricsLog(tmp_path, enabled=False).truncate_after(1)
    assert path.read_bytes() == before
    empty = tmp_path / "fresh"
    empty.mkdir()
    MetricsLog(empty, enabled=True).truncate_after(1)
    assert list(empty.iterdir()) == []


# ---------------------------------------------------------------- contrast terms


TRAIN_IMAGES = 3


def term_of(accelerator: Accelerator, recipe: Recipe, model: SegmentationModel) -> ContrastTerm | None:
    """The contrast term `recipe` asks for, built for `model` as the engine builds it."""
    dim, stride = contrast_feature_geometry(recipe.loss.contrast, model)
    return build_term(TermInputs(make_context(accelerator, recipe), NUM_CLASSES, TRAIN_IMAGES, dim, stride, seeded(0)))


def term_recipe(kind: str, feature: str, bank_size: int | None = 4) -> Recipe:
    """A 32-px recipe whose contrast is `kind` on the `feature` map, with small banks."""
    return Recipe.model_validate({
        "data": {"crop_size": 32, "batch_size": 2},
        "model": {"backbone": "resnet18", "head_channels": 8, "aux_channels": 8, "output_stride": 8},
        "loss": {"contrast": {"kind": kind, "feature": feature, "bank_size": bank_size,
                              "pixel": {"memory_size": 6, "pixel_update_freq": 3, "max_samples": 32, "max_views": 8}}},
    })


@pytest.fixture(scope="module")
def steps():
    """The tiny model, and two training steps' forward outputs (graphs kept) with their batches."""
    torch.manual_seed(0)
    model = build_model(term_recipe("region", "head").model, NUM_CLASSES)
    labels = torch.zeros(2, 32, 32, dtype=torch.long)  # every class, in blocks, and an ignored band
    labels[:, :, 12:] = 1
    labels[:, 16:, 20:] = 2
    labels[1, :8] = IGNORE_INDEX
    batches = [{"label": labels, "index": torch.tensor([0, 2])},
               {"label": labels.flip(-1), "index": torch.tensor([1, 2])}]
    outputs = [model(torch.randn(2, 3, 32, 32, generator=seeded(seed))) for seed in range(2)]
    return model, list(zip(outputs, batches))


def bank_shapes(bank: RegionBank | PixelBank | AllPixelBank) -> list[tuple[int, ...]]:
    """The key storage shapes of any bank kind."""
    if isinstance(bank, PixelBank):
        return [tuple(bank.pixels.keys.shape), tuple(bank.segments.keys.shape)]
    return [tuple(bank.keys.shape)]


@pytest.mark.parametrize("feature", ["backbone", "head"])
@pytest.mark.parametrize(("kind", "bank_size"), [("region", 4), ("region", 0), ("pixel", None), ("all_pixel", None)])
def test_every_term_trains_on_the_feature_it_names(accelerator, steps, kind, bank_size, feature):
    model, step_outputs = steps
    term = term_of(accelerator, term_recipe(kind, feature, bank_size), model)
    used = [output.backbone_features if feature == "backbone" else output.features for output, _ in step_outputs]
    dim, side = used[0].shape[1], used[0].shape[-1]
    assert dim == (512 if feature == "backbone" else 8)  # resnet18's last stage, or head_channels
    assert side == math.ceil(32 / 8)  # the backbone's stride at output stride 8
    expected = {
        ("region", 4): [(NUM_CLASSES, 4, dim)],
        ("region", 0): None,
        ("pixel", None): [(NUM_CLASSES, 6, dim)] * 2,
        ("all_pixel", None): [(TRAIN_IMAGES, side * side, dim)],
    }[kind, bank_size]
    assert (term.bank is None) == (expected is None)
    if term.bank is not None:
        assert bank_shapes(term.bank) == expected
    for (output, batch), features in zip(step_outputs, used):  # the second step meets the bank the first filled
        loss = term(output, batch)
        assert loss.dim() == 0 and torch.isfinite(loss)
        if term.bank is not None:
            assert term.bank.fill() > 0
    # The loss trains the feature map it names.
    (grad,) = torch.autograd.grad(loss, features, retain_graph=True)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("kind", [kind for kind in KINDS if not results.contrast_free(kind)])
def test_accumulated_micro_batches_read_one_bank_and_push_once(accelerator, steps, kind):
    """With push=False (a micro-batch before the optimizer step) the bank is left as it was, so the
    next micro-batch reads the same bank; the step's push then writes both, in order, as unheld pushes do."""
    model, step_outputs = steps
    recipe = term_recipe(kind, "head")
    held, direct = term_of(accelerator, recipe, model), term_of(accelerator, recipe, model)
    assert held.bank is not None  # every kind but the contrast-free one keeps a bank by default
    (first, first_batch), (second, second_batch) = step_outputs
    empty = {name: tensor.clone() for name, tensor in held.bank.state_dict().items()}
    held(first, first_batch, push=False)
    assert all(torch.equal(empty[name], tensor) for name, tensor in held.bank.state_dict().items())
    held(second, second_batch, push=True)
    direct(first, first_batch)
    direct(second, second_batch)
    assert all(torch.equal(direct.bank.state_dict()[name], tensor) for name, tensor in held.bank.state_dict().items())
    assert held.bank.fill() > 0


# ---------------------------------------------------------------- bank digests


def whole_copy_digest(state: dict[str, torch.Tensor]) -> str:
    """The digest's definition before streaming: every tensor copied to the host whole."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def pushed_state() -> dict[str, torch.Tensor]:
    """A float32 and a bf16 region bank after a few pushes, plus a non-contiguous tensor."""
    generator = seeded(4)
    state = {}
    for prefix, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        bank = RegionBank(NUM_CLASSES, 4, 5, dtype)
        for _ in range(3):
            bank.push(torch.randn(6, 5, generator=generator), torch.randint(0, NUM_CLASSES, (6,), generator=generator))
        state |= {f"{prefix}.{name}": tensor for name, tensor in bank.state_dict().items()}
    state["transposed"] = torch.randn(5, 3, generator=generator).t()
    return state


def test_streamed_digest_equals_the_whole_copy_digest(monkeypatch):
    state = pushed_state()
    assert state["bf16.slots"].abs().sum() > 0 and not state["transposed"].is_contiguous()
    expected = whole_copy_digest(state)
    assert state_digest(state) == expected
    monkeypatch.setattr(summary, "DIGEST_CHUNK_BYTES", 7)  # chunks that split elements
    assert state_digest(state) == expected


def test_digest_changes_with_one_element():
    state = pushed_state()
    before = state_digest(state)
    changed = {**state, "bf16.slots": state["bf16.slots"].clone()}
    changed["bf16.slots"][2, 1] += 1
    assert state_digest(changed) != before
    assert state_digest(state) == before  # the original is untouched


# ---------------------------------------------------------------- validation region centers


class FeatureModel(nn.Module):
    """Head features equal to the image itself (stride 1), and logits that are a linear map of them."""

    def forward(self, images: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.einsum("nc,bchw->bnhw", WEIGHT, images), features=images)


@pytest.mark.parametrize(("mode", "crop"), [("whole", None), ("slide", 8), ("slide", 16)])
def test_validation_centers_come_from_the_evaluations_own_forwards(mode: str, crop: int | None):
    images = torch.randn(2, 3, 16, 16, generator=seeded(7))
    labels = torch.randint(0, NUM_CLASSES, (2, 16, 16), generator=seeded(8))
    labels[0, :2] = IGNORE_INDEX
    cfg = EvalConfig(mode=mode, slide_crop=crop, slide_stride=crop, scales=(0.5, 1.0), flip=True)
    tap = CenterTap(labels, NUM_CLASSES)
    predict(FeatureModel(), images, cfg, tap, align_corners=False)
    centers, valid = tap.centers()
    # Non-overlapping windows tile the image: the centers are the plain ground-truth means.
    for image in range(2):
        for label in range(NUM_CLASSES):
            pixels = images[image].permute(1, 2, 0)[labels[image] == label]  # [H,W,C] -> [P,C]
            assert bool(valid[image, label]) == (len(pixels) > 0)
            torch.testing.assert_close(centers[image, label], pixels.mean(0))


class SizeRecordingModel(FeatureModel):
    """FeatureModel recording the size of every image batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[int, int]] = []

    def forward(self, images: torch.Tensor) -> SimpleNamespace:
        self.sizes.append(tuple(images.shape[-2:]))
        return super().forward(images)


def test_evaluation_fits_images_into_the_base_scale_before_its_ratios():
    """mmsegmentation's test pipeline: resize to the base scale (aspect kept), then the ratios; score natively."""
    images = torch.randn(1, 3, 10, 20, generator=seeded(4))  # long side 20, short 10
    labels = torch.randint(0, NUM_CLASSES, (1, 10, 20), generator=seeded(5))
    model = SizeRecordingModel()
    cfg = EvalConfig(scales=(0.5, 1.0), base_size=(60, 15))  # min(60 / 20, 15 / 10) = 1.5
    tap = center_tap(labels, cfg, NUM_CLASSES)
    probs = predict(model, images, cfg, tap, align_corners=False)
    assert model.sizes == [(8, 15), (15, 30)]  # 1.5 x 0.5 and 1.5 x 1.0 of (10, 20), rounded
    views = [F.interpolate(images, size=size, mode="bilinear", align_corners=False) for size in model.sizes]
    expected = torch.stack([F.interpolate(model(view).logits.softmax(1), size=(10, 20), mode="bilinear",
                                          align_corners=False) for view in views]).mean(0)  # [2,B,N,H,W] -> [B,N,H,W]
    assert probs.shape == (1, NUM_CLASSES, 10, 20)
    torch.testing.assert_close(probs, expected)
    # The tap reads the base view's features against the labels resized to that view.
    hand = CenterTap(resize_labels(labels, (15, 30)), NUM_CLASSES)
    hand(SimpleNamespace(features=views[1]), 0, 0, (15, 30))
    for actual, wanted in zip(tap.centers(), hand.centers()):
        torch.testing.assert_close(actual, wanted)
    # Without a base scale the native size is what gets scaled.
    model.sizes.clear()
    predict(model, images, EvalConfig(scales=(0.5, 1.0)), align_corners=False)
    assert model.sizes == [(5, 10), (10, 20)]


# ---------------------------------------------------------------- align_corners


class StrideEightModel(nn.Module):
    """Logits at stride 8 (every 8th pixel's linear map)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # something for Accelerator.prepare to own

    def forward(self, images: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.einsum("nc,bchw->bnhw", WEIGHT, images[..., ::8, ::8]) + self.anchor)


def aligned_recipe(align_corners: bool) -> Recipe:
    """term_recipe's region recipe with model.align_corners set."""
    recipe = term_recipe("region", "head")
    return recipe.model_copy(update={"model": recipe.model.model_copy(update={"align_corners": align_corners})})


@pytest.mark.parametrize("align_corners", [True, False])
def test_evaluation_upsamples_as_the_recipe_says(accelerator, align_corners):
    # 8 * 4 + 1 pixels: 5 cells; with align_corners, cell k's prediction sits on pixel 8k.
    images = torch.randn(1, 3, 33, 33, generator=seeded(4))
    model = StrideEightModel()
    cell_probs = model(images).logits.softmax(1)
    probs = predict(model, images, EvalConfig(), align_corners=align_corners)
    assert torch.allclose(probs[..., ::8, ::8], cell_probs, atol=1e-6) == align_corners
    # evaluate() takes the option from the run's context, and passes it to every prediction.
    seen = []
    def spy(*args, **kwargs):
        seen.append(kwargs["align_corners"])  # predict(model, images, cfg, tap, align_corners=...)
        return predict(*args, **kwargs)
    loader = torch.utils.data.DataLoader([{"image": images[0], "label": torch.zeros(33, 33, dtype=torch.long)}])
    ctx = make_context(accelerator, aligned_recipe(align_corners))
    with patch("harness.engine.context.normalize", lambda image, dtype, statistics: image), \
         patch("harness.engine.evaluate.predict", spy):
        evaluate(ctx, accelerator.prepare(model), accelerator.prepare(loader), EvalConfig(), NUM_CLASSES)
    assert seen == [align_corners]


@pytest.mark.parametrize("align_corners", [True, False])
def test_recipe_option_reaches_the_context_and_the_contrast_terms(accelerator, align_corners):
    recipe = aligned_recipe(align_corners)
    assert make_context(accelerator, recipe).align_corners == align_corners
    term = term_of(accelerator, recipe, build_model(recipe.model, NUM_CLASSES))
    assert term.inputs.ctx.align_corners == align_corners


# ---------------------------------------------------------------- outputs the step uses


@pytest.fixture
def bf16_accelerator():
    """A CPU Accelerator under bf16 autocast; the singleton state is reset around it."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield Accelerator(cpu=True, mixed_precision="bf16")
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize(("kind", "feature", "kept"), [("none", "head", False), ("region", "head", False),
                                                       ("region", "backbone", True)])
def test_the_model_returns_backbone_features_only_to_a_contrast_that_reads_them(bf16_accelerator, kind, feature,
                                                                                kept):
    """Accelerate's mixed precision converts every output to fp32: the last backbone stage is returned (and copied)
    only when the contrast reads it."""
    accelerator = bf16_accelerator
    recipe = term_recipe(kind, feature)
    trainer = trainer_for(accelerator, recipe, NUM_CLASSES, TRAIN_IMAGES)
    output = trainer.model(torch.randn(2, 3, 32, 32, generator=seeded(3)))
    assert (output.backbone_features is not None) == kept
    assert output.features.dtype == torch.float32  # what the contrast reads stays fp32
    batch = {"image": torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8), "index": torch.tensor([0, 1]),
             "label": torch.randint(0, NUM_CLASSES, (2, 32, 32), generator=seeded(4))}
    assert torch.isfinite(trainer.step(batch, iteration=0)["loss"])


@pytest.mark.parametrize("kind", KINDS)
def test_every_kinds_loss_is_fp32_under_bf16(bf16_accelerator, kind):
    """Through the bf16 Accelerator's step, and with the bf16 outputs of a model DeepSpeed casts, inside autocast."""
    trainer = trainer_for(bf16_accelerator, term_recipe(kind, "head"), NUM_CLASSES, TRAIN_IMAGES)
    batch = {"image": torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8), "index": torch.tensor([0, 1]),
             "label": torch.randint(0, NUM_CLASSES, (2, 32, 32), generator=seeded(5))}
    losses = trainer.step(batch, iteration=0)
    if trainer.contrast is None:
        assert "loss_contrast" not in losses
        return
    assert losses["loss_contrast"].dtype == torch.float32
    output = trainer.model(torch.randn(2, 3, 32, 32, generator=seeded(6)))
    cast = SegOutput(*(None if part is None else part.to(torch.bfloat16) for part in output))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = trainer.contrast(cast, batch)  # against the bank the step filled
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
