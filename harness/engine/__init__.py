"""The one place that talks to Accelerate: prepare, train, gather, evaluate, record.

Every distributed act goes through the Accelerator. The contrastive banks are
kept out of `accelerator.prepare` (DDP would broadcast their buffers from rank 0
and DeepSpeed would cast them); instead each rank gathers the batch's region
centers and pushes the same entries in the same order.

    control.py     stop signals and checkpoints by the clock, agreed by every rank at step boundaries
    context.py     RunContext: what a run derives once from its recipe and launch (device, input dtype,
                   image statistics and pad colour, align_corners, world size)
    setup.py       make_accelerator; set_up = build (model, optimizer, contrast term) then prepare; loaders
    step.py        Trainer: one training step (forward, losses, backward, optimizer)
    terms/         the registry of contrast kinds (one ContrastKind spec each: settings, term, bank, summary
                   fields; built-in and entry-point kinds alike), each kind's loss and push (the gathers)
    loop.py        train_variant: the loop, logging, interim evaluation, checkpoints, the summary
    evaluate.py    whole / slide / multi-scale + flip prediction, mIoU, region centers, qualitative samples
    checkpoint.py  save / latest / resume, per-rank bank files; model.safetensors: save
    trackers.py    run.trackers: checked up front, started per run
    summary.py     launch info, speed and memory per rank, bank digests, failed summaries
"""

from harness.engine.context import RunContext, make_context
from harness.engine.control import Interrupted
from harness.engine.loop import train_variant
from harness.engine.setup import Setup, Training, build, endless, make_accelerator, prepare, set_up
from harness.engine.step import NonFinite, Trainer
from harness.engine.summary import failed_summary, interrupted_summary

__all__ = [
    "Interrupted", "NonFinite", "RunContext", "Setup", "Trainer", "Training", "build", "endless", "failed_summary",
    "interrupted_summary", "make_accelerator", "make_context", "prepare", "set_up", "train_variant",
]
