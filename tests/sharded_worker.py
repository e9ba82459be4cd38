"""Started by tests/test_sharded.py under torchrun: each rank runs Eq. 4 against a replicated and a sharded bank.

For each bank geometry, STEPS steps of random per-rank region centers (uneven query
counts; at step 2 rank 1 has none): the replicated and the sharded loss and their
gradients w.r.t. this rank's queries, then both banks take the gathered centers.
Then one step through a DDP-wrapped linear layer, so the model gradients after
DDP's averaging can be compared. Writes <out>/rank<i>.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from harness.contrast import (
    RegionBank,
    ShardedRegionBank,
    region_contrast_loss,
    region_entries,
    sharded_region_contrast_loss,
)

NUM_CLASSES, DIM, BATCH, STEPS, TAU = 5, 8, 3, 5, 0.1
# (slots per class, storage dtype): one that halves evenly, one with a remainder in bf16.
GEOMETRIES = [(6, torch.float32), (7, torch.bfloat16)]
# The replicated loss reads 3 slots a chunk; the sharded one varies, auto included.
SHARDED_CHUNKS = [2, None, 1, 5, 3]


def gather(tensor: Tensor) -> Tensor:
    """Every rank's equally shaped `tensor`, concatenated in rank order."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return torch.cat(parts)


def random_centers(rank: int, step: int) -> tuple[Tensor, Tensor]:
    """Centers [B,N,C] and valid [B,N] for this rank and step; rank 1 has none at step 2."""
    generator = torch.Generator().manual_seed(100 * rank + step)
    centers = torch.randn(BATCH, NUM_CLASSES, DIM, generator=generator)
    valid = torch.rand(BATCH, NUM_CLASSES, generator=generator) < 0.3 + 0.2 * rank
    return centers, valid & ((rank, step) != (1, 2))


def loss_and_grad(loss_fn, queries: Tensor, present: Tensor) -> tuple[float, Tensor]:
    """A loss of fresh leaf copies of `queries`, and its gradient w.r.t. the `present` ones."""
    leaf = queries.clone().requires_grad_(True)
    loss = loss_fn(leaf)
    loss.backward()
    return loss.item(), leaf.grad[present]


def run_geometry(rank: int, size: int, dtype: torch.dtype) -> tuple[dict, RegionBank, ShardedRegionBank]:
    """STEPS steps against both layouts of one bank geometry: what each gave, and the two banks."""
    replicated = RegionBank(NUM_CLASSES, size, DIM, dtype)
    sharded = ShardedRegionBank(NUM_CLASSES, size, DIM, dtype, rank=rank, world_size=dist.get_world_size())
    records = []
    for step, chunk in zip(range(STEPS), SHARDED_CHUNKS):
        centers, valid = random_centers(rank, step)
        queries, labels, present = region_entries(centers, valid)  # every rank holds B x N query rows
        records.append({
            "queries": int(present.sum()),
            "replicated": loss_and_grad(
                lambda q: region_contrast_loss(
                    q, labels, replicated.keys, replicated.valid, TAU, chunk_size=3, query_valid=present
                ), queries, present,
            ),
            "sharded": loss_and_grad(
                lambda q: sharded_region_contrast_loss(q, labels, sharded, TAU, chunk, query_valid=present),
                queries, present,
            ),
        })
        all_centers, all_valid = gather(centers), gather(valid)
        for bank in (replicated, sharded):
            bank.push(*region_entries(all_centers, all_valid))
    summary = {"size": size, "dtype": dtype, "steps": records, "replicated": replicated.state_dict(), "sharded": sharded.state_dict(),
               "sharded_nbytes": sharded.nbytes(), "replicated_nbytes": replicated.nbytes()}
    return summary, replicated, sharded


def ddp_gradients(rank: int, replicated: RegionBank, sharded: ShardedRegionBank) -> dict[str, Tensor]:
    """Weight gradients of a DDP linear layer that makes this rank's queries, under either layout's loss."""
    torch.manual_seed(0)  # the same layer on every rank
    model = DistributedDataParallel(torch.nn.Linear(4, DIM))
    inputs = torch.randn(8, 4, generator=torch.Generator().manual_seed(rank))
    labels = torch.arange(8) % NUM_CLASSES
    present = torch.arange(8) < 7 + rank  # 7 queries on rank 0, 8 on rank 1
    losses = {
        "replicated": lambda q: region_contrast_loss(q, labels, replicated.keys, replicated.valid, TAU, query_valid=present),
        "sharded": lambda q: sharded_region_contrast_loss(q, labels, sharded, TAU, query_valid=present),
    }
    grads = {}
    for name, loss_fn in losses.items():
        model.zero_grad()
        loss_fn(model(inputs)).backward()
        grads[name] = model.module.weight.grad.clone()
    return grads


def main(out_dir: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    runs = [run_geometry(rank, size, dtype) for size, dtype in GEOMETRIES]
    _, replicated, sharded = runs[0]
    results = {"rank": rank, "geometries": [summary for summary, _, _ in runs],
               "ddp": ddp_gradients(rank, replicated, sharded)}
    torch.save(results, out_dir / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
