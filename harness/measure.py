"""Throughput, peak memory and FLOPs, measured the same way on a CPU and a GPU."""

from __future__ import annotations

import platform
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode


class PeakMemory:
    """Peak memory over a `with` block: the CUDA allocator's peak, else sampled process RSS.

    RSS is sampled by a thread because ru_maxrss is a whole-process peak that never
    goes down, which would charge one sweep variant for the memory of an earlier one.
    `mark(phase)` charges the peak since the previous mark to `phase` (training, evaluation).
    """

    def __init__(self, device: torch.device, interval_s: float = 0.01) -> None:
        self.device, self.interval_s = device, interval_s
        self.peak_bytes = 0
        self.phases: dict[str, int] = {}
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

    def mark(self, phase: str) -> None:
        """Charge the peak since the previous mark to `phase`, then start afresh from what is in use now."""
        self.phases[phase] = max(self.phases.get(phase, 0), self.read())
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_bytes = psutil.Process().memory_info().rss

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = self.read()


@dataclass
class SpanTimer:
    """Durations of a repeated span of work (a training step, the contrast term), with no host sync per span.

    On CUDA each span records two events, read only at flush() (at log intervals); elsewhere
    the clock is read at once. The first `warmup` spans are not kept in `seconds`.
    """

    device: torch.device
    warmup: int = 0
    seconds: list[float] = field(default_factory=list)
    _seen: int = 0
    _start: float = 0.0
    _open: list[tuple[Any, Any]] = field(default_factory=list)  # CUDA event pairs not yet read
    _done: list[float] = field(default_factory=list)  # CPU spans not yet flushed

    def start(self) -> None:
        """Open a span."""
        if self.device.type == "cuda":
            self._open.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
            self._open[-1][0].record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> None:
        """Close the span opened last."""
        if self.device.type == "cuda":
            self._open[-1][1].record()
        else:
            self._done.append(time.perf_counter() - self._start)

    def flush(self) -> list[float]:
        """Seconds of every span closed since the last flush (warm-up ones too); waits for the device once."""
        if self._open:
            self._open[-1][1].synchronize()
            self._done = [begin.elapsed_time(end) / 1000 for begin, end in self._open]
            self._open = []
        spans, self._done = self._done, []
        kept = spans[max(0, self.warmup - self._seen):]
        self._seen += len(spans)
        self.seconds.extend(kept)
        return spans

    def median(self) -> float | None:
        """Median span in seconds: robust to the odd evaluation or checkpoint stall."""
        return statistics.median(self.seconds) if self.seconds else None

    def mean(self) -> float | None:
        """Mean span in seconds: what a run's spans cost in all, stalls included (planning's unit)."""
        return statistics.fmean(self.seconds) if self.seconds else None


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
