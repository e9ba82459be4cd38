"""A finished run's model: rebuilt from its recipe and model.safetensors, evaluated again, or exported.

The run's context is built exactly as training built it, so a saved model is normalised,
upsampled and scored as its run scored it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from harness.data import DatasetInfo, build_datasets, build_unlabeled
from harness.engine.context import RunContext, make_context
from harness.engine.evaluate import Evaluation, evaluate, predict
from harness.engine.setup import make_eval_loader
from harness.models import SegmentationModel, batchnorm_in_float32, build_model
from harness.progress import bar
from harness.recipe import Recipe
from harness.results import write_png


def load_model_file(recipe: Recipe, num_classes: int, path: Path) -> SegmentationModel:
    """The model a run saved to `path`, rebuilt from its resolved recipe (no pretrained weights are fetched)."""
    state = load_file(str(path))
    with_aux = recipe.model.aux_head and any(name.startswith("aux_head.") for name in state)
    cfg = recipe.model.model_copy(update={"pretrained": False, "weights": None, "aux_head": with_aux})
    model = build_model(cfg, num_classes)
    model.load_state_dict(state)
    return model


def prepare_saved_model(ctx: RunContext, num_classes: int, path: Path) -> torch.nn.Module:
    """A run's saved model (model.safetensors), rebuilt from its recipe and prepared for inference."""
    model = load_model_file(ctx.recipe, num_classes, path)
    if ctx.input_dtype != torch.float32:
        batchnorm_in_float32(model)
    return ctx.accelerator.prepare(model.to(ctx.device))


def evaluate_saved(accelerator: Accelerator, recipe: Recipe, path: Path) -> tuple[Evaluation, DatasetInfo]:
    """The mIoU of a run's saved model on eval.split under recipe.eval, computed exactly as the run computed its own."""
    ctx = make_context(accelerator, recipe)
    with accelerator.main_process_first():  # the main process builds the dataset caches; the others read them
        _, evaluated, info = build_datasets(recipe.data, recipe.run.seed, ctx.pad_colour, recipe.eval.split)
    model = prepare_saved_model(ctx, info.num_classes, path)
    loader = accelerator.prepare(make_eval_loader(evaluated, ctx))
    return evaluate(ctx, model, loader, recipe.eval, info.num_classes), info


@torch.no_grad()
def export_saved(accelerator: Accelerator, recipe: Recipe, path: Path, split: str | None, out_dir: Path) -> int:
    """Write a saved model's predictions on a split (no labels needed) in its test server's format; how many.

    Each rank writes the PNGs of its own images, atomically: the repeats that pad an uneven split
    only write a file again with the same content.
    """
    ctx = make_context(accelerator, recipe)
    with accelerator.main_process_first():
        dataset, info, submission = build_unlabeled(recipe.data, split)
    model = prepare_saved_model(ctx, info.num_classes, path)
    model.eval()
    images = dataset.table["image"]
    for batch in bar(accelerator.prepare(make_eval_loader(dataset, ctx)), desc="export",
                     enabled=accelerator.is_main_process):
        preds = predict(model, ctx.model_input(batch["image"]), recipe.eval, align_corners=ctx.align_corners).argmax(1)
        for index, pred in zip(batch["index"].tolist(), preds.cpu().numpy().astype(np.uint8)):
            write_png(out_dir / submission.file_name(Path(images[index])), submission.table[pred])
    accelerator.wait_for_everyone()
    return len(dataset)
