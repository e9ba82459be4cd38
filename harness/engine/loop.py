"""The training loop of one variant: iterate, log, evaluate, checkpoint, then write the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from harness import measure
from harness.engine.checkpoint import (
    remove_checkpoints,
    resume_from,
    save_checkpoint,
    save_model_file,
)
from harness.engine.evaluate import Evaluation, evaluate, qualitative_samples
from harness.engine.setup import Setup, endless, set_up
from harness.engine.step import NonFiniteWatch, Trainer
from harness.engine.summary import (
    bank_fields,
    finished_at,
    run_info,
    throughput_and_memory,
)
from harness.engine.terms import region_bank_size
from harness.engine.trackers import start_trackers, tracked
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


class SteadyState:
    """What a run measures past its warm-up: step time, the contrast's time, the bank's fill.

    Times are CUDA events on a GPU (read at log intervals), and the fill is summed on the device,
    so measuring adds no host sync to a step.
    """

    def __init__(self, trainer: Trainer, warmup: int) -> None:
        device = trainer.accelerator.device
        self.trainer, self.warmup = trainer, warmup
        self.steps = measure.SpanTimer(device, warmup)
        trainer.contrast_timer.warmup = warmup
        self.fill_total, self.fill_count = torch.zeros((), device=device), 0

    def add_fill(self, iterations_run: int) -> None:
        """Count the bank's fill after a step, once past the warm-up."""
        if self.trainer.bank is not None and iterations_run > self.warmup:
            self.fill_total += self.trainer.bank.fill()
            self.fill_count += 1

    def flush(self) -> tuple[float | None, float | None]:
        """Read the spans closed since the last flush (one host sync); the last step's and contrast's seconds."""
        contrast = self.trainer.contrast_timer.flush()
        spans = self.steps.flush()
        return (spans[-1] if spans else None), (contrast[-1] if contrast else None)

    def bank_fill(self) -> float | None:
        """The mean fraction of bank slots holding a key over the timed iterations."""
        return float(self.fill_total) / self.fill_count if self.fill_count else None


def interim_protocol(cfg: EvalConfig) -> EvalConfig:
    """Evaluations during training: the recipe's mode, one scale, no flip (the full protocol runs at the end)."""
    return cfg.model_copy(update={"scales": (1.0,), "flip": False})


def record(accelerator: Accelerator, log: MetricsLog, values: dict[str, Any]) -> None:
    """One metrics record: a line of metrics.jsonl, and the same numbers to the recipe's trackers."""
    log.write(values)
    accelerator.log(tracked(values), step=values["iter"])


def train_variant(accelerator: Accelerator, variant: Variant, out_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train and evaluate one variant; write its metrics log, summary and report inputs."""
    recipe = variant.recipe
    setup = set_up(accelerator, recipe)
    ctx, trainer = setup.ctx, setup.trainer
    start_trackers(accelerator, variant)
    start = resume_from(accelerator, out_dir, setup.training.progress, trainer.bank) if resume else 0
    log = MetricsLog(out_dir, accelerator.is_main_process)
    log.truncate_after(start)
    # Skip warm-up iterations (allocator, caches), but keep some in very short runs.
    steady = SteadyState(trainer, warmup=min(5, (recipe.optim.iterations - start) // 2))
    with measure.PeakMemory(accelerator.device) as memory:
        train(setup, variant, out_dir, start, log, steady, memory)
        final = evaluate(ctx, trainer.model, setup.eval_loader, recipe.eval, setup.info.num_classes,
                         collect_centers=True)
        samples = qualitative_samples(ctx, trainer.model, setup.eval_set, recipe.eval, setup.info)
        memory.mark("eval")
    record(accelerator, log, {"kind": "eval", "iter": recipe.optim.iterations, "val_miou": final.miou})
    summary = summarize(setup, variant, final, steady, memory)
    summary["model_sha256"] = save_model_file(accelerator, setup.trainer.model, out_dir, recipe.run.save_aux_head)
    if recipe.run.keep_checkpoint:
        save_checkpoint(accelerator, out_dir, setup.trainer.bank)  # the final state, which the loop never saves
    if accelerator.is_main_process:
        write_npz(out_dir / VAL_CENTERS_FILE, centers=final.centers, labels=final.center_labels)
        write_npz(out_dir / VAL_SAMPLES_FILE, **samples)
        write_json(out_dir / SUMMARY_FILE, summary)
        if not recipe.run.keep_checkpoint:
            remove_checkpoints(out_dir)
    accelerator.free_memory()
    return summary


def train(
    setup: Setup, variant: Variant, out_dir: Path, start: int, log: MetricsLog, steady: SteadyState,
    memory: measure.PeakMemory,
) -> None:
    """The iterations from `start` on: steps, logs, interim evaluations, checkpoints; no host sync between logs."""
    recipe, trainer, accelerator = variant.recipe, setup.trainer, setup.trainer.accelerator
    watch = NonFiniteWatch(accelerator.device, start)
    batches = endless(setup.train_loader, setup.train_set, start * recipe.optim.grad_accum_steps)
    progress_bar = tqdm(total=recipe.optim.iterations, initial=start, desc=variant.name,
                        disable=not accelerator.is_main_process)
    for iteration in range(start, recipe.optim.iterations):
        steady.steps.start()
        lr = poly_lr(recipe.optim, iteration)
        set_lr(trainer.optimizer, lr)
        for _ in range(recipe.optim.grad_accum_steps):
            losses = trainer.step(next(batches), iteration)
            watch.add(losses["loss"])
        steady.steps.stop()
        setup.training.progress.iteration = done = iteration + 1
        steady.add_fill(done - start)
        progress_bar.update(1)
        if done % recipe.run.log_interval == 0 or iteration == start:
            watch.check(done)
            values = dict(zip(losses, torch.stack(list(losses.values())).tolist()))  # one host sync
            step_time, contrast_time = steady.flush()
            contrast_ms = None if contrast_time is None else 1000 * contrast_time
            record(accelerator, log, {"kind": "train", "iter": done, **values, "lr": lr, "step_time": step_time,
                                      "contrast_ms": contrast_ms})
            progress_bar.set_postfix(loss=f"{values['loss']:.3f}")
        if done == recipe.optim.iterations:
            break
        if _due(done, recipe.eval.interval):
            memory.mark("train")
            interim = evaluate(setup.ctx, trainer.model, setup.eval_loader, interim_protocol(recipe.eval),
                               setup.info.num_classes)
            memory.mark("eval")
            record(accelerator, log, {"kind": "eval", "iter": done, "val_miou": interim.miou})
        if _due(done, recipe.run.checkpoint_interval):
            watch.check(done)  # no checkpoint ever holds a NaN
            save_checkpoint(accelerator, out_dir, trainer.bank)
    progress_bar.close()
    watch.check(recipe.optim.iterations)  # a NaN in the last iterations still fails the variant
    steady.flush()  # the steps since the last log count too
    memory.mark("train")


def summarize(
    setup: Setup, variant: Variant, final: Evaluation, steady: SteadyState, memory: measure.PeakMemory
) -> dict[str, Any]:
    """summary.json of a finished run (see harness/results.py)."""
    recipe, trainer = variant.recipe, setup.trainer
    accelerator, contrast_cfg = trainer.accelerator, recipe.loss.contrast
    bank_size = region_bank_size(contrast_cfg, len(setup.train_set)) if contrast_cfg.kind == "region" else None
    return {
        **variant_fields(variant.name, recipe), "status": "ok", "error": None,
        "val_miou": final.miou, "per_class_iou": final.per_class.tolist(), "class_names": list(setup.info.class_names),
        **throughput_and_memory(accelerator, recipe, steady.steps.median(), trainer.contrast_timer.median(), memory),
        "bank_fill": steady.bank_fill(),
        "params": measure.count_parameters(accelerator.unwrap_model(trainer.model)),
        "flops_per_image": setup.training.flops_per_image, "backbone_weights": setup.training.weights,
        **bank_fields(accelerator, trainer.bank, bank_size),
        **run_info(accelerator),
        "finished_at": finished_at(),
    }
