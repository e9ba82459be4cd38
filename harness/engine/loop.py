"""The training loop of one variant: iterate, log, evaluate, checkpoint, then write the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from harness import measure
from harness.contrast import Bank
from harness.engine.checkpoint import remove_checkpoints, resume_from, save_checkpoint
from harness.engine.evaluate import evaluate, qualitative_samples
from harness.engine.setup import endless, set_up
from harness.engine.step import NonFiniteWatch
from harness.engine.summary import (
    bank_fields,
    finished_at,
    run_info,
    throughput_and_memory,
)
from harness.engine.terms import region_bank_size
from harness.recipe import EvalConfig, OptimConfig, Variant
from harness.results import (
    SUMMARY_FILE,
    VAL_CENTERS_FILE,
    VAL_SAMPLES_FILE,
    MetricsLog,
    variant_fields,
    write_json,
    write_npz,
)


def poly_lr(cfg: OptimConfig, iteration: int) -> float:
    """The poly schedule: lr * (1 - it / max_it) ** power, a pure function of the iteration."""
    return cfg.lr * (1.0 - iteration / cfg.iterations) ** cfg.poly_power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _due(done: int, interval: int) -> bool:
    """Whether a periodic action (every `interval` iterations; 0 = never) falls at `done`."""
    return interval > 0 and done % interval == 0


class BankFill:
    """The mean fraction of bank slots holding a key over the timed iterations, summed on the device."""

    def __init__(self, bank: Bank | None, device: torch.device) -> None:
        self.bank, self.total, self.count = bank, torch.zeros((), device=device), 0

    def add(self) -> None:
        """Count this iteration's fill (no host sync)."""
        if self.bank is not None:
            self.total += self.bank.fill()
            self.count += 1

    def mean(self) -> float | None:
        """The mean fill, or None without a bank or a timed iteration."""
        return float(self.total) / self.count if self.count else None


def interim_protocol(cfg: EvalConfig) -> EvalConfig:
    """Evaluations during training: the recipe's mode, one scale, no flip (the full protocol runs at the end)."""
    return cfg.model_copy(update={"scales": (1.0,), "flip": False})


def train_variant(accelerator: Accelerator, variant: Variant, out_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train and evaluate one variant; write its metrics log, summary and report inputs."""
    recipe = variant.recipe
    setup = set_up(accelerator, recipe)
    trainer, model = setup.trainer, setup.trainer.model
    start = resume_from(accelerator, out_dir, setup.progress, trainer.bank) if resume else 0
    log = MetricsLog(out_dir, accelerator.is_main_process)
    log.truncate_after(start)
    num_classes = setup.info.num_classes
    # Skip warm-up iterations (allocator, caches, a filling bank), but keep some in very short runs.
    warmup = min(5, (recipe.optim.iterations - start) // 2)
    steps = measure.SpanTimer(accelerator.device, warmup)
    trainer.contrast_timer.warmup = warmup
    fill = BankFill(trainer.bank, accelerator.device)
    watch = NonFiniteWatch(accelerator.device, start)
    batches = endless(setup.train_loader, setup.train_set, start * recipe.optim.grad_accum_steps)
    progress_bar = tqdm(total=recipe.optim.iterations, initial=start, desc=variant.name,
                        disable=not accelerator.is_main_process)
    with measure.PeakMemory(accelerator.device) as memory:
        for iteration in range(start, recipe.optim.iterations):
            steps.start()
            lr = poly_lr(recipe.optim, iteration)
            set_lr(trainer.optimizer, lr)
            for _ in range(recipe.optim.grad_accum_steps):
                losses = trainer.step(next(batches), iteration)
                watch.add(losses["loss"])
            steps.stop()
            if iteration - start >= warmup:
                fill.add()
            setup.progress.iteration = done = iteration + 1
            progress_bar.update(1)
            last = done == recipe.optim.iterations
            if last:
                watch.check(done)  # a NaN in the last iterations still fails the variant
            if done % recipe.run.log_interval == 0 or iteration == start:
                watch.check(done)
                values = dict(zip(losses, torch.stack(list(losses.values())).tolist()))  # one host sync
                trainer.contrast_timer.flush()
                log.write({"kind": "train", "iter": done, **values, "lr": lr, "step_time": steps.flush()[-1]})
                progress_bar.set_postfix(loss=f"{values['loss']:.3f}")
            if not last and _due(done, recipe.eval.interval):
                memory.mark("train")
                interim = evaluate(accelerator, model, setup.val_loader, interim_protocol(recipe.eval), num_classes)
                memory.mark("eval")
                log.write({"kind": "eval", "iter": done, "val_miou": interim.miou})
            if not last and _due(done, recipe.run.checkpoint_interval):
                watch.check(done)  # no checkpoint ever holds a NaN
                save_checkpoint(accelerator, out_dir, trainer.bank)
        progress_bar.close()
        memory.mark("train")
        final = evaluate(accelerator, model, setup.val_loader, recipe.eval, num_classes, collect_centers=True)
        samples = qualitative_samples(accelerator, model, setup.val_set, recipe.eval, setup.info)
        memory.mark("eval")
    log.write({"kind": "eval", "iter": recipe.optim.iterations, "val_miou": final.miou})
    contrast_cfg = recipe.loss.contrast
    bank_size = region_bank_size(contrast_cfg, len(setup.train_set)) if contrast_cfg.kind == "region" else None
    contrast_s = trainer.contrast_timer.median()
    summary = {
        **variant_fields(variant.name, recipe), "status": "ok", "error": None,
        "val_miou": final.miou, "per_class_iou": final.per_class.tolist(), "class_names": list(setup.info.class_names),
        **throughput_and_memory(accelerator, recipe, steps.median(), contrast_s, memory),
        "bank_fill": fill.mean(),
        "params": measure.count_parameters(accelerator.unwrap_model(model)), "flops_per_image": setup.flops_per_image,
        "backbone_weights": setup.weights,
        **bank_fields(accelerator, trainer.bank, bank_size),
        **run_info(accelerator),
        "finished_at": finished_at(),
    }
    if accelerator.is_main_process:
        write_npz(out_dir / VAL_CENTERS_FILE, centers=final.centers, labels=final.center_labels)
        write_npz(out_dir / VAL_SAMPLES_FILE, **samples)
        write_json(out_dir / SUMMARY_FILE, summary)
        remove_checkpoints(out_dir)
    accelerator.free_memory()
    return summary
