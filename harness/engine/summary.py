"""What summary.json records beyond the metrics: the launch, speed and memory per rank, bank digests."""

from __future__ import annotations

import hashlib
import math
import sys
import traceback
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
from accelerate import Accelerator

from harness import measure
from harness.contrast import Bank
from harness.engine.control import Interrupted
from harness.engine.terms import contrast_summary
from harness.recipe import Recipe, Variant
from harness.results import variant_fields

DIGEST_CHUNK_BYTES = 64 * 2**20  # host memory a digest holds at once, whatever the bank's size


def library_versions() -> dict[str, str | None]:
    """Versions of what shapes a run's numbers; None for a package this machine lacks (deepspeed on many)."""
    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    names = ["torch", "timm", "accelerate", "deepspeed", "datasets"]
    return {"python": sys.version.split()[0], **{name: installed(name) for name in names}}


def run_info(accelerator: Accelerator) -> dict[str, Any]:
    """How this run was launched: world size, precision, distributed type, device, versions."""
    plugin = accelerator.state.deepspeed_plugin
    return {
        "world_size": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "distributed_type": accelerator.distributed_type.value,
        "zero_stage": plugin.zero_stage if plugin is not None else None,
        "device": measure.device_name(accelerator.device),
        "versions": library_versions(),
    }


def finished_at() -> str:
    """Now, in UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors (names, dtypes and bytes): equal digests mean bitwise-equal state.

    Bytes reach the host DIGEST_CHUNK_BYTES at a time, so a bank of tens of GB needs no host copy.
    """
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode() + str(tensor.dtype).encode())
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8)  # raw bytes, still on the device
        for start in range(0, data.numel(), DIGEST_CHUNK_BYTES):
            digest.update(data[start : start + DIGEST_CHUNK_BYTES].cpu().numpy())
    return digest.hexdigest()


def identical_on_all_ranks(accelerator: Accelerator, digest: str) -> bool:
    """Whether every rank computed the same digest."""
    local = torch.tensor([int(digest[:15], 16)], device=accelerator.device)  # 60 bits fit an int64
    gathered = accelerator.gather(local)
    return bool((gathered == gathered[0]).all())


RANK_FIELDS = ("s_per_iter", "contrast_ms_per_iter", "train_peak_memory_bytes", "eval_peak_memory_bytes")


def per_rank_measurements(accelerator: Accelerator, local: dict[str, float | None]) -> list[dict[str, Any]]:
    """This rank's RANK_FIELDS gathered from every rank, so the main process can record them all."""
    values = [[math.nan if local[name] is None else float(local[name]) for name in RANK_FIELDS]]
    rows = accelerator.gather(torch.tensor(values, dtype=torch.float64, device=accelerator.device)).cpu().tolist()
    return [{"rank": rank, **dict(zip(RANK_FIELDS, row))} for rank, row in enumerate(rows)]  # [world, fields]


def throughput_and_memory(
    accelerator: Accelerator, recipe: Recipe, seconds: float | None, contrast_seconds: float | None,
    memory: measure.PeakMemory,
) -> dict[str, Any]:
    """Per-rank and global speed, contrast time and memory; the slowest rank sets the global pace.

    Memory is split by phase: training alone, and evaluation; peak_memory_bytes is the larger.
    """
    ranks = per_rank_measurements(accelerator, {
        "s_per_iter": seconds, "contrast_ms_per_iter": None if contrast_seconds is None else 1000 * contrast_seconds,
        "train_peak_memory_bytes": memory.phases.get("train"), "eval_peak_memory_bytes": memory.phases.get("eval"),
    })
    local_batch = recipe.data.batch_size * recipe.optim.grad_accum_steps
    for rank in ranks:
        rank["images_per_s"] = local_batch / rank["s_per_iter"]
    slowest = max(rank["s_per_iter"] for rank in ranks)
    train_peak, eval_peak = (int(max(rank[name] for rank in ranks)) for name in RANK_FIELDS[2:])
    contrast_ms = max(rank["contrast_ms_per_iter"] for rank in ranks)
    return {
        "global_batch_size": local_batch * accelerator.num_processes, "per_process_batch": recipe.data.batch_size,
        "grad_accum_steps": recipe.optim.grad_accum_steps,
        "s_per_iter": slowest, "train_images_per_s": local_batch * accelerator.num_processes / slowest,
        "contrast_ms_per_iter": None if math.isnan(contrast_ms) else contrast_ms,
        "train_peak_memory_bytes": train_peak, "eval_peak_memory_bytes": eval_peak,
        "peak_memory_bytes": max(train_peak, eval_peak), "memory_kind": memory.kind, "per_rank": ranks,
    }


def bank_fields(accelerator: Accelerator, bank: Bank | None) -> dict[str, Any]:
    """Bank bytes, and proof that every rank holds the bank it should."""
    if bank is None:
        return {"bank_bytes": 0}
    digest = state_digest(bank.state_dict())  # per rank for a sharded bank
    shared = digest if bank.replicated else state_digest(bank.agreement_state())
    return {"bank_bytes": bank.nbytes(), "bank_digest": digest,
            "bank_identical_across_ranks": identical_on_all_ranks(accelerator, shared)}


def described(variant: Variant) -> dict[str, Any]:
    """What a variant that did not finish is: its recipe's fields and its contrast kind's (its training set unknown)."""
    return variant_fields(variant.name, variant.recipe, contrast_summary(variant.recipe.loss.contrast, None))


def failed_summary(accelerator: Accelerator, variant: Variant, error: BaseException) -> dict[str, Any]:
    """The summary of a variant that did not finish, with its error and traceback."""
    return {
        **described(variant), "status": "failed",
        "error": f"{type(error).__name__}: {error}",
        "traceback": "".join(traceback.format_exception(error)),
        **run_info(accelerator), "finished_at": finished_at(),
    }


def interrupted_summary(accelerator: Accelerator, variant: Variant, stop: Interrupted) -> dict[str, Any]:
    """The summary of a variant stopped on a signal: its checkpoint holds `stop.iteration`; --resume continues it."""
    return {
        **described(variant), "status": "interrupted", "error": None,
        "iteration": stop.iteration, "signal": stop.signal_name,
        **run_info(accelerator), "finished_at": finished_at(),
    }
