"""Shared test helpers: seeded generators, free ports, torchrun commands, the dense Eq. 4 reference.

Markers (registered in pyproject.toml): `distributed` starts real processes (torchrun, gloo);
`slow` takes over ten seconds. CI runs both.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from benchmarks.common import dense_bank_loss, dense_info_nce
from harness.engine import Trainer, build, make_context, prepare
from harness.recipe import Recipe

REPO = Path(__file__).resolve().parents[1]
RUN = str(REPO / "harness" / "run.py")
# CPU ranks under torchrun: Accelerate must not look for GPUs, and one thread each keeps 2 cores from thrashing.
# A worker script's folder, not the repository, heads its sys.path: PYTHONPATH makes it import this tree's
# harness even where an editable install points at another checkout.
CPU_ENV = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

__all__ = [
    "CPU_ENV", "REPO", "RUN", "check", "dense_bank_loss", "dense_info_nce", "free_port", "seeded", "torchrun",
    "trainer_for",
]


@pytest.fixture(scope="module")
def accelerator() -> Iterator[Accelerator]:
    """A CPU Accelerator; the singleton state is reset around it so no other test's device leaks in or out."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)


def trainer_for(accelerator: Accelerator, recipe: Recipe, num_classes: int, train_images: int) -> Trainer:
    """A Trainer built and prepared as set_up makes one (no data loaders), its model initialised from seed 0."""
    torch.manual_seed(0)
    ctx = make_context(accelerator, recipe)
    trainer, _ = prepare(ctx, build(ctx, num_classes, train_images))
    return trainer


def seeded(seed: int) -> torch.Generator:
    """A CPU generator with a fixed seed."""
    return torch.Generator().manual_seed(seed)


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args: str, nproc: int = 2, extra: tuple[str, ...] = ()) -> list[str]:
    """The command that starts `args` on `nproc` local ranks, on a free rendezvous port unless `extra` names one."""
    port = () if any(flag.startswith("--master_port") for flag in extra) else (f"--master_port={free_port()}",)
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *port, *extra, *args]


def check(done: subprocess.CompletedProcess) -> None:
    """Fail with the tail of the process's output unless it exited 0."""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
