"""Checkpoints: save / find the latest / resume, with per-rank files for banks that differ across ranks;
the final weights (model.safetensors; harness.saved rebuilds a model from them)."""

from __future__ import annotations

import os
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
    DamagedFile,
    disk_full,
    file_sha256,
    out_of_space,
    publish,
    read_json,
    remove,
    write_json,
)

SCRATCH_DIR, OLD_DIR = f"{CHECKPOINT_DIR}.tmp", CHECKPOINT_OLD_DIR
RESUME_SCRATCH_DIR = f".{CHECKPOINT_DIR}.resume"  # a damaged checkpoint's parts merged with fresh ones
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


class IncompleteCheckpoint(DamagedFile):
    """A checkpoint lacks a part, or a part differs from what was saved: it cannot resume a run exactly."""


# Parts a resume cannot do without: the model's weights and the loop's state (its iteration; the first object
# registered for checkpointing). Any other part (optimizer, RNG states, sampler, a replicated bank) --resume-inexact
# replaces with the fresh state of a new run.
IRREPLACEABLE_PARTS = ("model.safetensors", "pytorch_model.bin", "custom_checkpoint_0.pkl")


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


def read_manifest(directory: Path) -> dict[str, Any]:
    """A checkpoint's manifest.json; IncompleteCheckpoint when it is missing or damaged."""
    path = directory / CHECKPOINT_MANIFEST
    try:
        manifest = read_json(path)
    except DamagedFile as damage:
        raise IncompleteCheckpoint(path, f"{damage.problem}: {directory} cannot be checked") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(entry, dict) and "bytes" in entry for entry in files.values()):
        raise IncompleteCheckpoint(path, f"not a checkpoint manifest (no files with their sizes): {directory} cannot "
                                         "be checked")
    return manifest


def damaged_parts(directory: Path, manifest: dict[str, Any]) -> list[IncompleteCheckpoint]:
    """Every file the manifest lists that is missing, of another size or (hashed ones) other bytes."""
    damaged = []
    for name, expected in manifest["files"].items():
        part = directory / name
        if not part.is_file():
            damaged.append(IncompleteCheckpoint(part, "missing from the checkpoint"))
        elif part.stat().st_size != expected["bytes"]:
            damaged.append(IncompleteCheckpoint(part, f"truncated: {part.stat().st_size} of {expected['bytes']} bytes"))
        elif "sha256" in expected and file_sha256(part) != expected["sha256"]:
            damaged.append(IncompleteCheckpoint(part, "differs from the file the checkpoint saved"))
    return damaged


def verify_checkpoint(directory: Path) -> dict[str, Any]:
    """The manifest of a checkpoint whose every listed file is there, whole and unchanged; IncompleteCheckpoint else."""
    manifest = read_manifest(directory)
    damaged = damaged_parts(directory, manifest)
    if damaged:
        raise damaged[0]
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
        if out_of_space(error, scratch):
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
    """Where a resumed run continues, whether it continues exactly, and which damaged parts it replaced."""

    iteration: int
    exact: bool
    replaced: tuple[str, ...] = ()


def load_replacing(ctx: RunContext, checkpoint: Path, replaced: tuple[str, ...], bank: Bank | None) -> None:
    """Load `checkpoint` with its `replaced` parts taken from this new run's fresh state instead: every rank saves
    the fresh state and reads a merged copy (hard links) in one scratch folder beside the checkpoint."""
    accelerator = ctx.accelerator
    scratch = checkpoint.parent / RESUME_SCRATCH_DIR
    fresh, merged = scratch / "fresh", scratch / "merged"
    if accelerator.is_main_process:
        remove(scratch)
        merged.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(fresh))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for source in (checkpoint, fresh):
            for part in source.iterdir():
                if part.is_file() and (source == fresh) == (part.name in replaced):
                    os.link(part, merged / part.name)
    accelerator.wait_for_everyone()
    try:
        load_checkpoint(ctx, merged, bank)
    finally:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            remove(scratch)


def resume_from(ctx: RunContext, checkpoint: Path, progress: Progress, bank: Bank | None, inexact: bool) -> Resumed:
    """Load `checkpoint` into the prepared objects; refuse an incomplete one unless `inexact`.

    A checkpoint saved on a stop signal counts one more requeue in `progress`.
    """
    accelerator = ctx.accelerator
    try:
        manifest = read_manifest(checkpoint)
        damaged = damaged_parts(checkpoint, manifest)
    except IncompleteCheckpoint as error:  # no manifest to check the parts against: load them as they are
        manifest, damaged = {}, [error]
    if damaged and not inexact:
        raise IncompleteCheckpoint(damaged[0].path, f"{damaged[0].problem}; resume anyway, not exactly, with "
                                                    "--resume-inexact (damaged parts get a fresh state)")
    for damage in damaged:
        if damage.path.name in IRREPLACEABLE_PARTS:
            raise IncompleteCheckpoint(damage.path, f"{damage.problem}; it holds the model's weights or the loop's "
                                                    "state, which no resume can replace: train the run again")
    replaced = tuple(damage.path.name for damage in damaged if damage.path.name != CHECKPOINT_MANIFEST)
    try:
        if replaced:
            load_replacing(ctx, checkpoint, replaced, bank)
        else:
            load_checkpoint(ctx, checkpoint, bank)
    except Exception as error:  # noqa: BLE001 - a part no manifest vouched for
        raise IncompleteCheckpoint(checkpoint, f"a part does not load ({type(error).__name__}: {error})") from None
    for damage in damaged:
        accelerator.print(f"warning: {damage}; resuming inexactly (--resume-inexact)"
                          + (" with a fresh state in its place" if damage.path.name in replaced else ""))
    if manifest.get("reason") == SIGNAL_REASON:
        progress.requeue_count += 1
    accelerator.print(f"resuming {checkpoint.parent} at iteration {progress.iteration}")
    return Resumed(progress.iteration, not damaged, replaced)


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
