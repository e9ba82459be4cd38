"""The training loop of one variant: iterate, log, evaluate, checkpoint, then write the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from harness import measure
from harness.engine.checkpoint import remove_checkpoints, resume_from, save_checkpoint
from harness.engine.evaluate import evaluate, qualitative_samples
from harness.engine.setup import endless, set_up
from harness.engine.step import input_dtype
from harness.engine.summary import (
    bank_fields,
    finished_at,
    run_info,
    throughput_and_memory,
)
from harness.engine.terms import region_bank_size
from harness.recipe import OptimConfig, Variant
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


def train_variant(accelerator: Accelerator, variant: Variant, out_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train and evaluate one variant; write its metrics log, summary and report inputs."""
    recipe = variant.recipe
    setup = set_up(accelerator, recipe)
    trainer, model = setup.trainer, setup.trainer.model
    start = resume_from(accelerator, out_dir, setup.progress, trainer.bank) if resume else 0
    log = MetricsLog(out_dir, accelerator.is_main_process)
    log.truncate_after(start)
    flops = measure.flops_per_image(
        accelerator.unwrap_model(model), recipe.data.crop_size, accelerator.device, input_dtype(accelerator)
    )
    remaining = recipe.optim.iterations - start
    # Skip warm-up iterations (allocator, caches), but keep some in very short runs.
    timer = measure.StepTimer(accelerator.device, warmup=min(5, remaining // 2))
    batches = endless(setup.train_loader, setup.train_set, start * recipe.optim.grad_accum_steps)
    progress_bar = tqdm(total=recipe.optim.iterations, initial=start, desc=variant.name,
                        disable=not accelerator.is_main_process)
    with measure.PeakMemory(accelerator.device) as memory:
        for iteration in range(start, recipe.optim.iterations):
            timer.start()
            lr = poly_lr(recipe.optim, iteration)
            set_lr(trainer.optimizer, lr)
            for _ in range(recipe.optim.grad_accum_steps):
                losses = trainer.step(next(batches), iteration)
            step_time = timer.stop()
            setup.progress.iteration = done = iteration + 1
            if done % recipe.run.log_interval == 0 or iteration == start:
                log.write({"kind": "train", "iter": done, **losses, "lr": lr, "step_time": step_time})
            progress_bar.update(1)
            progress_bar.set_postfix(loss=f"{losses['loss']:.3f}")
            if done < recipe.optim.iterations and _due(done, recipe.eval.interval):
                interim = evaluate(accelerator, model, setup.val_loader, recipe.eval, setup.info.num_classes)
                log.write({"kind": "eval", "iter": done, "val_miou": interim.miou})
            if done < recipe.optim.iterations and _due(done, recipe.run.checkpoint_interval):
                save_checkpoint(accelerator, out_dir, trainer.bank)
        progress_bar.close()
        final = evaluate(accelerator, model, setup.val_loader, recipe.eval, setup.info.num_classes, collect_centers=True)
        samples = qualitative_samples(accelerator, model, setup.val_set, recipe.eval, setup.info)
    log.write({"kind": "eval", "iter": recipe.optim.iterations, "val_miou": final.miou})
    contrast_cfg = recipe.loss.contrast
    bank_size = region_bank_size(contrast_cfg, len(setup.train_set)) if contrast_cfg.kind == "region" else None
    summary = {
        **variant_fields(variant.name, recipe), "status": "ok", "error": None,
        "val_miou": final.miou, "per_class_iou": final.per_class.tolist(), "class_names": list(setup.info.class_names),
        **throughput_and_memory(accelerator, recipe, timer.seconds_per_iter(), memory),
        "params": measure.count_parameters(accelerator.unwrap_model(model)), "flops_per_image": flops,
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
