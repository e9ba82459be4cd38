"""A local stand-in for ImageNet weights: the backbone pretrained on classifying train-split digits only.

The paper fine-tunes ImageNet-pretrained backbones; those weights cannot be downloaded
here. The stand-in gives a digit-scenes run what ImageNet gives a Cityscapes run: a
backbone that already recognises the things it will segment. It is a timm classifier
trained on single-digit patches drawn by the digit-scenes generator from the *train*
pool of the scenes' own data seed, so it never sees a digit sample of the val scenes.
Built once per (backbone, data seed) and cached like the scenes themselves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import safetensors.torch
import timm
import torch
import torch.nn.functional as F

from harness.data.digit_scenes import build_digit_scenes, digit_scenes_key
from harness.models import image_statistics
from harness.ops import normalize
from harness.progress import bar
from harness.recipe import DigitScenesConfig
from harness.results import publish

# Bump whenever the recipe below changes, so stale weights are never reused.
PRETRAIN_VERSION = 1
DEFAULT_PRETRAIN_ROOT = Path(".cache/digit_backbones")
PATCHES = DigitScenesConfig(
    train_images=12000, val_images=1, test_images=1, image_size=32, digits_per_image=(1, 1), digit_scale=(0.5, 0.875)
)
EPOCHS, BATCH, LR, WEIGHT_DECAY = 3, 128, 2e-3, 1e-4


def digit_backbone_file(backbone: str, data_seed: int, root: Path = DEFAULT_PRETRAIN_ROOT) -> Path:
    """The cached stand-in weights of `backbone` for scenes of `data_seed`, pretrained on first use."""
    path = Path(root) / f"v{PRETRAIN_VERSION}-{backbone}-{digit_scenes_key(PATCHES, data_seed)}.safetensors"
    if not path.is_file():
        state = pretrain_on_digits(backbone, data_seed)
        publish(path, lambda scratch: safetensors.torch.save_file(state, str(scratch)))
    return path


def digit_patches(data_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One-digit patches uint8 [P,3,S,S] from the train pool of `data_seed`, and their digits [P]."""
    train = build_digit_scenes(PATCHES, data_seed)["train"].with_format("numpy")
    images = np.stack(list(train["image"]))  # [P,S,S,3]
    # Each patch holds one digit: its label map is 0 (background) and the digit's class 1..10.
    digits = np.stack(list(train["label"])).reshape(len(images), -1).max(axis=1) - 1
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(digits.astype(np.int64))


def pretrain_on_digits(backbone: str, data_seed: int) -> dict[str, torch.Tensor]:
    """A timm `backbone` classifier trained on digit_patches (AdamW, cosine schedule); its state dict.

    Runs on a fork of the global RNG, seeded by `data_seed` and restored afterwards: the run that
    pretrains (a cold cache) then draws its own initialisation exactly as a run with a warm cache does.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(data_seed)
        return _train_classifier(backbone, data_seed)


def _train_classifier(backbone: str, data_seed: int) -> dict[str, torch.Tensor]:
    """The body of pretrain_on_digits, drawing from the (forked) global RNG."""
    images, digits = digit_patches(data_seed)
    model = timm.create_model(backbone, num_classes=10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = EPOCHS * (len(images) // BATCH)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    statistics = image_statistics(backbone)  # as the segmentation model will normalise its images
    model.train()
    print(f"pretraining {backbone} on train-split digits (once; cached)", flush=True)
    progress = bar(total=steps, desc=f"pretraining {backbone}")
    for _ in range(EPOCHS):
        order = torch.randperm(len(images))
        for start in range(0, len(order) - BATCH + 1, BATCH):
            chosen = order[start : start + BATCH]
            loss = F.cross_entropy(model(normalize(images[chosen], torch.float32, statistics)), digits[chosen])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            progress.update(1)
    progress.close()
    return {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
