"""Checkpoints: save / find the latest / resume, with per-rank files for banks that differ across ranks;
the final weights (model.safetensors; harness.saved rebuilds a model from them)."""

from __future__ import annotations

import errno
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from harness.contrast import Bank
from harness.engine.context import RunContext
from harness.engine.setup import Progress
from harness.engine.step import NonFinite
from harness.results import (
    CHECKPOINT_DIR,
    CHECKPOINT_MANIFEST,
    CHECKPOINT_OLD_DIR,
    MODEL_FILE,
    disk_full,
    file_sha256,
    publish,
    remove,
    write_json,
)

SCRATCH_DIR, OLD_DIR = f"{CHECKPOINT_DIR}.tmp", CHECKPOINT_OLD_DIR
MANIFEST_HASH_BYTES = 64 * 2**20  # files up to this size are hashed too (RNG states, loop state, banks)
SIGNAL_REASON = "signal"  # a checkpoint saved because the run was told to stop


def _shard_path(directory: Path, rank: int, world_size: int) -> Path:
    """Where rank `rank` of `world_size` keeps its own bank state in a checkpoint folder."""
    return directory / f"bank_rank{rank}_of{world_size}.pt"


def save_bank_shard(bank: Bank, directory: Path, rank: int, world_size: int) -> None:
    """Write this rank's bank state into `directory` (save_state keeps the main rank's objects only)."""
    torch.save(bank.state_dict(), _shard_path(directory, rank, world_size))


def load_bank_shard(bank: Bank, directory: Path, rank: int, world_size: int) -> None:
    """Read this rank's bank state back into the bank, on whatever device it lives; the world size must be the
    one that saved it."""
    path = _shard_path(directory, rank, world_size)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: was {directory} saved with another world size?")
    # Read on the host: load_state_dict copies into the bank's own buffers, on its device (a CPU rank's device
    # may read "cpu:0", which torch.load cannot map to).
    bank.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


class IncompleteCheckpoint(RuntimeError):
    """A checkpoint lacks a part, or a part differs from what was saved: it cannot resume a run exactly."""


def check_finite(accelerator: Accelerator, model: torch.nn.Module, bank: Bank | None) -> None:
    """Raise NonFinite naming the first model parameter or buffer (batch-norm statistics too) or bank tensor
    holding NaN or inf; one host sync."""
    state = {f"model.{name}": tensor for name, tensor in accelerator.unwrap_model(model).state_dict().items()}
    state |= {f"bank.{name}": tensor for name, tensor in (bank.state_dict() if bank is not None else {}).items()}
    floating = {name: tensor for name, tensor in state.items() if tensor.is_floating_point()}
    finite = torch.stack([tensor.isfinite().all() for tensor in floating.values()])  # [T] on the device
    if not bool(finite.all()):
        bad = next(name for name, ok in zip(floating, finite.tolist()) if not ok)
        raise NonFinite(f"{bad} holds NaN or inf: stopping this variant without writing a checkpoint of it")


def write_manifest(directory: Path, fingerprint: str, iteration: int, reason: str) -> None:
    """manifest.json: every file of a checkpoint with its size (and SHA-256 up to 64 MiB), and what the state is."""
    files = {}
    for path in sorted(item for item in directory.rglob("*") if item.is_file()):
        size = path.stat().st_size
        files[str(path.relative_to(directory))] = {"bytes": size, **(
            {"sha256": file_sha256(path)} if size <= MANIFEST_HASH_BYTES else {})}
    write_json(directory / CHECKPOINT_MANIFEST,
               {"fingerprint": fingerprint, "iteration": iteration, "reason": reason, "files": files})


def verify_checkpoint(directory: Path) -> dict[str, Any]:
    """The manifest of a checkpoint whose every listed file is there, whole and unchanged; IncompleteCheckpoint else."""
    path = directory / CHECKPOINT_MANIFEST
    if not path.is_file():
        raise IncompleteCheckpoint(f"{path} is missing: {directory} is not a complete checkpoint")
    manifest = json.loads(path.read_text())
    for name, expected in manifest["files"].items():
        part = directory / name
        if not part.is_file():
            raise IncompleteCheckpoint(f"{part} is missing from the checkpoint")
        if part.stat().st_size != expected["bytes"]:
            raise IncompleteCheckpoint(f"{part} is truncated: {part.stat().st_size} of {expected['bytes']} bytes")
        if "sha256" in expected and file_sha256(part) != expected["sha256"]:
            raise IncompleteCheckpoint(f"{part} differs from the file the checkpoint saved")
    return manifest


def save_checkpoint(ctx: RunContext, out_dir: Path, model: torch.nn.Module, bank: Bank | None, iteration: int,
                    reason: str) -> None:
    """Everything a resume needs, through save_state, checked finite first and swapped in whole with its manifest:
    a kill or a full disk never leaves half of one, and the previous checkpoint stays until the new one is whole."""
    accelerator = ctx.accelerator
    check_finite(accelerator, model, bank)
    final, scratch, old = out_dir / CHECKPOINT_DIR, out_dir / SCRATCH_DIR, out_dir / OLD_DIR
    try:
        accelerator.save_state(str(scratch))
        if bank is not None and not bank.replicated:
            save_bank_shard(bank, scratch, accelerator.process_index, accelerator.num_processes)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_manifest(scratch, ctx.fingerprint, iteration, reason)
    except BaseException as error:
        if accelerator.is_main_process:
            remove(scratch)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise disk_full(final) from error
        raise
    if accelerator.is_main_process:
        if final.exists():
            final.rename(old)
        scratch.rename(final)
        remove(old)
    accelerator.wait_for_everyone()


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint: a kill between the two renames leaves only the old one."""
    for name in (CHECKPOINT_DIR, OLD_DIR):
        if (out_dir / name).is_dir():
            return out_dir / name
    return None


def load_checkpoint(ctx: RunContext, checkpoint: Path, bank: Bank | None) -> None:
    """Put every registered object (model, optimizer, loop state, replicated bank, RNG) and a sharded bank's
    own part back as `checkpoint` holds them."""
    accelerator = ctx.accelerator
    accelerator.load_state(str(checkpoint))
    if bank is not None and not bank.replicated:
        load_bank_shard(bank, checkpoint, accelerator.process_index, accelerator.num_processes)


@dataclass(frozen=True)
class Resumed:
    """Where a resumed run continues, and whether it continues exactly."""

    iteration: int
    exact: bool


def resume_from(ctx: RunContext, checkpoint: Path, progress: Progress, bank: Bank | None, inexact: bool) -> Resumed:
    """Load `checkpoint` into the prepared objects; refuse an incomplete one unless `inexact`.

    A checkpoint saved on a stop signal counts one more requeue in `progress`.
    """
    accelerator = ctx.accelerator
    try:
        manifest, exact = verify_checkpoint(checkpoint), True
    except IncompleteCheckpoint as error:
        if not inexact:
            raise IncompleteCheckpoint(f"{error}; resume anyway, not exactly, with --resume-inexact") from None
        accelerator.print(f"warning: {error}; resuming inexactly (--resume-inexact)")
        manifest, exact = {}, False
    load_checkpoint(ctx, checkpoint, bank)
    if manifest.get("reason") == SIGNAL_REASON:
        progress.requeue_count += 1
    accelerator.print(f"resuming {checkpoint.parent} at iteration {progress.iteration}")
    return Resumed(progress.iteration, exact)


def remove_checkpoints(out_dir: Path) -> None:
    """A finished run has nothing to resume."""
    for name in (CHECKPOINT_DIR, OLD_DIR, SCRATCH_DIR):
        remove(out_dir / name)


def save_model_file(accelerator: Accelerator, model: torch.nn.Module, out_dir: Path, with_aux: bool) -> str | None:
    """Write out_dir/model.safetensors, the unwrapped model (gathered under ZeRO-3); its SHA-256 on the main process.

    Every rank must call it: DeepSpeed ZeRO-3 gathers the shards collectively.
    """
    state = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return None
    # torch.compile's wrapper survives unwrapping and prefixes every name; the file names the plain model's.
    state = {name.removeprefix("_orig_mod."): tensor for name, tensor in state.items()}
    kept = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()
            if with_aux or not name.startswith("aux_head.")}
    path = out_dir / MODEL_FILE
    publish(path, lambda scratch: save_file(kept, str(scratch), metadata={"format": "pt"}))
    return file_sha256(path)
