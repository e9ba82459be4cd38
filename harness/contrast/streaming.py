"""Eq. 4's core, streamed over chunks of keys: shared by the region, in-batch, pixel and sharded losses.

Eq. 4 reads the keys a chunk at a time (an online softmax over the negatives),
so its extra memory grows with queries x chunk, never with queries x bank
entries, and a bf16/fp16 bank is cast to fp32 one chunk at a time. The forward
passes also build the gradient, so the backward recomputes nothing.

Every tensor has a shape fixed by the inputs' shapes: queries that are padding
(`query_valid` False) and keys that are empty slots are masked, never selected,
so the loss never waits for the host to learn how many there are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


def full_precision(device: torch.device) -> torch.autocast:
    """A context that switches autocast off, so sums and exponentials run in fp32."""
    return torch.autocast(device_type=device.type, enabled=False)


CHUNK_BUDGET_BYTES = 64 * 2**20
# On a GPU a chunk is a few kernel launches whatever its size: a larger budget means fewer launches
# (ADE20K's bank: 13 chunks instead of 196) for memory a GPU step does not miss.
CUDA_CHUNK_BUDGET_BYTES = 2**30
# fp32 [M,S] tensors alive at once per chunk (scores, mask temporaries) and fp32
# [S,C] copies of the chunk's keys (cast, normalised, its gradient in-batch).
SCORE_COPIES = 2
KEY_COPIES = 3


def chunk_bytes(num_queries: int, dim: int, chunk_size: int) -> int:
    """Working memory of one chunk: its fp32 scores [M,S] and key copies [S,C]."""
    return torch.float32.itemsize * chunk_size * (SCORE_COPIES * num_queries + KEY_COPIES * dim)


def auto_chunk_size(num_queries: int, dim: int, budget_bytes: int = CHUNK_BUDGET_BYTES) -> int:
    """The most keys per chunk whose working memory fits in `budget_bytes` (at least 1)."""
    return max(1, budget_bytes // chunk_bytes(num_queries, dim, 1))


def resolve_chunk_size(chunk_size: int | None, num_queries: int, dim: int, device: torch.device) -> int:
    """The recipe's chunk size, or auto_chunk_size's for the device's budget when it names none."""
    if chunk_size is not None:
        return chunk_size
    return auto_chunk_size(num_queries, dim, CUDA_CHUNK_BUDGET_BYTES if device.type == "cuda" else CHUNK_BUDGET_BYTES)


def scale_queries(queries: Tensor, tau: float) -> Tensor:
    """Queries [M,C] as fp32 unit vectors divided by the temperature: q / (|q| tau)."""
    return F.normalize(queries.float(), dim=1) / tau


@dataclass(frozen=True)
class KeyLayout:
    """Who is whose positive or negative, and how the key slots are cut into chunks."""

    query_labels: Tensor  # [M]
    query_valid: Tensor  # [M]: False for padding queries, which then count for nothing
    key_labels: Tensor  # [K]
    key_valid: Tensor  # [K]
    query_slots: Tensor | None  # [M]: each query's own key slot, never one of its keys
    chunk_size: int
    keys_unit: bool = False  # fp32 keys stored L2-normalised (a bank's) are read as they are
    # Keys that are class-major queues of queue_size slots (key k of class k // queue_size, a region
    # bank's layout): pass 2 then reads only each query's own queue instead of every key.
    queue_size: int | None = None

    def __post_init__(self) -> None:
        """Reject chunk sizes that would skip keys, and queues for queries that are keys themselves."""
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {self.chunk_size}")
        if self.queue_size is not None and self.query_slots is not None:
            raise ValueError("class-major queues hold no query's own slot")

    def spans(self) -> range:
        """The first slot of each chunk; a chunk ends chunk_size slots later or at the end."""
        return range(0, len(self.key_labels), self.chunk_size)

    def read(self, keys: Tensor, start: int) -> Tensor:
        """The chunk at `start` as fp32 unit keys [S,C]; the bank itself is never cast whole."""
        return self.unit(keys[start : start + self.chunk_size])

    def unit(self, keys: Tensor) -> Tensor:
        """Stored keys [...,C] as fp32 unit vectors."""
        if self.keys_unit and keys.dtype == torch.float32:
            return keys  # unit-length when stored, and rounding cannot have moved them
        return F.normalize(keys.float(), dim=-1)

    def queue_chunks(self, keys: Tensor) -> Iterator[tuple[int, Tensor]]:
        """Queue layouts: (first class, fp32 unit keys [nK,C]) of each chunk of whole class queues."""
        size = self.queue_size
        per = max(1, self.chunk_size // size)
        for first in range(0, len(keys) // size, per):
            yield first, self.unit(keys[first * size : (first + per) * size])

    def masks(self, start: int) -> tuple[Tensor, Tensor]:
        """Whether each key of the chunk at `start` has each query's class, and is usable for it: [M,S]."""
        stop = start + self.chunk_size
        usable = self.key_valid[None, start:stop] & self.query_valid[:, None]  # [M,S]
        if self.query_slots is not None:
            slots = torch.arange(start, min(stop, len(self.key_labels)), device=usable.device)
            usable = usable & (slots[None, :] != self.query_slots[:, None])
        return self.query_labels[:, None] == self.key_labels[None, start:stop], usable


class OnlineSoftmax:
    """Log-sum-exp of each query's negative scores and their softmax-weighted mean key, chunk by chunk."""

    def __init__(self, queries: Tensor, with_mean: bool) -> None:
        self.peak = queries.new_full(queries.shape[:1], float("-inf"))  # [M] running max
        self.total = queries.new_zeros(queries.shape[:1])  # [M] sum of exp(score - peak)
        self.weighted = torch.zeros_like(queries) if with_mean else None  # [M,C] sum of exp(score - peak) k

    def add(self, scores: Tensor, keys: Tensor) -> None:
        """Fold in scores [M,S] (-inf where not a negative) of keys [S,C]; overwrites `scores`."""
        peak = torch.maximum(self.peak, scores.amax(1))
        # Shift by the running max (0 while a query has seen no negative): no overflow at small tau.
        shift = torch.where(peak.isfinite(), peak, 0.0)
        rescale = (self.peak - shift).exp()
        weights = scores.sub_(shift[:, None]).exp_()
        self.total = self.total * rescale + weights.sum(1)
        if self.weighted is not None:
            self.weighted = torch.addmm(self.weighted * rescale[:, None], weights, keys)
        self.peak = peak

    def result(self) -> tuple[Tensor, Tensor | None]:
        """Log-sum-exp [M] (-inf without negatives) and the mean negative key [M,C] (0 without)."""
        lse = self.peak + self.total.log()
        if self.weighted is None:
            return lse, None
        return lse, self.weighted / self.total.clamp_min(torch.finfo(self.total.dtype).tiny)[:, None]


class NegativeSums(NamedTuple):
    """What pass 1 leaves for pass 2."""

    lse: Tensor  # [M] log-sum-exp of each query's negative scores (-inf without negatives)
    mean: Tensor | None  # [M,C] their softmax-weighted mean key (with_mean only)
    own_scores: Tensor | None  # [M,K] queue layouts: each query's scores against its own class's queue


def negative_pass(queries: Tensor, keys: Tensor, layout: KeyLayout, with_mean: bool) -> NegativeSums:
    """Pass 1 over every chunk: see OnlineSoftmax.result."""
    if layout.queue_size is not None:
        return _queue_negative_pass(queries, keys, layout, with_mean)
    softmax = OnlineSoftmax(queries, with_mean)
    for start in layout.spans():
        chunk = layout.read(keys, start)
        same, usable = layout.masks(start)
        softmax.add((queries @ chunk.T).masked_fill_(same | ~usable, float("-inf")), chunk)  # [M,S]
    return NegativeSums(*softmax.result(), None)


def _own_block(layout: KeyLayout, first: int, count: int) -> tuple[Tensor, Tensor]:
    """Each query's own class as an index [M,1,1] into a chunk of `count` queues from class `first`, and whether
    the chunk holds it [M]."""
    offset = layout.query_labels - first
    inside = (offset >= 0) & (offset < count)
    return offset.clamp(0, count - 1)[:, None, None], inside


def _queue_negative_pass(queries: Tensor, keys: Tensor, layout: KeyLayout, with_mean: bool) -> NegativeSums:
    """Pass 1 on class-major queues: whole queues per chunk, so a query's own class is one block, masked by
    broadcasting, and its scores there are kept for pass 2 (which then need not recompute them)."""
    size, num = layout.queue_size, len(queries)
    softmax = OnlineSoftmax(queries, with_mean)
    own_scores = queries.new_zeros(num, size)
    if size == 0:
        return NegativeSums(*softmax.result(), own_scores)
    valid = layout.key_valid.view(-1, size)  # [NK] -> [N,K]
    for first, chunk in layout.queue_chunks(keys):
        scores = (queries @ chunk.T).view(num, -1, size)  # [M,nK] -> [M,n,K]
        block, inside = _own_block(layout, first, scores.shape[1])
        mine = scores.gather(1, block.expand(num, 1, size))[:, 0]  # [M,K]
        own_scores = torch.where(inside[:, None], mine, own_scores)
        # The own block becomes -inf (positives are no negatives); a query whose class lies in another
        # chunk gets its gathered scores written back where they came from.
        scores.scatter_(1, block.expand(num, 1, size), torch.where(inside[:, None, None], float("-inf"), mine[:, None]))
        scores.masked_fill_(~valid[None, first : first + scores.shape[1]], float("-inf"))  # empty slots
        softmax.add(scores.view(num, -1), chunk)  # [M,n,K] -> [M,nK]
    return NegativeSums(*softmax.result(), own_scores)


class PositiveSums(NamedTuple):
    """Per-query sums over its positives p, with g_p = L - s_p (L: log-sum-exp of its negatives)."""

    loss: Tensor  # [M] sum of softplus(g_p) = -log(e^s_p / (e^s_p + sum_n e^s_n))
    pull: Tensor  # [M] sum of sigmoid(g_p) = d loss / d L
    pull_keys: Tensor  # [M,C] sum of sigmoid(g_p) k_p = -d loss / d query, positive part
    count: Tensor  # [M] number of positives


def add_positives(
    sums: PositiveSums, gap: Tensor, positive: Tensor, key_sum: Callable[[Tensor], Tensor]
) -> PositiveSums:
    """`sums` plus the positives (marked by `positive` [M,S]) with gaps L - s [M,S]; key_sum: weights [M,S] -> [M,C]."""
    # softplus(L - s) = -log(e^s / (e^s + e^L)): no exp overflow at small tau, and
    # exactly 0 when a query has no negatives (L = -inf).
    pull = torch.where(positive, gap.sigmoid(), 0.0)
    return PositiveSums(
        sums.loss + torch.where(positive, F.softplus(gap), 0.0).sum(1),
        sums.pull + pull.sum(1),
        sums.pull_keys + key_sum(pull),
        sums.count + positive.sum(1),
    )


def positive_pass(queries: Tensor, keys: Tensor, layout: KeyLayout, negatives: NegativeSums) -> PositiveSums:
    """Pass 2, all queries at once: masks choose the positives, so nothing waits on the host."""
    count = queries.new_zeros(queries.shape[:1])
    sums = PositiveSums(torch.zeros_like(count), torch.zeros_like(count), torch.zeros_like(queries), count)
    lse = negatives.lse
    if layout.queue_size is not None:
        return _queue_positive_pass(sums, queries, keys, layout, negatives)
    for start in layout.spans():
        same, usable = layout.masks(start)
        chunk = layout.read(keys, start)  # [S,C]
        sums = add_positives(sums, lse[:, None] - queries @ chunk.T, same & usable, lambda pull: pull @ chunk)
    return sums


def _queue_positive_pass(
    sums: PositiveSums, queries: Tensor, keys: Tensor, layout: KeyLayout, negatives: NegativeSums
) -> PositiveSums:
    """Pass 2 on class-major queues: the positives are each query's own queue, scored in pass 1.

    Only the positives' pull on their keys needs the keys again: it is spread over the query's own
    block of each chunk and summed with one matrix product per chunk.
    """
    size, num = layout.queue_size, len(queries)
    if size == 0:
        return sums
    valid = layout.key_valid.view(-1, size)  # [NK] -> [N,K]
    positive = valid[layout.query_labels] & layout.query_valid[:, None]  # [M,K]

    def key_sum(pull: Tensor) -> Tensor:
        """Sum over each query's own queue of pull [M,K] times its keys: [M,C]."""
        total = torch.zeros_like(queries)
        for first, chunk in layout.queue_chunks(keys):
            block, inside = _own_block(layout, first, len(chunk) // size)
            spread = queries.new_zeros(num, len(chunk) // size, size)  # [M,n,K]
            spread.scatter_(1, block.expand(num, 1, size), torch.where(inside[:, None], pull, 0.0)[:, None])
            total = torch.addmm(total, spread.view(num, -1), chunk)  # [M,n,K] -> [M,nK]
        return total

    return add_positives(sums, negatives.lse[:, None] - negatives.own_scores, positive, key_sum)


def query_weights(count: Tensor) -> Tensor:
    """Each query's weight in Eq. 4's double mean [M]: 1 / (its positives x queries with any), else 0."""
    has_positive = count > 0
    return has_positive / (count.clamp_min(1) * has_positive.sum().clamp_min(1))


def query_gradient(weight: Tensor, pull: Tensor, negative_mean: Tensor, pull_keys: Tensor) -> Tensor:
    """d loss / d scaled queries [M,C]: each positive term pulls towards its key, pushes to the negatives' mean."""
    return weight[:, None] * (pull[:, None] * negative_mean - pull_keys)


def score_gradient(
    queries: Tensor, chunk: Tensor, layout: KeyLayout, start: int, lse: Tensor, pull: Tensor
) -> Tensor:
    """d (sum over queries of their loss) / d scores [M,S] for one chunk of unit keys [S,C]."""
    same, usable = layout.masks(start)
    gap = lse[:, None] - queries @ chunk.T  # [M,S]
    # A negative's score moves L by its softmax share e^(s - L), and L enters every positive's
    # term with sigmoid(L - s) (summed in `pull`); a positive's own score enters with -sigmoid(L - s).
    towards_negatives = torch.where(~same & usable, pull[:, None] * (-gap).exp(), 0.0)
    return towards_negatives - torch.where(same & usable, gap.sigmoid(), 0.0)


def key_gradient(
    queries: Tensor, keys: Tensor, layout: KeyLayout, lse: Tensor, weight: Tensor, pull: Tensor
) -> Tensor:
    """Pass 3, only when the keys carry a graph (in-batch contrast): d loss / d keys [K,C]."""
    grad = torch.zeros_like(keys)
    for start in layout.spans():
        stored = keys[start : start + layout.chunk_size].detach().requires_grad_(True)
        with torch.enable_grad():
            chunk = F.normalize(stored.float(), dim=1)  # keys with a graph are centers, never stored unit-length
        d_scores = weight[:, None] * score_gradient(queries, chunk.detach(), layout, start, lse, pull)
        # The normalisation's own backward, on this chunk only.
        grad[start : start + layout.chunk_size] = torch.autograd.grad(chunk, stored, d_scores.T @ queries)[0]
    return grad


class StreamedInfoNCE(torch.autograd.Function):
    """Eq. 4 of scaled unit queries [M,C] against stored keys [K,C], never holding an [M,K] tensor.

    The forward passes already accumulate the gradient (an online softmax gives the
    negatives' share, pass 2 the positives'), so the backward only scales it:
    nothing is recomputed, and only [M,C] (and in-batch [K,C]) tensors are saved.
    """

    @staticmethod
    def forward(ctx, queries: Tensor, keys: Tensor, layout: KeyLayout, grad_enabled: bool) -> Tensor:
        """The loss; also d loss / d inputs when grad_enabled (autograd runs forward in no-grad mode)."""
        query_grad_needed, key_grad_needed = (grad_enabled and needed for needed in ctx.needs_input_grad[:2])
        negatives = negative_pass(queries, keys, layout, query_grad_needed)
        sums = positive_pass(queries, keys, layout, negatives)
        weight = query_weights(sums.count)
        query_grad = key_grad = None
        if query_grad_needed:
            query_grad = query_gradient(weight, sums.pull, negatives.mean, sums.pull_keys)
        if key_grad_needed:
            key_grad = key_gradient(queries, keys, layout, negatives.lse, weight, sums.pull)
        ctx.save_for_backward(query_grad, key_grad)
        return (weight * sums.loss).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        """The saved gradients times the incoming one (the loss is a scalar)."""
        query_grad, key_grad = ctx.saved_tensors
        return (
            None if query_grad is None else grad_loss * query_grad,
            None if key_grad is None else grad_loss * key_grad,
            None,
            None,
        )


def info_nce(
    queries: Tensor,
    query_labels: Tensor,
    keys: Tensor,
    key_labels: Tensor,
    key_valid: Tensor,
    tau: float,
    chunk_size: int | None,
    query_valid: Tensor | None = None,
    query_slots: Tensor | None = None,
    keys_unit: bool = False,
    queue_size: int | None = None,
) -> Tensor:
    """Eq. 4 averaged over the valid queries [M,C] with a positive, for keys [K,C] of any float dtype.

    Peak extra memory is O(M x chunk_size); chunk_size None picks it with auto_chunk_size.
    query_valid [M] (None: all) masks padding queries; keys_unit says fp32 keys are unit-length.
    """
    with full_precision(queries.device):
        size = resolve_chunk_size(chunk_size, len(queries), keys.shape[1], keys.device)
        if query_valid is None:
            query_valid = torch.ones_like(query_labels, dtype=torch.bool)
        layout = KeyLayout(query_labels, query_valid, key_labels, key_valid, query_slots, size, keys_unit, queue_size)
        return StreamedInfoNCE.apply(scale_queries(queries, tau), keys, layout, torch.is_grad_enabled())
