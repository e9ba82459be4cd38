"""Shared test helpers: seeded generators, free ports, torchrun commands, the dense Eq. 4 reference.

Markers (registered in pyproject.toml): `distributed` starts real processes (torchrun, gloo);
`slow` takes over ten seconds. CI runs both.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.common import dense_bank_loss, dense_info_nce

REPO = Path(__file__).resolve().parents[1]
RUN = str(REPO / "harness" / "run.py")
# CPU ranks under torchrun: Accelerate must not look for GPUs, and one thread each keeps 2 cores from thrashing.
# A worker script's folder, not the repository, heads its sys.path: PYTHONPATH makes it import this tree's
# harness even where an editable install points at another checkout.
CPU_ENV = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

__all__ = ["CPU_ENV", "REPO", "RUN", "check", "dense_bank_loss", "dense_info_nce", "free_port", "seeded", "torchrun"]


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
