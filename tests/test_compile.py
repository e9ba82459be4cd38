"""run.compile: "auto" resolved once per launch; a compiled model trains to the eager model's losses; the region
term's masked (GPU) path traces as one graph."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch._dynamo
import torch._inductor.config
from accelerate.utils import DistributedType

from benchmarks.common import fill_bank
from harness.engine import make_context
from harness.engine.context import _compiles
from harness.engine.terms.region import RegionTerm
from harness.recipe import Recipe
from tests.conftest import seeded, trainer_for

CLASSES = 4


def compile_recipe(compile_model: bool | str, contrast: dict | None = None) -> Recipe:
    """A 32-px resnet10t recipe with run.compile set and a small region bank."""
    return Recipe.model_validate({
        "run": {"compile": compile_model},
        "data": {"crop_size": 32, "batch_size": 2},
        "model": {"backbone": "resnet10t", "head_channels": 16, "aux_channels": 16},
        "loss": {"contrast": contrast or {"kind": "region", "bank_size": 3}},
        "optim": {"lr": 0.01},
    })


def batches(count: int) -> list[dict[str, torch.Tensor]]:
    """`count` seeded batches of uint8 images and labels of every class, some ignored."""
    made = []
    for seed in range(count):
        labels = torch.randint(0, CLASSES, (2, 32, 32), generator=seeded(seed))
        labels[:, :3] = 255
        images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=seeded(100 + seed))
        made.append({"image": images, "label": labels, "index": torch.tensor([0, 1])})
    return made


@pytest.mark.parametrize(("value", "device", "launch", "compiles"), [
    ("auto", "cuda", DistributedType.NO, True),
    ("auto", "cuda", DistributedType.MULTI_GPU, True),
    ("auto", "cuda", DistributedType.DEEPSPEED, False),  # DeepSpeed's engine wraps the model itself
    ("auto", "cpu", DistributedType.NO, False),
    (True, "cpu", DistributedType.NO, True),
    (False, "cuda", DistributedType.NO, False),
])
def test_auto_compiles_on_cuda_only(value: bool | str, device: str, launch: DistributedType, compiles: bool) -> None:
    launched = SimpleNamespace(device=torch.device(device), distributed_type=launch)
    assert _compiles(launched, compile_recipe(value)) is compiles


def test_the_context_holds_the_resolved_value(accelerator) -> None:
    assert Recipe().run.compile == "auto"
    assert make_context(accelerator, compile_recipe("auto")).compile is False  # a CPU accelerator
    assert make_context(accelerator, compile_recipe(True)).compile is True


@pytest.mark.slow
def test_a_compiled_model_trains_to_the_eager_losses(accelerator) -> None:
    losses = {}
    for compile_model in (False, True):
        torch._dynamo.reset()
        trainer = trainer_for(accelerator, compile_recipe(compile_model), CLASSES, train_images=8)
        assert isinstance(trainer.model, torch._dynamo.eval_frame.OptimizedModule) is compile_model
        torch.manual_seed(1)  # the heads' dropout draws the same masks in both
        # fallback_random: inductor's own RNG would draw other dropout masks than eager's.
        with torch._inductor.config.patch(fallback_random=True):
            steps = [trainer.step(batch, iteration) for iteration, batch in enumerate(batches(4))]
        losses[compile_model] = {name: torch.stack([step[name] for step in steps]) for name in steps[0]}
    assert set(losses[True]) == {"loss", "loss_ce", "loss_aux", "loss_contrast"}
    for name, eager in losses[False].items():
        # Inductor fuses and reorders fp32 sums: a few ulps per op, which four SGD steps carried to at most
        # 1e-6 relative (the contrast term; 1 ulp for the CEs) when measured; 1e-5 leaves tenfold room.
        torch.testing.assert_close(losses[True][name], eager, rtol=1e-5, atol=1e-6)
    assert not torch.equal(losses[False]["loss"][0], losses[False]["loss"][-1])  # the steps did train


def test_the_region_terms_masked_path_is_one_graph_over_steps(accelerator) -> None:
    """With the padding masked (a GPU's path), centers, Eq. 4, the gathers and the push trace as one graph,
    and new data of the same shapes needs no recompile: nothing breaks the graph step after step."""
    trainer = trainer_for(accelerator, compile_recipe(False), CLASSES, train_images=8)
    term = trainer.contrast
    term.drop_padding = False  # what a CUDA device chooses; a CPU drops it with a data-dependent shape
    torch._dynamo.reset()
    traced = torch.compile(term, backend="eager", fullgraph=True)  # fullgraph: a break raises
    with torch._dynamo.config.patch(error_on_recompile=True):
        for iteration, batch in enumerate(batches(3)):
            output = trainer.model(trainer.ctx.model_input(batch["image"]))
            loss = traced(output, batch)
            loss.backward()
            assert torch.isfinite(loss), iteration
    assert float(term.bank.fill()) > 0


@pytest.mark.slow
def test_a_compiling_gpu_run_compiles_the_region_loss_to_eager_values(accelerator) -> None:
    """Where the padding stays masked (a CUDA context) and run.compile is on, Eq. 4 against the bank runs compiled,
    with eager's loss; on this CPU the context is only told it is a GPU's."""
    recipe = compile_recipe(False)
    eager = trainer_for(accelerator, recipe, CLASSES, train_images=8).contrast
    eager.drop_padding = False
    gpu_like = dataclasses.replace(eager.inputs.ctx, device=torch.device("cuda"), compile=True)
    compiled = RegionTerm(dataclasses.replace(eager.inputs, ctx=gpu_like), eager.bank)
    assert not compiled.drop_padding and compiled.loss is not eager.loss
    torch._dynamo.reset()
    fill_bank(eager.bank, CLASSES, torch.Generator().manual_seed(1))
    trainer = trainer_for(accelerator, recipe, CLASSES, train_images=8)
    for batch in batches(2):
        output = trainer.model(trainer.ctx.model_input(batch["image"]))
        centers, valid, _, _ = eager.centers(output, batch["label"].long())
        torch.testing.assert_close(compiled.loss(centers, valid), eager.loss(centers, valid), rtol=1e-5, atol=1e-6)
