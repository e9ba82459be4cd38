"""This process under a launcher (accelerate launch, torchrun, a scheduler): its state and its share of the cores.

Shared by the command-line entry points that start work on a launched process (run, evaluate).
"""

from __future__ import annotations

import os

import psutil
import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env


def process_state() -> PartialState:
    """The launched process's PartialState; CPU ranks (ACCELERATE_USE_CPU=1) included.

    Only AcceleratorState reads ACCELERATE_USE_CPU; without passing it here, CPU ranks would each run alone.
    """
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    use_the_cores(state.device.type == "cpu")
    return state


def use_the_cores(on_cpu: bool) -> None:
    """On a CPU, give each local process its share of the physical cores.

    `accelerate launch` pins a CPU run to one thread unless its config says use_cpu, which a
    config that should also serve a GPU cannot say.
    """
    if on_cpu:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(max(1, (psutil.cpu_count(logical=False) or 1) // local_processes))
