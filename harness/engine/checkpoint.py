"""Checkpoints: save / find the latest / resume, with per-rank files for banks that differ across ranks;
the final weights (model.safetensors; harness.saved rebuilds a model from them)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from harness.contrast import Bank
from harness.engine.setup import Progress
from harness.results import CHECKPOINT_DIR, MODEL_FILE, file_sha256, publish

SCRATCH_DIR, OLD_DIR = f"{CHECKPOINT_DIR}.tmp", f"{CHECKPOINT_DIR}.old"


def _shard_path(directory: Path, rank: int, world_size: int) -> Path:
    """Where rank `rank` of `world_size` keeps its own bank state in a checkpoint folder."""
    return directory / f"bank_rank{rank}_of{world_size}.pt"


def save_bank_shard(bank: Bank, directory: Path, rank: int, world_size: int) -> None:
    """Write this rank's bank state into `directory` (save_state keeps the main rank's objects only)."""
    torch.save(bank.state_dict(), _shard_path(directory, rank, world_size))


def load_bank_shard(bank: Bank, directory: Path, rank: int, world_size: int, device: torch.device) -> None:
    """Read this rank's bank state back; the world size must be the one that saved it."""
    path = _shard_path(directory, rank, world_size)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: was {directory} saved with another world size?")
    bank.load_state_dict(torch.load(path, map_location=device, weights_only=True))


def save_checkpoint(accelerator: Accelerator, out_dir: Path, bank: Bank | None) -> None:
    """Everything a resume needs, through save_state; swapped in whole, so a kill never leaves half of one."""
    final, scratch, old = out_dir / CHECKPOINT_DIR, out_dir / SCRATCH_DIR, out_dir / OLD_DIR
    accelerator.save_state(str(scratch))
    if bank is not None and not bank.replicated:
        save_bank_shard(bank, scratch, accelerator.process_index, accelerator.num_processes)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            final.rename(old)
        scratch.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint: a kill between the two renames leaves only the old one."""
    for name in (CHECKPOINT_DIR, OLD_DIR):
        if (out_dir / name).is_dir():
            return out_dir / name
    return None


def resume_from(accelerator: Accelerator, out_dir: Path, progress: Progress, bank: Bank | None) -> int:
    """Load the latest checkpoint, if any; the iteration to continue from."""
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is None:
        return 0
    accelerator.load_state(str(checkpoint))
    if bank is not None and not bank.replicated:
        load_bank_shard(bank, checkpoint, accelerator.process_index, accelerator.num_processes, accelerator.device)
    accelerator.print(f"resuming {out_dir} at iteration {progress.iteration}")
    return progress.iteration


def remove_checkpoints(out_dir: Path) -> None:
    """A finished run has nothing to resume."""
    for name in (CHECKPOINT_DIR, OLD_DIR):
        shutil.rmtree(out_dir / name, ignore_errors=True)


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
