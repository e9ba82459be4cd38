"""Throughput, peak memory and FLOPs, measured the same way on a CPU and a GPU."""

from __future__ import annotations

import platform
import statistics
import threading
import time
from dataclasses import dataclass, field

import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode


class PeakMemory:
    """Peak memory over a `with` block: the CUDA allocator's peak, else sampled process RSS.

    RSS is sampled by a thread because ru_maxrss is a whole-process peak that never
    goes down, which would charge one sweep variant for the memory of an earlier one.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.01) -> None:
        self.device, self.interval_s = device, interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.device.type == "cuda" else "rss"

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample_rss, daemon=True)
            self._thread.start()
        return self

    def _sample_rss(self) -> None:
        process = psutil.Process()
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)
            self._stop.wait(self.interval_s)

    def read(self) -> int:
        """The peak so far, in bytes."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return max(self.peak_bytes, psutil.Process().memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = self.read()


@dataclass
class StepTimer:
    """Wall time per training iteration; the first `warmup` iterations are not counted."""

    device: torch.device
    warmup: int = 5
    times: list[float] = field(default_factory=list)
    _seen: int = 0
    _start: float = 0.0

    def start(self) -> None:
        self._sync()
        self._start = time.perf_counter()

    def stop(self) -> float:
        """End the iteration; returns its duration in seconds."""
        self._sync()
        elapsed = time.perf_counter() - self._start
        self._seen += 1
        if self._seen > self.warmup:
            self.times.append(elapsed)
        return elapsed

    def _sync(self) -> None:
        # CUDA kernels are asynchronous: without a sync the clock measures launch time.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def seconds_per_iter(self) -> float | None:
        """Median iteration time: robust to the odd evaluation or checkpoint stall."""
        return statistics.median(self.times) if self.times else None


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def flops_per_image(
    model: torch.nn.Module, image_size: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> int:
    """Forward FLOPs for one image, counted by torch's FlopCounterMode (2 per MAC)."""
    was_training = model.training
    model.eval()
    probe = torch.zeros(1, 3, image_size, image_size, device=device, dtype=dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(probe)
    model.train(was_training)
    return int(counter.get_total_flops())


def device_name(device: torch.device) -> str:
    """The accelerator's name, or the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {psutil.cpu_count()} cores)"
