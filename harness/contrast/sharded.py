"""A region bank sharded across ranks, and Eq. 4 against it, exactly.

The bank: each rank keeps 1/world_size of every class's queue. Global slot s of
a class (its slot in the replicated RegionBank fed the same pushes) lives on
rank s % world_size at local slot s // world_size. Interleaving keeps the ranks'
fill levels within one entry of each other while the queues fill, and each
rank's part is itself a FIFO (a ClassQueues of len(range(rank, K, world_size))
slots), so K need not divide by the world size. The union over ranks is, slot
for slot, the replicated bank.

The loss: every rank sees the queries of all ranks, streams them against its
own shard with streaming.py's chunked passes, and the per-query partial sums are
combined across ranks: first the negatives' log-sum-exp, then the positives'
terms, their counts and the gradient sums.

This is the one module outside the engine that uses torch.distributed: Eq. 4's
log-sum-exp runs over every negative of the bank, so the partial sums of all
shards must be combined inside the loss's autograd Function, where the
engine's Accelerate gathers (between steps, outside the loss) cannot reach.

Which loss, which gradient: in the replicated layout rank r's loss is the mean
over its own queries against the whole bank, and DDP averages the ranks'
parameter gradients. sharded_region_contrast_loss returns that same number on
each rank and the same gradient for its own queries, so after DDP's averaging
the model receives the replicated layout's gradients. Like streaming.py's
streamed core, the gradient is built in the forward: the backward runs no
collective, so it can never interleave with DDP's own gradient all-reduce.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from harness.contrast.banks import (
    POINTER_BYTES,
    ClassQueues,
    PushOrder,
    region_bank_bytes,
)
from harness.contrast.streaming import (
    KeyLayout,
    full_precision,
    negative_pass,
    positive_pass,
    query_gradient,
    query_weights,
    resolve_chunk_size,
    scale_queries,
)

Group = dist.ProcessGroup | None


# ---------------------------------------------------------------------------
# The bank
# ---------------------------------------------------------------------------


def shard_size(size: int, rank: int, world_size: int) -> int:
    """Slots per class on `rank`: the global slots rank, rank + world_size, ... below `size`."""
    return len(range(rank, size, world_size))


def sharded_bank_bytes(
    num_classes: int, size: int, dim: int, rank: int, world_size: int, dtype: torch.dtype = torch.float32
) -> int:
    """One rank's storage: its queues, laid out like a region bank, and the global write pointers."""
    local = region_bank_bytes(num_classes, shard_size(size, rank, world_size), dim, dtype)
    return local + num_classes * POINTER_BYTES


class ShardedRegionBank(nn.Module):
    """Rank `rank`'s share of a RegionBank of `size` slots per class: the global slots s with s % world_size == rank."""

    replicated = False  # each rank checkpoints its own shard

    def __init__(
        self,
        num_classes: int,
        size: int,
        dim: int,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
        self.num_classes, self.size, self.dim = num_classes, size, dim
        self.rank, self.world_size = rank, world_size
        self.queues = ClassQueues(num_classes, shard_size(size, rank, world_size), dim, dtype)
        # The replicated bank's write pointer: which global slot each class fills next.
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def push(self, entries: Tensor, labels: Tensor, valid: Tensor | None = None) -> None:
        """Enqueue the gathered valid entries [M,C] of classes [M] (the same on every rank); keep this rank's slots."""
        if self.size == 0:
            return
        labels, valid, members, ordinals = PushOrder.of(labels, valid, self.num_classes, self.ptr.device)
        slots = (self.ptr[labels] + ordinals) % self.size
        # This rank's entries arrive at local slots 0, 1, ... shard_size - 1, 0, ...: its own FIFO.
        self.queues.push(entries, labels, valid & (slots % self.world_size == self.rank))
        self.ptr.add_(members.sum(0)).remainder_(self.size)

    def entries(self) -> tuple[Tensor, Tensor, Tensor]:
        """This rank's slots as keys [NK_r,C], class labels [NK_r] and valid [NK_r]."""
        return self.queues.entries()

    def fill(self) -> Tensor:
        """The fraction of this rank's slots holding a key."""
        return self.queues.fill()

    def agreement_state(self) -> dict[str, Tensor]:
        """Shards hold different slots by design; what must agree is where every rank writes next."""
        return {"ptr": self.ptr}

    def nbytes(self) -> int:
        """Bytes of this rank's storage; equals sharded_bank_bytes for the same geometry."""
        return self.queues.nbytes() + self.ptr.numel() * self.ptr.element_size()


# ---------------------------------------------------------------------------
# Collectives (a world of one needs none, and may have no process group)
# ---------------------------------------------------------------------------


def _rank_and_world(group: Group) -> tuple[int, int]:
    """This process's rank in `group` and the group's size; (0, 1) without a process group."""
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _all_gather(tensor: Tensor, group: Group) -> Tensor:
    """Every rank's `tensor`, stacked in rank order: [W,...]."""
    parts = [torch.empty_like(tensor) for _ in range(_rank_and_world(group)[1])]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.stack(parts)


def _gather_queries(queries: Tensor, labels: Tensor, valid: Tensor, group: Group) -> tuple[Tensor, Tensor, Tensor, slice]:
    """All ranks' queries [WM,C], labels [WM] and valid [WM] in rank order, and the rows that are this rank's.

    Every rank holds M query rows (padding masked by `valid`), so the gathers need no sizes first.
    """
    rank, world = _rank_and_world(group)
    if world == 1:
        return queries, labels, valid, slice(None)
    gathered = (_all_gather(part, group).flatten(0, 1) for part in (queries, labels, valid))  # [W,M,...] -> [WM,...]
    return *gathered, slice(rank * len(queries), (rank + 1) * len(queries))


def _all_reduce_sum(tensor: Tensor, group: Group) -> Tensor:
    """The element-wise sum of `tensor` over the ranks."""
    if _rank_and_world(group)[1] > 1:
        dist.all_reduce(tensor, group=group)
    return tensor


# ---------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------


def _global_lse(local_lse: Tensor, group: Group) -> Tensor:
    """Each query's log-sum-exp [Mg] over the negatives of all shards, from each shard's own [Mg]."""
    if _rank_and_world(group)[1] == 1:
        return local_lse
    return torch.logsumexp(_all_gather(local_lse, group), dim=0)  # [W,Mg] -> [Mg]; -inf without negatives


def _negative_share(local_lse: Tensor, lse: Tensor) -> Tensor:
    """This shard's fraction [Mg] of each query's softmax mass over the negatives (0 without any)."""
    # A query without negatives anywhere has lse = -inf; shift by 0 so that its share is 0, not nan.
    return (local_lse - torch.where(lse.isfinite(), lse, 0.0)).exp()


def _partial_sums(
    everyone: Tensor, everyone_labels: Tensor, everyone_valid: Tensor, bank: ShardedRegionBank,
    chunk_size: int | None, group: Group, with_mean: bool,
) -> Tensor:
    """This shard's sums for all ranks' queries, packed [Mg,2C+3]: see _ShardedInfoNCE.forward."""
    keys, key_labels, key_valid = bank.entries()
    size = resolve_chunk_size(chunk_size, len(everyone), bank.dim, keys.device)
    layout = KeyLayout(
        everyone_labels, everyone_valid, key_labels, key_valid, None, size, keys_unit=True, queue_size=bank.queues.size
    )
    local = negative_pass(everyone, keys, layout, with_mean)
    lse = _global_lse(local.lse, group)
    sums = positive_pass(everyone, keys, layout, local._replace(lse=lse))
    # The same layout on every rank, gradient or not, so that the all-reduce always matches.
    weighted_mean = torch.zeros_like(everyone)
    if local.mean is not None:
        weighted_mean = _negative_share(local.lse, lse)[:, None] * local.mean
    return torch.cat([weighted_mean, sums.pull_keys, torch.stack([sums.loss, sums.pull, sums.count], 1)], 1)


class _ShardedInfoNCE(torch.autograd.Function):
    """Eq. 4 of this rank's scaled unit queries [M,C] against every rank's shard of one bank.

    Summed over the shards, the packed partial sums give, per query, its negatives'
    softmax-weighted mean key and then streaming.py's PositiveSums (loss, pull,
    pull_keys, count), all taken with the global log-sum-exp; the forward builds the
    gradient for this rank's queries from them, and the backward only scales it.
    """

    @staticmethod
    def forward(
        ctx,
        queries: Tensor,
        query_labels: Tensor,
        query_valid: Tensor,
        bank: ShardedRegionBank,
        chunk_size: int | None,
        group: Group,
        grad_enabled: bool,
    ) -> Tensor:
        """This rank's loss; also d loss / d queries when grad_enabled (autograd runs forward in no-grad mode)."""
        with_mean = grad_enabled and ctx.needs_input_grad[0]
        everyone, everyone_labels, everyone_valid, mine = _gather_queries(queries, query_labels, query_valid, group)
        partial = _partial_sums(everyone, everyone_labels, everyone_valid, bank, chunk_size, group, with_mean)
        totals = _all_reduce_sum(partial, group)[mine]  # [M,2C+3]
        negative_mean, pull_keys, scalars = totals.split([bank.dim, bank.dim, 3], dim=1)
        loss, pull, count = scalars.unbind(1)
        weight = query_weights(count)
        query_grad = query_gradient(weight, pull, negative_mean, pull_keys) if with_mean else None
        ctx.save_for_backward(query_grad)
        return (weight * loss).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor | None, None, None, None, None, None, None]:
        """The saved gradient times the incoming one (the loss is a scalar)."""
        (query_grad,) = ctx.saved_tensors
        return None if query_grad is None else grad_loss * query_grad, None, None, None, None, None, None


def sharded_region_contrast_loss(
    queries: Tensor,
    query_labels: Tensor,
    bank: ShardedRegionBank,
    tau: float,
    chunk_size: int | None = None,
    group: Group = None,
    query_valid: Tensor | None = None,
) -> Tensor:
    """Eq. 4 for this rank's queries [M,C] of classes [M] against the whole sharded bank.

    Equal in value and gradient to region_contrast_loss on the replicated bank.
    Every rank of `group` (None: the default group) must call it at the same
    step, with its shard of the same bank and the same number M of query rows
    (query_valid [M] masks padding; None: all count). The shard is read
    chunk_size slots at a time (None: auto_chunk_size for all ranks' queries).
    """
    rank, world = _rank_and_world(group)
    if (bank.rank, bank.world_size) != (rank, world):
        raise ValueError(
            f"the bank is shard {bank.rank} of {bank.world_size}, but this process is rank {rank} of {world}"
        )
    if query_valid is None:
        query_valid = torch.ones_like(query_labels, dtype=torch.bool)
    with full_precision(queries.device):
        return _ShardedInfoNCE.apply(
            scale_queries(queries, tau), query_labels, query_valid, bank, chunk_size, group, torch.is_grad_enabled()
        )
