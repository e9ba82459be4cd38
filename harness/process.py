"""This process: the machine it shares, its state under a launcher (accelerate launch, torchrun, a scheduler),
and the cores it may use.

Shared by the command-line entry points that start work (run, evaluate, and so the jobs of submit). It loads
no torch at its top: run.py and evaluate.py call share_the_machine before anything loads torch's OpenMP.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from harness.progress import quiet_libraries

if TYPE_CHECKING:
    from accelerate import PartialState

# A container's CPU quota, in microseconds of CPU time per period: cgroup v2 writes "<quota|max> <period>"
# in one file, v1 a quota (-1: none) and a period in two.
CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")


def share_the_machine() -> None:
    """Make idle OpenMP threads sleep, not spin (OMP_WAIT_POLICY=PASSIVE), unless the user chose a policy.

    libgomp reads its environment once, when torch loads it: call this first. By default a waiting thread
    spins before it sleeps, taking the core from whatever else would run there: two 2-thread tiny runs at
    once on 2 cores took 18 s with sleeping threads, 29 s by default and 47 s spinning (ACTIVE), the same
    numbers; a run beside a busy process: benchmarks/shared_machine.py. Submitted jobs get it as harness.run
    loads in them.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def process_state() -> PartialState:
    """The launched process's PartialState; CPU ranks (ACCELERATE_USE_CPU=1) included.

    Only AcceleratorState reads ACCELERATE_USE_CPU; without passing it here, CPU ranks would each run alone.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    quiet_libraries()
    if state.device.type == "cpu":
        # DeepSpeed's accelerator detection, which Accelerate wakes even in runs without DeepSpeed (unwrap_model
        # imports it), warns on every CPU run that it found no GPU: this run knows it runs on the CPU.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    use_the_cores(state.device.type == "cpu")
    return state


def use_the_cores(on_cpu: bool) -> None:
    """On a CPU, give this process its share of the cores (cpu_threads).

    `accelerate launch` pins a CPU run to one thread unless its config says use_cpu, which a
    config that should also serve a GPU cannot say.
    """
    if on_cpu:
        import torch

        torch.set_num_threads(cpu_threads())


def cpu_threads() -> int:
    """Compute threads for each local process: its share of the usable cores, at most one per physical core.

    Threads beyond the cores this process may use (taskset, a cgroup quota) wait for each other; a
    hyperthread shares its core's arithmetic units (accelerate launch counts physical cores too).
    """
    usable = usable_cores()
    cores = min(usable, psutil.cpu_count(logical=False) or usable)
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by its container's CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    # A part of a core still runs a thread part of the time: 1.5 cores' quota does more work with 2 than with 1.
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def cgroup_cpu_quota() -> float | None:
    """The cores' worth of CPU time the cgroup quota grants (cgroup v2 or v1); None where none is set."""
    try:
        if CGROUP_V2_CPU_MAX.is_file():
            quota, period = CGROUP_V2_CPU_MAX.read_text().split()
        else:
            quota, period = ((CGROUP_V1_CPU / name).read_text().strip()
                             for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
    except (OSError, ValueError):
        return None  # no CPU controller to read (macOS, some hosts): nothing but the affinity caps the cores
    return None if quota in ("max", "-1") else int(quota) / int(period)
