"""One run folder's owner and history: the lock the launch writing it holds, and whether what it holds came
from the recipe about to continue it.

No torch: a launcher, a scheduler job or `harness status` can ask before anything starts.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.recipe import (
    Recipe,
    changed_keys,
    disallowed_changes,
    fingerprint,
)
from harness.results import (
    CHECKPOINT_DIR,
    CHECKPOINT_MANIFEST,
    CHECKPOINT_OLD_DIR,
    LOCK_FILE,
    RECIPE_FILE,
    SUMMARY_FILE,
    DamagedFile,
    read_json,
    read_recipe,
    read_summary,
    remove,
    write_json,
)

HOLDER_FILE = f"{LOCK_FILE}.json"


class FolderBusy(RuntimeError):
    """Another launch holds the run folder."""


class FolderLock:
    """The run folder's lock, held by one launch (its main process) while it writes the folder.

    An OS lock (flock) on <folder>/.lock: released when the process ends however it ends, so a killed job never
    leaves the folder locked; a forked child (a DataLoader worker, which may outlive a killed launch by seconds)
    closes its copy of the descriptor as it starts, so only the launch holds it. .lock.json says who holds it. Both files go when the lock is released: the lock
    file is removed while still held, and a launch that locked a file since removed tries the new one, so two
    launches never hold the folder at once.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.fd: int | None = None
        os.register_at_fork(after_in_child=self.leave_to_parent)

    def leave_to_parent(self) -> None:
        """In a forked child: close the inherited descriptor (the lock stays the parent's)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def acquire(self) -> None:
        """Take the lock at once, or raise FolderBusy naming who holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        while self.fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FolderBusy(f"{self.folder} is being written by {holder_text(self.folder)}: "
                                 "not touching it") from None
            if same_file(fd, self.path):
                self.fd = fd
            else:  # its holder removed it as we opened it: lock the file that now stands there
                os.close(fd)
        write_json(self.folder / HOLDER_FILE, {
            "host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })

    def release(self) -> None:
        """Let the next launch have the folder, leaving no lock file behind."""
        remove(self.folder / HOLDER_FILE)
        remove(self.path)
        os.close(self.fd)  # closing the descriptor releases the lock
        self.fd = None


def same_file(fd: int, path: Path) -> bool:
    """Whether an open descriptor is still the file at `path`."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def holder_text(folder: Path) -> str:
    """Who holds a run folder's lock, as .lock.json says: 'pid 12 on node3 (SLURM job 456) since ...'."""
    try:
        holder = json.loads((Path(folder) / HOLDER_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return "another launch"
    job = f" (SLURM job {holder['slurm_job_id']})" if holder.get("slurm_job_id") else ""
    return f"pid {holder['pid']} on {holder['host']}{job} since {holder['since']}"


@dataclass(frozen=True)
class History:
    """What a run folder holds: a finished run, a checkpoint to continue, or nothing yet; and its damaged files."""

    finished: bool
    resumable: bool
    fingerprint: str | None  # of the recipe that made it, as its summary or checkpoint recorded
    recipe: Recipe | None  # its recipe.yaml, read through today's schema
    damaged: tuple[DamagedFile, ...] = ()  # files that could not be read: the summary, recipe.yaml, a manifest


def history(folder: Path) -> History:
    """Read what `folder` holds, without changing it; a damaged file counts as absent and is listed."""
    folder, damaged = Path(folder), []

    def readable(path: Path, read: Callable[[Path], Any]) -> Any:
        if not path.exists():
            return None
        try:
            return read(path)
        except DamagedFile as damage:
            damaged.append(damage)
            return None

    summary = readable(folder / SUMMARY_FILE, lambda path: read_summary(path.parent))
    finished = summary is not None and summary.status == "ok"
    checkpoints = [folder / name for name in (CHECKPOINT_DIR, CHECKPOINT_OLD_DIR) if (folder / name).is_dir()]
    manifests = [readable(checkpoint / CHECKPOINT_MANIFEST, read_json) for checkpoint in checkpoints]
    fingerprints = [manifest.get("fingerprint") for manifest in manifests if isinstance(manifest, dict)]
    recorded = summary.fingerprint if finished else next(iter(fingerprints), None)
    recipe = readable(folder / RECIPE_FILE, read_recipe)
    return History(finished, bool(checkpoints), recorded, recipe, tuple(damaged))


def recipe_changes(past: History, recipe: Recipe, allowed: list[str]) -> list[str]:
    """The dotted keys in which `recipe` differs from the one that made the folder's run, less those `allowed`
    (--allow-change patterns) lets change.

    recipe.yaml, read through today's schema (so keys added since take their defaults), names the keys;
    without a readable one, differing fingerprints can only say that something changed.
    """
    if past.fingerprint == fingerprint(recipe) or (past.recipe is None and past.fingerprint is None):
        return []
    if past.recipe is None:
        return ["<unknown: the folder holds no readable recipe.yaml>"]
    return disallowed_changes(changed_keys(past.recipe.model_dump(mode="json"), recipe.model_dump(mode="json")),
                              allowed)
