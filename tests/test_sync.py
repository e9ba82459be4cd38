"""A training step that does not log never makes the host wait for the device.

Each kind of step runs under a TorchDispatchMode that records every op forcing a
device-to-host sync on a GPU: reading a value (`_local_scalar_dense`: .item(), bool(),
.tolist()), and ops whose output size depends on the data (nonzero, masked_select,
unique, bincount, repeat_interleave by a tensor, indexing by a bool mask). On this CPU
nothing waits, but the same ops would stall a GPU's stream in every step.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from accelerate import Accelerator
from torch.utils._python_dispatch import TorchDispatchMode

from harness.recipe import Recipe
from tests.conftest import seeded, trainer_for
from tests.test_contrast_kinds import KINDS

aten = torch.ops.aten
SYNCING = {
    aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default, aten._unique2.default,
    aten.unique_dim.default, aten.unique_consecutive.default, aten.bincount.default,
    aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor,
}
MASKED = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
NUM_CLASSES, TRAIN_IMAGES, SIDE = 4, 4, 32
WARM_STEPS = 2  # a region bank of TRAIN_IMAGES slots is full after 2 pushes of 2 images holding every class


class SyncRecorder(TorchDispatchMode):
    """Counts the ops that would make the host wait for a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in SYNCING or (func in MASKED and any(_bool_index(index) for index in args[1])):
            self.ops[str(func)] += 1
        return func(*args, **kwargs)


def _bool_index(index: object) -> bool:
    """Whether an index is a bool mask (its selection's size is only known after a count)."""
    return isinstance(index, torch.Tensor) and index.dtype == torch.bool


def recipe(contrast: dict) -> Recipe:
    """A tiny model and batch; SGD, whose step reads no value back (AdamW counts steps on the host on a CPU)."""
    return Recipe.model_validate({
        "data": {"crop_size": SIDE, "batch_size": 2},
        "model": {"backbone": "resnet18", "head_channels": 8, "aux_channels": 8},
        "loss": {"contrast": contrast},
        "optim": {"name": "sgd", "lr": 0.01},
    })


def syncs_of_a_step(accelerator: Accelerator, contrast: dict, drop_padding: bool = False) -> Counter[str]:
    """The syncing ops of one training step, after WARM_STEPS unrecorded ones that fill lazy state and the bank.

    A region term drops its padding queries only on a CPU, where nothing waits; drop_padding False
    runs the path a GPU runs.
    """
    trainer = trainer_for(accelerator, recipe(contrast), NUM_CLASSES, TRAIN_IMAGES)
    if hasattr(trainer.contrast, "drop_padding"):
        trainer.contrast.drop_padding = drop_padding
    generator = seeded(2)
    batch = {
        "image": torch.randint(0, 256, (2, 3, SIDE, SIDE), generator=generator, dtype=torch.uint8),
        "label": torch.randint(0, NUM_CLASSES, (2, SIDE, SIDE), generator=generator),
        "index": torch.tensor([0, 1]),
    }
    for iteration in range(WARM_STEPS):
        trainer.step(batch, iteration=iteration)
    with SyncRecorder() as recorder:
        trainer.step(batch, iteration=WARM_STEPS)
    return recorder.ops


# Every registered kind with its defaults (the entry points' included: tests/test_contrast_kinds.py), and the
# region bank's other layouts and storage, and pixel queues small enough to be full.
SETTINGS = {name: {"kind": name} for name in KINDS} | {
    "in_batch": {"kind": "region", "bank_size": 0},
    "sharded_one_rank": {"kind": "region", "bank_size": 5, "bank_layout": "sharded"},
    "region_bf16_bank": {"kind": "region", "bank_size": 5, "bank_dtype": "bfloat16"},
    "pixel_full_queues": {"kind": "pixel", "pixel": {"memory_size": 5}},
}


@pytest.mark.parametrize("contrast", SETTINGS.values(), ids=SETTINGS.keys())
def test_no_sync_in_a_step(accelerator: Accelerator, contrast: dict) -> None:
    assert syncs_of_a_step(accelerator, contrast) == Counter()


def test_a_cpu_region_step_drops_its_padding_queries_with_one_count(accelerator: Accelerator) -> None:
    ops = syncs_of_a_step(accelerator, {"kind": "region", "bank_size": 5}, drop_padding=True)
    # Queries, labels and valid each selected by the mask, and the queries' gradient put back by it.
    assert ops == Counter({"aten.index.Tensor": 3, "aten.index_put.default": 1})
