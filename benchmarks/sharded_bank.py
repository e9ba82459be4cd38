"""Replicated against sharded region banks on real ranks: per-rank bank bytes and Eq. 4's time.

Launch with torchrun (gloo on the CPU), e.g.

    OMP_NUM_THREADS=1 python -m torch.distributed.run --nproc_per_node=2 -m benchmarks.sharded_bank \
        [--datasets cityscapes ade20k] [--images 2] [--repeats 3]

For each dataset geometry (benchmarks.common's: classes x one slot per training
image, 256-d) every rank holds a full bank of random unit keys, the same bank in
both layouts (class i's keys come from a generator seeded with i, so no rank
ever materialises more than its layout holds), and M = --images x 10 region
centers of its own. It times one forward + backward of Eq. 4 per layout (the
median of --repeats; a step waits for its slowest rank, so the slowest rank's
time), reports each layout's per-rank bank bytes, measured (nbytes) and
predicted (region_bank_bytes / sharded_bank_bytes), and checks the sharded
loss and gradients against the replicated ones. The layouts are measured one
after the other, so at most one bank per rank is alive.

Sharding halves what each rank stores and reads, but each rank then streams
the queries of every rank against its shard: the arithmetic per rank stays the
same, and the all-gather / all-reduce of [world x M, 2C + 3] partial sums is added.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from benchmarks.common import DIM, GEOMETRIES, TAU, Geometry, batch_queries
from harness.contrast import (
    RegionBank,
    ShardedRegionBank,
    region_bank_bytes,
    region_contrast_loss,
    sharded_bank_bytes,
    sharded_region_contrast_loss,
)

MB = 1e6


def class_keys(geometry: Geometry, index: int, seed: int) -> Tensor:
    """Class `index`'s K random unit keys [K,C], the same on every rank and in both layouts."""
    generator = torch.Generator().manual_seed(seed * 1000 + index)
    keys = torch.randn(geometry.train_images, DIM, generator=generator)
    return keys.div_(keys.norm(dim=1, keepdim=True))


def replicated_bank(geometry: Geometry, seed: int) -> RegionBank:
    """Every slot of the bank, full."""
    bank = RegionBank(geometry.num_classes, geometry.train_images, DIM)
    for index in range(geometry.num_classes):
        bank.keys[index] = class_keys(geometry, index, seed)
    bank.filled.fill_(geometry.train_images)
    return bank


def sharded_bank(geometry: Geometry, seed: int, rank: int, world: int) -> ShardedRegionBank:
    """This rank's slots of the same full bank: global slots rank, rank + world, ..."""
    bank = ShardedRegionBank(geometry.num_classes, geometry.train_images, DIM, rank=rank, world_size=world)
    for index in range(geometry.num_classes):
        bank.queues.keys[index] = class_keys(geometry, index, seed)[rank::world]
    bank.queues.filled.fill_(bank.queues.size)
    return bank


@dataclass(frozen=True)
class Result:
    """One layout on one rank: bank bytes (measured, predicted), slowest rank's median seconds, loss, gradient."""

    layout: str
    bank_bytes: int
    predicted_bytes: int
    seconds: float
    loss: float
    grad: Tensor


def slowest_median(loss_fn: Callable[[Tensor], Tensor], queries: Tensor, repeats: int) -> tuple[float, float, Tensor]:
    """The slowest rank's median fwd+bwd seconds over `repeats`, and this rank's loss and query gradient."""
    times = []
    for _ in range(repeats):
        leaf = queries.detach().requires_grad_(True)
        dist.barrier()  # every rank starts together, as in a training step
        start = time.perf_counter()
        loss = loss_fn(leaf)
        loss.backward()
        times.append(time.perf_counter() - start)
    seconds = torch.tensor(statistics.median(times))
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    return seconds.item(), loss.item(), leaf.grad


def measure_layouts(geometry: Geometry, images: int, repeats: int, seed: int) -> list[Result]:
    """Replicated, then sharded, on the same bank and this rank's same queries."""
    rank, world = dist.get_rank(), dist.get_world_size()
    queries, labels = batch_queries(geometry.num_classes, torch.Generator().manual_seed(seed + rank + 1), images)
    bank = replicated_bank(geometry, seed)
    valid = bank.valid
    timing = slowest_median(
        lambda q, keys=bank.keys, usable=valid: region_contrast_loss(q, labels, keys, usable, TAU), queries, repeats
    )
    predicted = region_bank_bytes(geometry.num_classes, geometry.train_images, DIM)
    results = [Result("replicated", bank.nbytes(), predicted, *timing)]
    del bank, valid  # only one layout's bank alive at a time
    shard = sharded_bank(geometry, seed, rank, world)
    timing = slowest_median(lambda q: sharded_region_contrast_loss(q, labels, shard, TAU), queries, repeats)
    predicted = sharded_bank_bytes(geometry.num_classes, geometry.train_images, DIM, rank, world)
    return [*results, Result("sharded", shard.nbytes(), predicted, *timing)]


def largest(value: float) -> float:
    """The largest `value` over the ranks."""
    total = torch.tensor(value, dtype=torch.float64)
    dist.all_reduce(total, op=dist.ReduceOp.MAX)
    return total.item()


def table_lines(geometry: Geometry, queries: int, results: list[Result]) -> list[str]:
    """Markdown rows; differences are the largest over ranks of sharded vs replicated."""
    replicated, sharded = results
    loss_diff = largest(abs(sharded.loss - replicated.loss))
    grad_diff = largest((sharded.grad - replicated.grad).abs().max().item())
    world = dist.get_world_size()
    lines = []
    for result in results:
        diffs = ["-", "-"] if result is replicated else [f"{loss_diff:.1e}", f"{grad_diff:.1e}"]
        cells = [geometry.name, f"{geometry.num_classes} x {geometry.train_images}", result.layout,
                 f"{result.bank_bytes / MB:,.1f}", f"{result.predicted_bytes / MB:,.1f}",
                 f"{queries} ({queries * world})", f"{result.seconds:.2f}", f"{result.loss:.6f}", *diffs]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


HEADER = [
    "| dataset | bank N x K | layout | bank MB per rank (nbytes) | predicted MB | M per rank (all ranks) "
    "| fwd+bwd s (slowest rank) | loss (rank 0) | abs loss diff | max abs grad diff |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
]


def main() -> None:
    """Parse arguments, measure every geometry, print the table on rank 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(GEOMETRIES), default=["cityscapes", "ade20k"])
    parser.add_argument("--images", type=int, default=2, help="images per rank, 10 classes each")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        print(f"torch {torch.__version__}, {world} gloo ranks, {torch.get_num_threads()} thread(s) each, "
              f"tau {TAU}, dim {DIM}, fp32 banks\n")
        print("\n".join(HEADER), flush=True)
    for name in args.datasets:
        geometry = GEOMETRIES[name]
        lines = table_lines(geometry, args.images * 10, measure_layouts(geometry, args.images, args.repeats, args.seed))
        if rank == 0:
            print("\n".join(lines), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
