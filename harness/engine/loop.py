"""The training loop of one variant: iterate, log, evaluate, checkpoint, then write the summary."""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from harness import measure
from harness.engine.checkpoint import (
    SIGNAL_REASON,
    Resumed,
    latest_checkpoint,
    load_checkpoint,
    remove_checkpoints,
    resume_from,
    save_checkpoint,
    save_model_file,
)
from harness.engine.control import Agreement, Decision, Interrupted, StopSignals
from harness.engine.evaluate import Evaluation, evaluate, qualitative_samples
from harness.engine.probe import Cost, cost_of
from harness.engine.setup import Progress, Setup, endless, set_up
from harness.engine.step import NonFiniteWatch, Trainer
from harness.engine.summary import (
    bank_fields,
    finished_at,
    run_info,
    throughput_and_memory,
)
from harness.engine.terms import contrast_summary
from harness.engine.trackers import start_trackers, tracked
from harness.metrics import collapse
from harness.progress import bar, on_terminal
from harness.recipe import EvalConfig, OptimConfig, Variant
from harness.results import (
    VAL_CENTERS_FILE,
    VAL_SAMPLES_FILE,
    MetricsLog,
    variant_fields,
    write_npz,
    write_summary,
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
    so measuring adds no host sync to a step. The measurements live in the run's Progress, so a
    resumed run's figures cover the iterations timed before the stop too.
    """

    def __init__(self, trainer: Trainer, progress: Progress, warmup: int) -> None:
        device = trainer.ctx.device
        self.trainer, self.progress, self.warmup = trainer, progress, warmup
        self.steps = measure.SpanTimer(device, warmup, seconds=progress.step_seconds)
        trainer.contrast_timer.warmup, trainer.contrast_timer.seconds = warmup, progress.contrast_seconds

    def add_fill(self, iterations_run: int) -> None:
        """Count the bank's fill after a step, once past the warm-up."""
        if self.trainer.bank is not None and iterations_run > self.warmup:
            self.progress.fill_total += self.trainer.bank.fill()
            self.progress.fill_count += 1

    def flush(self) -> tuple[float | None, float | None]:
        """Read the spans closed since the last flush (one host sync); the last step's and contrast's seconds."""
        contrast = self.trainer.contrast_timer.flush()
        spans = self.steps.flush()
        return (spans[-1] if spans else None), (contrast[-1] if contrast else None)

    def bank_fill(self) -> float | None:
        """The mean fraction of bank slots holding a key over the timed iterations."""
        count = self.progress.fill_count
        return float(self.progress.fill_total) / count if count else None


class PlainProgress:
    """Progress for a log file (a scheduler job, no terminal): one line per log interval instead of a bar."""

    def __init__(self, name: str, total: int, start: int, enabled: bool) -> None:
        self.name, self.total, self.enabled = name, total, enabled
        self.since, self.since_iteration = time.monotonic(), start

    def line(self, done: int, loss: float) -> None:
        """Print iteration, loss, wall-clock s/iter since the last line, and the ETA at that pace."""
        now = time.monotonic()
        pace = (now - self.since) / max(1, done - self.since_iteration)
        self.since, self.since_iteration = now, done
        if self.enabled:
            eta = datetime.timedelta(seconds=round(pace * (self.total - done)))
            print(f"{self.name}: iter {done}/{self.total} loss {loss:.4f} {pace:.3f} s/iter ETA {eta}", flush=True)


def interim_protocol(cfg: EvalConfig) -> EvalConfig:
    """Evaluations during training: the recipe's mode, one scale, no flip (the full protocol runs at the end)."""
    return cfg.model_copy(update={"scales": (1.0,), "flip": False})


def record(accelerator: Accelerator, log: MetricsLog, values: dict[str, Any]) -> None:
    """One metrics record: a line of metrics.jsonl, and the same numbers to the recipe's trackers."""
    log.write(values)
    accelerator.log(tracked(values), step=values["iter"])


def train_variant(
    accelerator: Accelerator, variant: Variant, out_dir: Path, resume: bool = False, inexact: bool = False
) -> dict[str, Any]:
    """Train and evaluate one variant; write its metrics log, weights, summary and report inputs.

    Stops with Interrupted (after saving a checkpoint) when a stop signal reaches any rank.
    """
    recipe = variant.recipe
    setup = set_up(accelerator, recipe)
    trainer, progress = setup.trainer, setup.training.progress
    start_trackers(accelerator, variant)
    log = MetricsLog(out_dir, accelerator.is_main_process)
    resumed = start_from(setup, out_dir, log, inexact) if resume else Resumed(0, True)
    damaged_log = log.truncate_after(resumed.iteration)
    if damaged_log is not None:
        accelerator.print(f"{log.path}: held lines that are not records: kept as {damaged_log.name}, its readable "
                          "records carried over")
    # Skip warm-up iterations (allocator, caches), but keep some in very short runs.
    steady = SteadyState(trainer, progress, warmup=min(5, (recipe.optim.iterations - resumed.iteration) // 2))
    with StopSignals() as signals, measure.PeakMemory(accelerator.device) as memory:
        control = Agreement(signals, setup.ctx.world_size, accelerator.is_main_process, recipe.run.checkpoint_minutes)
        train(setup, variant, out_dir, resumed.iteration, log, steady, memory, control)
        # The trained state is saved before evaluating it: a failed or interrupted evaluation loses no training.
        if resumed.iteration < recipe.optim.iterations:
            save_checkpoint(setup.ctx, out_dir, trainer.model, trainer.bank, recipe.optim.iterations, "final")
        model_sha256 = save_model_file(accelerator, trainer.model, out_dir, recipe.run.save_aux_head)
        cost = probe_cost(setup, out_dir)
        memory.mark("probe")
        final = evaluate(setup.ctx, trainer.model, setup.eval_loader, recipe.eval, setup.info.num_classes,
                         collect_centers=True)
        samples = qualitative_samples(setup.ctx, trainer.model, setup.eval_set, recipe.eval, setup.info)
        memory.mark("eval")
    record(accelerator, log, {"kind": "eval", "iter": recipe.optim.iterations, "miou": final.miou})
    summary = summarize(setup, variant, final, steady, memory) | {
        "model_sha256": model_sha256, "requeue_count": progress.requeue_count, "resume_exact": resumed.exact,
        **({"resume_replaced": list(resumed.replaced)} if resumed.replaced else {}),
        **(cost.fields() if cost is not None else {"cost_probe_skipped": probe_skipped(setup)})}
    if accelerator.is_main_process:
        write_npz(out_dir / VAL_CENTERS_FILE, centers=final.centers, labels=final.center_labels)
        write_npz(out_dir / VAL_SAMPLES_FILE, **samples)
        write_summary(out_dir, summary)
        if not recipe.run.keep_checkpoint:
            remove_checkpoints(out_dir)
    accelerator.free_memory()
    return summary


def probe_skipped(setup: Setup) -> str:
    """Why a run has no cost probe."""
    return "no contrast term" if setup.trainer.contrast is None else "run.cost_probe: false"


def probe_cost(setup: Setup, out_dir: Path) -> Cost | None:
    """The contrast's paired cost (harness.engine.probe) on the next epoch's batches, then the trained state back
    from the final checkpoint, so the evaluation, weights and bank are the run's own."""
    loader = setup.train_loader
    accumulated = setup.ctx.recipe.optim.iterations * setup.ctx.recipe.optim.grad_accum_steps
    next_epoch = -(-accumulated // len(loader))
    cost = cost_of(setup, endless(loader, setup.train_set, next_epoch * len(loader)))
    if cost is not None:
        load_checkpoint(setup.ctx, latest_checkpoint(out_dir), setup.trainer.bank)
    return cost


def start_from(setup: Setup, out_dir: Path, log: MetricsLog, inexact: bool) -> Resumed:
    """Resume from the run's latest checkpoint; without one, say so and keep the earlier metrics log aside."""
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is not None:
        return resume_from(setup.ctx, checkpoint, setup.training.progress, setup.trainer.bank, inexact)
    kept = log.move_aside()
    setup.ctx.accelerator.print(f"{out_dir}: no checkpoint to resume from: training from iteration 0"
                                + (f" (the earlier metrics log kept as {kept.name})" if kept else ""))
    return Resumed(0, True)


def train(
    setup: Setup, variant: Variant, out_dir: Path, start: int, log: MetricsLog, steady: SteadyState,
    memory: measure.PeakMemory, control: Agreement,
) -> None:
    """The iterations from `start` on: steps, logs, interim evaluations, checkpoints, stops; no host sync between
    logs. Raises Interrupted after saving a checkpoint when the ranks agree to stop."""
    recipe, trainer, accelerator = variant.recipe, setup.trainer, setup.trainer.accelerator
    total = recipe.optim.iterations
    watch = NonFiniteWatch(accelerator.device, start)
    batches = endless(setup.train_loader, setup.train_set, start * recipe.optim.grad_accum_steps)
    progress_bar = bar(total=total, initial=start, desc=variant.name, enabled=accelerator.is_main_process)
    plain = PlainProgress(variant.name, total, start, accelerator.is_main_process and not on_terminal())
    for iteration in range(start, total):
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
            plain.line(done, values["loss"])
        if done == total:
            break
        if _due(done, recipe.eval.interval):
            memory.mark("train")
            interim = evaluate(setup.ctx, trainer.model, setup.eval_loader, interim_protocol(recipe.eval),
                               setup.info.num_classes)
            memory.mark("eval")
            record(accelerator, log, {"kind": "eval", "iter": done, "miou": interim.miou})
        checkpoint_boundary(setup, out_dir, done, watch, control.poll(), _due(done, recipe.run.checkpoint_interval),
                            control)
    progress_bar.close()
    watch.check(total)  # a NaN in the last iterations still fails the variant
    steady.flush()  # the steps since the last log count too
    memory.mark("train")
    if control.settle().stop:  # a signal during the last steps: stop before the evaluation
        checkpoint_boundary(setup, out_dir, total, watch, Decision(stop=True), False, control)


def checkpoint_boundary(
    setup: Setup, out_dir: Path, done: int, watch: NonFiniteWatch, decision: Decision, scheduled: bool,
    control: Agreement,
) -> None:
    """Save a checkpoint when scheduled (iterations), due (minutes) or asked to stop; then stop if asked."""
    if not (scheduled or decision.checkpoint or decision.stop):
        return
    watch.check(done)  # no checkpoint ever holds a NaN loss
    trainer = setup.trainer
    reason = SIGNAL_REASON if decision.stop else "interval"
    save_checkpoint(setup.ctx, out_dir, trainer.model, trainer.bank, done, reason)
    control.checkpointed()
    if decision.stop:
        raise Interrupted(done, control.signals.name)


def summarize(
    setup: Setup, variant: Variant, final: Evaluation, steady: SteadyState, memory: measure.PeakMemory
) -> dict[str, Any]:
    """summary.json of a finished run (see harness/results.py)."""
    recipe, trainer, accelerator = variant.recipe, setup.trainer, setup.trainer.accelerator
    described = variant_fields(variant.name, recipe, contrast_summary(recipe.loss.contrast, len(setup.train_set)))
    return {
        **described, "status": "ok", "error": None,
        "miou": final.miou, "per_class_iou": final.per_class.tolist(), "class_names": list(setup.info.class_names),
        "collapsed": collapse(final.confusion, list(setup.info.class_names)),
        **throughput_and_memory(accelerator, recipe, steady.steps.median(), trainer.contrast_timer.median(), memory),
        "s_per_iter_mean": steady.steps.mean(),
        "bank_fill": steady.bank_fill(),
        "params": measure.count_parameters(accelerator.unwrap_model(trainer.model)),
        "flops_per_image": setup.training.flops_per_image, "backbone_weights": setup.training.weights,
        **bank_fields(accelerator, trainer.bank), **run_info(accelerator),
        "finished_at": finished_at(),
    }
