"""The one place that talks to Accelerate: prepare, train, gather, evaluate, record.

Every distributed act goes through the Accelerator. The contrastive banks are
kept out of `accelerator.prepare` (DDP would broadcast their buffers from rank 0
and DeepSpeed would cast them); instead each rank gathers the batch's region
centers and pushes the same entries in the same order.

    setup.py       make_accelerator, set_up: data loaders, model, optimizer, contrast term, prepared
    step.py        Trainer: one training step (forward, losses, backward, optimizer)
    terms.py       the bank a recipe asks for, and each contrast kind's loss and push (the gathers)
    loop.py        train_variant: the loop, logging, interim evaluation, checkpoints, the summary
    evaluate.py    whole / slide / multi-scale + flip prediction, mIoU, val centers, qualitative samples,
                   a saved model's evaluation
    checkpoint.py  save / latest / resume, per-rank bank files; model.safetensors: save, rebuild
    summary.py     launch info, speed and memory per rank, bank digests, failed summaries
"""

from harness.engine.loop import train_variant
from harness.engine.setup import Setup, endless, make_accelerator, set_up
from harness.engine.step import NonFiniteLoss, Trainer
from harness.engine.summary import failed_summary

__all__ = ["NonFiniteLoss", "Setup", "Trainer", "endless", "failed_summary", "make_accelerator", "set_up", "train_variant"]
