"""Eq. 4 at the paper's bank sizes: the direct loss against the chunked one, fp32 against bf16 storage.

For each dataset geometry (classes x one bank slot per training image, 256-d),
with a full bank of random unit keys and M queries (--images per batch x 10
present classes; 16 x 10 = 160 by default), it times one forward + backward
and measures the extra peak memory:

- measured: peak resident set size (RSS) during the call minus RSS just before
  it, sampled by a psutil thread every millisecond (CPU tensors are invisible to
  tracemalloc; glibc hands large freed blocks back, so RSS follows the tensors);
- analytic, by construction -- direct: a floor, the fp32 normalised copy of the
  bank [NK,C] plus one [M,NK] fp32 score matrix (autograd keeps several more);
  chunked: its budget, one chunk's working memory as auto_chunk_size sizes it
  (chunk_bytes, which over-counts copies) plus the [NK] int64 key labels.

The direct loss is the pre-streaming implementation (commit 4822cd8), kept here
as the baseline. It is skipped, with its predicted need, where that exceeds the
available memory (ADE20K at M=160 needs ~17 GB beside its 3.1 GB bank).
Run: python -m benchmarks.contrast_scale [--datasets ade20k] [--images 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from torch import Tensor

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    DIM,
    GEOMETRIES,
    TAU,
    Geometry,
    batch_queries,
    dense_bank_loss,
    random_unit_bank,
)
from harness.contrast import (  # noqa: E402
    CHUNK_BUDGET_BYTES,
    auto_chunk_size,
    chunk_bytes,
    region_contrast_loss,
)
from harness.measure import PeakMemory  # noqa: E402

MB = 1e6
SCALES = {name: GEOMETRIES[name] for name in ("cityscapes", "coco_stuff", "ade20k")}
# [M,NK] fp32 matrices the direct loss holds at its peak under autograd (6.8 measured at COCO-Stuff-10k).
DIRECT_SCORE_MATRICES = 7
HEADROOM = 2 * 10**9  # memory left to the rest of the machine


@dataclass(frozen=True)
class Measurement:
    """One forward + backward: loss, query gradient, seconds, extra peak RSS in bytes."""

    loss: float
    grad: Tensor
    seconds: float
    peak_bytes: int


def measure(loss_fn: Callable[[Tensor], Tensor], queries: Tensor) -> Measurement:
    """Time and peak extra RSS of loss_fn(queries) and its backward."""
    leaf = queries.detach().requires_grad_(True)
    gc.collect()
    before = psutil.Process().memory_info().rss
    with PeakMemory(torch.device("cpu"), interval_s=0.001) as rss:
        start = time.perf_counter()
        loss = loss_fn(leaf)
        loss.backward()
        seconds = time.perf_counter() - start
    return Measurement(loss.item(), leaf.grad, seconds, rss.peak_bytes - before)


def analytic_bytes(geometry: Geometry, queries: int) -> tuple[int, int]:
    """Direct floor: fp32 keys [NK,C] + scores [M,NK]; chunked budget: one chunk + int64 labels [NK]."""
    entries = geometry.num_classes * geometry.train_images
    chunk = min(auto_chunk_size(queries, DIM), entries)
    return 4 * entries * (DIM + queries), chunk_bytes(queries, DIM, chunk) + 8 * entries


def direct_need(geometry: Geometry, queries: int) -> int:
    """Predicted extra peak of the direct loss: its fp32 key copy plus DIRECT_SCORE_MATRICES [M,NK]."""
    entries = geometry.num_classes * geometry.train_images
    return 4 * entries * (DIM + DIRECT_SCORE_MATRICES * queries)


@dataclass(frozen=True)
class Row:
    """One table row: which loss on which storage, its measurement and what it is compared with."""

    geometry: Geometry
    queries: int
    loss: str
    storage: str
    measured: Measurement | None  # None: the direct run would not fit in memory
    analytic: int
    ref: Measurement | None
    note: str = ""


def measure_direct(
    geometry: Geometry, queries: Tensor, labels: Tensor, bank: Tensor
) -> tuple[Measurement | None, str]:
    """The direct run, or None and why when its predicted peak exceeds the available memory."""
    need, available = direct_need(geometry, len(labels)), psutil.virtual_memory().available - HEADROOM
    if need > available:
        return None, f"skipped: needs ~{need / 1e9:.1f} GB, {available / 1e9:.1f} GB available"
    valid = torch.ones(geometry.num_classes, geometry.train_images, dtype=torch.bool)
    return measure(lambda q: dense_bank_loss(q, labels, bank, valid, TAU, torch.float32), queries), ""


def run_geometry(geometry: Geometry, images: int, seed: int) -> list[Row]:
    """Direct fp32, chunked fp32 and chunked bf16 on one geometry."""
    generator = torch.Generator().manual_seed(seed)
    bank = random_unit_bank(geometry, generator)
    queries, labels = batch_queries(geometry.num_classes, generator, images)
    valid = torch.ones(geometry.num_classes, geometry.train_images, dtype=torch.bool)
    direct, note = measure_direct(geometry, queries, labels, bank)
    streamed = measure(lambda q, full=bank: region_contrast_loss(q, labels, full, valid, TAU), queries)
    low = bank.bfloat16()
    del bank  # the bf16 run holds only the bf16 bank
    bf16 = measure(lambda q: region_contrast_loss(q, labels, low, valid, TAU), queries)
    direct_analytic, streamed_analytic = analytic_bytes(geometry, len(labels))
    return [
        Row(geometry, len(labels), "direct", "fp32", direct, direct_analytic, None, note),
        Row(geometry, len(labels), "chunked", "fp32", streamed, streamed_analytic, direct),
        Row(geometry, len(labels), "chunked", "bf16", bf16, streamed_analytic, streamed),
    ]


def differences(measured: Measurement, ref: Measurement | None) -> list[str]:
    """Absolute loss difference and largest gradient difference against the reference run."""
    if ref is None:
        return ["-", "-"]
    return [f"{abs(measured.loss - ref.loss):.1e}", f"{(measured.grad - ref.grad).abs().max().item():.1e}"]


def measured_cells(row: Row) -> list[str]:
    """Time, extra peak RSS, analytic floor, loss and differences; the reason instead when not run."""
    m = row.measured
    if m is None:
        return [row.note, "-", f"{row.analytic / MB:,.0f}", "-", "-", "-"]
    timing = [f"{m.seconds:.1f}", f"{m.peak_bytes / MB:,.0f}", f"{row.analytic / MB:,.0f}", f"{m.loss:.6f}"]
    return timing + differences(m, row.ref)


def table_line(row: Row) -> str:
    """One markdown table row."""
    geometry = row.geometry
    bank_mb = geometry.num_classes * geometry.train_images * geometry.dim * (2 if row.storage == "bf16" else 4) / MB
    cells = [
        geometry.name, f"{geometry.num_classes} x {geometry.train_images}", f"{bank_mb:,.0f}", str(row.queries),
        row.loss, row.storage, *measured_cells(row),
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = [
    "| dataset | bank N x K | bank MB | M | loss | storage | fwd+bwd s | extra peak RSS MB (measured) "
    "| extra MB analytic (direct floor, chunked budget) | loss value | abs diff vs ref | max abs grad diff vs ref |",
    "|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
]


def goal_line(rows: list[Row]) -> str:
    """The goal: chunked fp32 extra memory <= 1/4 of the direct loss's, time <= 1.2x."""
    direct, streamed = rows[0].measured, rows[1].measured
    name = f"{rows[0].geometry.name} (M={rows[0].queries})"
    if direct is None:
        return f"{name}: direct not measured ({rows[0].note})"
    memory, speed = streamed.peak_bytes / direct.peak_bytes, streamed.seconds / direct.seconds
    verdict = "met" if memory <= 0.25 and speed <= 1.2 else "NOT met"
    return f"{name}: chunked/direct extra memory {memory:.3f}, time {speed:.2f}x -> goal {verdict}"


def warm_up() -> None:
    """One tiny run of each loss, so thread pools and first-call costs do not land on the first row."""
    generator = torch.Generator().manual_seed(0)
    bank = random_unit_bank(Geometry("warm-up", 3, 50, crop=64), generator)
    queries, labels = batch_queries(3, generator, images=4, present=2)
    valid = torch.ones(3, 50, dtype=torch.bool)
    measure(lambda q: dense_bank_loss(q, labels, bank, valid, TAU, torch.float32), queries)
    measure(lambda q: region_contrast_loss(q, labels, bank, valid, TAU), queries)


def main() -> None:
    """Parse arguments, run every geometry, print the table and the goal check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(SCALES), default=list(SCALES))
    # One thread by default: on a shared 2-core machine a second OpenMP thread mostly waits at barriers.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=16, help="images per batch, 10 classes each")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warm_up()
    print(f"torch {torch.__version__}, {args.threads} thread(s), tau {TAU}, dim {DIM}, "
          f"chunk budget {CHUNK_BUDGET_BYTES / 2**20:.0f} MiB; "
          "refs: chunked fp32 vs direct, chunked bf16 vs chunked fp32\n")
    print("\n".join(HEADER))
    checks = []
    for name in args.datasets:
        rows = run_geometry(SCALES[name], args.images, args.seed)
        print("\n".join(table_line(row) for row in rows), flush=True)
        checks.append(goal_line(rows))
    print("\n" + "\n".join(checks))


if __name__ == "__main__":
    main()
