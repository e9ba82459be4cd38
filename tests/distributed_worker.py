"""Started by tests/test_distributed.py under torchrun: each rank records what the engine did.

Writes <out>/rank<i>.pt with the rank's process index, the training indices it was served,
the region bank after several pushes of per-rank centers, the inputs it pushed, the
in-batch loss it computed, the gradient an in-batch step left on a DDP-wrapped layer fed its half
of a global batch, and its confusion-matrix evaluation of a tiny model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from harness import contrast, engine
from harness.data import build_datasets
from harness.engine import RunContext, make_context
from harness.engine.evaluate import evaluate
from harness.engine.setup import make_loaders
from harness.engine.terms import TermInputs
from harness.engine.terms.in_batch import InBatchTerm
from harness.engine.terms.region import RegionTerm
from harness.models import SegOutput, build_model
from harness.ops import IMAGENET
from harness.recipe import Recipe

NUM_CLASSES, DIM, SIDE, STEPS = 11, 8, 4, 4


def served_indices(ctx: RunContext) -> torch.Tensor:
    """Every training index this rank receives in one epoch."""
    train, val, _ = build_datasets(ctx.recipe.data, ctx.recipe.run.seed, ctx.pad_colour)
    train_loader, _ = make_loaders(train, val, ctx)
    train_loader = ctx.accelerator.prepare(train_loader)
    return torch.cat([batch["index"] for batch in train_loader])


def term_inputs(accelerator: Accelerator, bank_size: int) -> TermInputs:
    """What a weighted region term with `bank_size` slots on DIM-channel features is built from."""
    recipe = Recipe.model_validate({"loss": {"contrast": {"kind": "region", "variant": "weighted", "bank_size": bank_size}}})
    return TermInputs(make_context(accelerator, recipe), NUM_CLASSES, 12, DIM, 1, torch.Generator())


def push_random_centers(accelerator: Accelerator) -> tuple[contrast.RegionBank, list, list]:
    """STEPS region-contrast steps on random per-rank features; returns the bank, inputs and losses."""
    bank = contrast.RegionBank(NUM_CLASSES, 6, DIM)
    region = RegionTerm(term_inputs(accelerator, 6), bank)
    in_batch = InBatchTerm(term_inputs(accelerator, 0))
    inputs, losses = [], []
    for step in range(STEPS):
        generator = torch.Generator().manual_seed(1000 * accelerator.process_index + step)
        features = torch.randn(2, DIM, SIDE, SIDE, generator=generator)
        logits = torch.randn(2, NUM_CLASSES, SIDE, SIDE, generator=generator)
        labels = torch.randint(0, NUM_CLASSES, (2, SIDE, SIDE), generator=generator)
        output = SegOutput(logits, None, features, features)
        region(output, {"label": labels})
        losses.append(in_batch(output, {"label": labels}).item())
        inputs.append((features, logits, labels))
    return bank, inputs, losses


def in_batch_gradients(accelerator: Accelerator) -> torch.Tensor:
    """The DDP-averaged weight gradient of a 1x1 conv after one in-batch step on this rank's half of a
    global batch of 4 (the conv's init and the batch are the same on every rank)."""
    torch.manual_seed(0)
    layer = accelerator.prepare(torch.nn.Conv2d(DIM, DIM, 1))
    inputs, logits, labels = global_in_batch_inputs()
    rows = slice(2 * accelerator.process_index, 2 * accelerator.process_index + 2)
    features = layer(inputs[rows])
    in_batch = InBatchTerm(term_inputs(accelerator, 0))
    accelerator.backward(in_batch(SegOutput(logits[rows], None, features, features), {"label": labels[rows]}))
    return accelerator.unwrap_model(layer).weight.grad


def global_in_batch_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed global batch of 4: conv inputs [4,C,s,s], logits [4,classes,s,s], labels [4,s,s]."""
    generator = torch.Generator().manual_seed(7)
    inputs = torch.randn(4, DIM, SIDE, SIDE, generator=generator)
    logits = torch.randn(4, NUM_CLASSES, SIDE, SIDE, generator=generator)
    labels = torch.randint(0, 4, (4, SIDE, SIDE), generator=generator)  # few classes: many positives
    return inputs, logits, labels


def evaluate_tiny_model(ctx: RunContext) -> tuple[float, dict]:
    """mIoU of an untrained model (same seed on every rank) over a val set that does not split evenly."""
    recipe = ctx.recipe
    _, val, _ = build_datasets(recipe.data, recipe.run.seed, IMAGENET.pad_colour)
    torch.manual_seed(0)
    model = build_model(recipe.model, NUM_CLASSES).eval()
    loader = ctx.accelerator.prepare(torch.utils.data.DataLoader(val, batch_size=2))
    result = evaluate(ctx, model, loader, recipe.eval, NUM_CLASSES)
    return result.miou, model.state_dict()


def main(out_dir: Path) -> None:
    recipe = Recipe.model_validate({
        "data": {"root": str(out_dir / "cache"), "crop_size": 32, "batch_size": 2,
                 "digit_scenes": {"train_images": 12, "val_images": 5, "image_size": 32, "digits_per_image": [1, 2]}},
        "model": {"backbone": "resnet18", "head_channels": 8, "aux_channels": 8},
    })
    accelerator = engine.make_accelerator(recipe)
    ctx = make_context(accelerator, recipe)
    indices = served_indices(ctx)
    bank, inputs, losses = push_random_centers(accelerator)
    gradient = in_batch_gradients(accelerator)
    miou, weights = evaluate_tiny_model(ctx)
    torch.save({
        "process_index": accelerator.process_index, "world_size": accelerator.num_processes,
        "indices": indices, "bank": bank.state_dict(), "inputs": inputs, "in_batch_losses": losses,
        "in_batch_gradient": gradient, "miou": miou, "weights": weights,
    }, out_dir / f"rank{accelerator.process_index}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
