"""What one run derives once from its recipe and its launch, handed to everything that needs it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from harness.models import image_statistics
from harness.ops import ImageStatistics, normalize
from harness.recipe import Recipe, fingerprint


@dataclass(frozen=True)
class RunContext:
    """One run's accelerator and recipe, and the values derived from them; nothing looks these up again."""

    accelerator: Accelerator
    recipe: Recipe
    device: torch.device
    world_size: int
    input_dtype: torch.dtype  # what images must be: DeepSpeed bf16/fp16 casts the model itself, not autocast
    statistics: ImageStatistics  # what the backbone's pretraining normalised images by
    align_corners: bool  # how logits upsample onto pixels (model.align_corners): losses, contrast, evaluation
    compile: bool  # torch.compile the model: run.compile, "auto" resolved for this launch
    fingerprint: str  # of the recipe (harness.recipe.fingerprint, its one home): in every checkpoint's manifest

    @property
    def pad_colour(self) -> tuple[int, int, int]:
        """The colour images are padded with: the backbone's mean, which normalises to 0."""
        return self.statistics.pad_colour

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images [B,3,H,W] on the device, normalised into what the model takes."""
        return normalize(images, self.input_dtype, self.statistics)


def _input_dtype(accelerator: Accelerator) -> torch.dtype:
    """The dtype images must have: DeepSpeed casts the model itself to bf16/fp16 instead of autocasting."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)


def _compiles(accelerator: Accelerator, recipe: Recipe) -> bool:
    """run.compile, with "auto" on for a CUDA device and off on a CPU (a minute of compiling for little gain there).

    DeepSpeed's engine wraps the model itself (ZeRO-3 gathers parameters in hooks that break graphs),
    so "auto" leaves it eager; `true` still compiles it.
    """
    if recipe.run.compile != "auto":
        return recipe.run.compile
    return accelerator.device.type == "cuda" and accelerator.distributed_type != DistributedType.DEEPSPEED


def make_context(accelerator: Accelerator, recipe: Recipe) -> RunContext:
    """The run's context: everything derived from `recipe` and the launch, computed once per run, here."""
    return RunContext(
        accelerator=accelerator, recipe=recipe, device=accelerator.device, world_size=accelerator.num_processes,
        input_dtype=_input_dtype(accelerator), statistics=image_statistics(recipe.model.backbone),
        align_corners=recipe.model.align_corners, fingerprint=fingerprint(recipe),
        compile=_compiles(accelerator, recipe),
    )
