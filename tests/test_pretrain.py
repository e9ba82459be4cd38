"""The digits stand-in for ImageNet weights: pretraining leaves the run's own random draws alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from harness import pretrain
from harness.engine import set_up
from harness.recipe import validate

TINY_PATCHES = pretrain.PATCHES.model_copy(update={"train_images": 64})


def head_weights(accelerator: Accelerator, seed: int) -> dict[str, torch.Tensor]:
    """The freshly initialised head of a digits-pretrained run of `seed` (its backbone comes from the cache)."""
    recipe = validate({
        "run": {"seed": seed},
        "data": {"batch_size": 4, "num_workers": 0, "crop_size": 32,
                 "digit_scenes": {"train_images": 8, "val_images": 4, "test_images": 2, "image_size": 32}},
        "model": {"backbone": "resnet10t", "pretrained": True, "pretrained_source": "digits", "head_channels": 16,
                  "aux_channels": 16},
        "optim": {"iterations": 2},
    })
    model = accelerator.unwrap_model(set_up(accelerator, recipe).trainer.model)
    return {name: value.detach().clone() for name, value in model.head.state_dict().items()}


def test_cold_and_warm_caches_give_the_same_initial_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the fix, pretraining (cold cache only) reseeded the global RNG between set_seed and the head's init."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pretrain, "PATCHES", TINY_PATCHES)
    monkeypatch.setattr(pretrain, "EPOCHS", 1)
    monkeypatch.setattr(pretrain, "BATCH", 16)  # a few real optimizer steps
    accelerator = Accelerator(cpu=True)
    cold = head_weights(accelerator, seed=3)
    assert list((tmp_path / pretrain.DEFAULT_PRETRAIN_ROOT).glob("*.safetensors")), "the first run pretrained"
    warm = head_weights(accelerator, seed=3)
    assert cold.keys() == warm.keys()
    assert all(torch.equal(cold[name], warm[name]) for name in cold)
    other_seed = head_weights(accelerator, seed=4)
    assert not all(torch.equal(cold[name], other_seed[name]) for name in cold)
