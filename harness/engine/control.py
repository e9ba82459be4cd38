"""Stopping and checkpointing on request: a scheduler's signals, and checkpoints by the clock, agreed by every rank.

SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 (SLURM's preemption and time-limit warnings; submitit's
default) only set a flag; the loop acts on it at the next step boundary, where every rank
agrees to save the exact checkpoint and stop. A second SIGINT stops at once.

Ranks agree over a gloo group on the host, never the device: each boundary waits for the
previous boundary's all-reduce (long finished, in the background) and posts its own, so a
step never waits for the network and no GPU stream ever waits for the host. Every rank reads
the same reduced flags, one step after they were raised.

DataLoader workers ignore the stop signals while their main process lives, and end when it ends,
however it ends (end_loader_workers).
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # registers its exit hook before ours (below)
import signal
import threading
import time
from dataclasses import dataclass
from types import FrameType

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


def leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: a worker ignores the stop signals, which its main process acts on.

    A scheduler signals every process of a job step (SLURM's `scancel --signal`, Ctrl-C's process
    group), and a worker's default (SIGUSR1/2) or PyTorch's (SIGTERM from any process but its
    parent) is to die, which fails the step it is feeding. The main process ends its workers
    itself: once it has saved, or as it exits (end_loader_workers).
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def end_loader_workers() -> None:
    """At exit: kill this process's daemonic children, its DataLoader workers, before multiprocessing joins them.

    multiprocessing's own exit hook sends each daemonic child SIGTERM and then joins it; a worker ignores
    SIGTERM (above), so that join waited forever after a second Ctrl-C, an uncaught exception or a script
    ending with a live loader iterator. A worker holds nothing to save: SIGKILL loses nothing. (Where the
    main process is killed outright, PyTorch's worker watchdog sees its parent gone within 5 s.)
    """
    # Else PyTorch's SIGCHLD handler reports each as a failure ("DataLoader worker (pid N) is killed by signal")
    # from a later exit hook.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


# atexit runs the hooks registered last first: this one before multiprocessing's, registered at its import.
atexit.register(end_loader_workers)


class Interrupted(Exception):
    """The run saved an exact checkpoint on a stop request and stopped; --resume continues it."""

    def __init__(self, iteration: int, signal_name: str) -> None:
        super().__init__(f"stopped on {signal_name} at iteration {iteration} after saving a checkpoint")
        self.iteration, self.signal_name = iteration, signal_name


class StopSignals:
    """While entered, the stop signals set a flag instead of ending the process (main thread only)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.received = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def name(self) -> str:
        """The received signal's name, e.g. 'SIGUSR2'."""
        return signal.Signals(self.received).name if self.received is not None else "a stop request"


@dataclass(frozen=True)
class Decision:
    """What every rank does at a step boundary, beside what the recipe schedules."""

    stop: bool = False  # save a checkpoint and stop: a signal reached some rank
    checkpoint: bool = False  # save a checkpoint: run.checkpoint_minutes passed on the main rank's clock


class Agreement:
    """Decisions every rank takes together at step boundaries, from each rank's signals and the main rank's clock."""

    def __init__(self, signals: StopSignals, world_size: int, is_main: bool, checkpoint_minutes: float | None) -> None:
        self.signals, self.is_main = signals, is_main
        self.period_s = None if checkpoint_minutes is None else 60 * checkpoint_minutes
        self.last_checkpoint = time.monotonic()
        # A host-side group of its own: control messages never queue behind (or on) the device's collectives.
        self.group = dist.new_group(backend="gloo") if world_size > 1 else None
        self.pending: tuple[dist.Work, torch.Tensor] | None = None

    def local_flags(self) -> torch.Tensor:
        """[stop, checkpoint due] as this rank sees them now."""
        due = self.is_main and self.period_s is not None and time.monotonic() - self.last_checkpoint >= self.period_s
        return torch.tensor([self.signals.received is not None, due], dtype=torch.int32)

    def poll(self) -> Decision:
        """This boundary's decision: the flags every rank posted at the previous boundary (all reduced by max)."""
        if self.group is None:
            return self._decided(self.local_flags())
        agreed = self._collect()
        flags = self.local_flags()
        self.pending = dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.group, async_op=True), flags
        return self._decided(agreed) if agreed is not None else Decision()

    def settle(self) -> Decision:
        """A decision from every rank's flags as they are now, waiting for the agreement (training is over)."""
        if self.group is None:
            return self._decided(self.local_flags())
        earlier = self._collect()
        flags = self.local_flags()
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.group)
        return self._decided(flags if earlier is None else torch.maximum(flags, earlier))

    def checkpointed(self) -> None:
        """Restart the clock of run.checkpoint_minutes."""
        self.last_checkpoint = time.monotonic()

    def _collect(self) -> torch.Tensor | None:
        """The reduced flags of the all-reduce in flight, once it is done; None when none was posted."""
        if self.pending is None:
            return None
        work, flags = self.pending
        work.wait()
        self.pending = None
        return flags

    def _decided(self, flags: torch.Tensor) -> Decision:
        stop, due = (bool(flag) for flag in flags.tolist())
        return Decision(stop=stop, checkpoint=due)
