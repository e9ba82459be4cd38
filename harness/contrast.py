"""Region centers, memory banks and contrastive losses: pure tensor code.

Nothing here talks to torch.distributed. The engine gathers region centers (or
features) across ranks and hands this module the gathered tensors, so every
rank pushes the same entries in the same order and holds bitwise-identical
banks.

Eq. 4 reads the keys a chunk at a time (an online softmax over the negatives),
so its extra memory grows with queries x chunk, never with queries x bank
entries, and a bf16/fp16 bank is cast to fp32 one chunk at a time.

Paper: Hu, Cui, Wang, "Region-aware Contrastive Learning for Semantic
Segmentation", ICCV 2021, Section 3 (Eq. 2-4). The pixel-level banks follow
ContrastiveSeg's design with its pointer bugs fixed, for comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

QuerySelection = slice | Tensor | None


def _full_precision(device: torch.device) -> torch.autocast:
    """A context that switches autocast off, so sums and exponentials run in fp32."""
    return torch.autocast(device_type=device.type, enabled=False)


# ---------------------------------------------------------------------------
# Region centers (Eq. 2 and Eq. 3)
# ---------------------------------------------------------------------------


def _members(index: Tensor, keep: Tensor, num_classes: int) -> Tensor:
    """Indicator [B,N,P] of pixel p having class n in `index` [B,P] (kept pixels only)."""
    classes = torch.arange(num_classes, device=index.device)
    return ((index[:, None, :] == classes[None, :, None]) & keep[:, None, :]).float()


def _direct_average(truth: Tensor, predicted: Tensor, confidence: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 2: every pixel predicted as class i, weight 1."""
    return predicted, predicted.sum(2)


def _ground_truth_average(truth: Tensor, predicted: Tensor, confidence: Tensor) -> tuple[Tensor, Tensor]:
    """EP + HP without weights: every ground-truth pixel of class i, weight 1."""
    return truth, truth.sum(2)


def _dynamic_sampling(truth: Tensor, predicted: Tensor, confidence: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 3: easy positives weigh 1 - c, hard positives 1; normalised by the ground-truth count."""
    easy = truth * predicted
    return truth - easy * confidence[:, None, :], truth.sum(2)


# Each maps (ground-truth members, predicted members [B,N,P], confidence [B,P]) to
# (pixel weights [B,N,P], denominators [B,N]).
CENTER_VARIANTS: dict[str, Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]] = {
    "average": _direct_average,
    "ep_hp": _ground_truth_average,
    "weighted": _dynamic_sampling,
}


def _weighted_centers(features: Tensor, weights: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image class centers [B,N,C] = sum_p w[n,p] F[:,p] / counts[n], and counts > 0."""
    flat = features.float().flatten(2)  # [B,C,H,W] -> [B,C,P]
    sums = torch.einsum("bnp,bcp->bnc", weights, flat)
    return sums / counts.clamp_min(1)[..., None], counts > 0


def region_centers(
    features: Tensor,
    logits: Tensor,
    labels: Tensor,
    num_classes: int,
    variant: str,
    ignore_index: int = 255,
) -> tuple[Tensor, Tensor]:
    """Region centers [B,N,C] (fp32, not normalised) and valid [B,N], one per image and class."""
    if variant not in CENTER_VARIANTS:
        raise KeyError(f"unknown region-center variant {variant!r}; choose from {sorted(CENTER_VARIANTS)}")
    with _full_precision(features.device):
        truth_labels = labels.flatten(1)  # [B,H,W] -> [B,P]
        keep = truth_labels != ignore_index
        # The prediction and its confidence only choose and weigh pixels, like a sampler;
        # the paper gives them no gradient path, so the logits are detached.
        probs = logits.detach().float().flatten(2).softmax(1)  # [B,N,H,W] -> [B,N,P]
        confidence, predicted_labels = probs.max(1)
        truth = _members(truth_labels, keep, num_classes)
        predicted = _members(predicted_labels, keep, num_classes)
        weights, counts = CENTER_VARIANTS[variant](truth, predicted, confidence)
        return _weighted_centers(features, weights, counts)


def flatten_regions(centers: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """The valid centers [M,C] and their class labels [M], image-major then class order."""
    return centers[valid], valid.nonzero()[:, 1]


# ---------------------------------------------------------------------------
# The contrastive core (Eq. 4), streamed over chunks of keys; shared by region,
# in-batch and pixel losses
# ---------------------------------------------------------------------------

CHUNK_BUDGET_BYTES = 64 * 2**20
# fp32 [M,S] tensors alive at once per chunk (scores, mask temporaries) and fp32
# [S,C] copies of the chunk's keys (cast, normalised, its gradient in-batch).
_SCORE_COPIES = 2
_KEY_COPIES = 3


def chunk_bytes(num_queries: int, dim: int, chunk_size: int) -> int:
    """Working memory of one chunk: its fp32 scores [M,S] and key copies [S,C]."""
    return torch.float32.itemsize * chunk_size * (_SCORE_COPIES * num_queries + _KEY_COPIES * dim)


def auto_chunk_size(num_queries: int, dim: int, budget_bytes: int = CHUNK_BUDGET_BYTES) -> int:
    """The most keys per chunk whose working memory fits in `budget_bytes` (at least 1)."""
    return max(1, budget_bytes // chunk_bytes(num_queries, dim, 1))


@dataclass(frozen=True)
class _KeyLayout:
    """Who is whose positive or negative, and how the key slots are cut into chunks."""

    query_labels: Tensor  # [M]
    key_labels: Tensor  # [K]
    key_valid: Tensor  # [K]
    query_slots: Tensor | None  # [M]: each query's own key slot, never one of its keys
    chunk_size: int

    def __post_init__(self) -> None:
        """Reject chunk sizes that would skip keys."""
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {self.chunk_size}")

    def spans(self) -> range:
        """The first slot of each chunk; a chunk ends chunk_size slots later or at the end."""
        return range(0, len(self.key_labels), self.chunk_size)

    def masks(self, rows: Tensor | slice, start: int) -> tuple[Tensor, Tensor]:
        """Whether each key of the chunk at `start` has the class of query `rows`, and is usable: [R,S]."""
        stop = start + self.chunk_size
        usable = self.key_valid[None, start:stop]  # [1,S]
        if self.query_slots is not None:
            slots = torch.arange(start, min(stop, len(self.key_labels)), device=usable.device)
            usable = usable & (slots[None, :] != self.query_slots[rows, None])
        return self.query_labels[rows, None] == self.key_labels[None, start:stop], usable

    def rows_with_positives(self, start: int) -> Tensor:
        """Indices [R] of the queries whose class has a valid key in the chunk at `start`."""
        chunk = slice(start, start + self.chunk_size)
        return torch.isin(self.query_labels, self.key_labels[chunk][self.key_valid[chunk]]).nonzero()[:, 0]


def _unit_keys(keys: Tensor) -> Tensor:
    """One chunk of stored keys [S,C], in fp32 and L2-normalised; the bank itself is never cast whole."""
    return F.normalize(keys.float(), dim=1)


class _OnlineSoftmax:
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


def _negative_pass(
    queries: Tensor, keys: Tensor, layout: _KeyLayout, with_mean: bool
) -> tuple[Tensor, Tensor | None]:
    """Pass 1 over every chunk: see _OnlineSoftmax.result."""
    softmax = _OnlineSoftmax(queries, with_mean)
    for start in layout.spans():
        chunk = _unit_keys(keys[start : start + layout.chunk_size])
        same, usable = layout.masks(slice(None), start)
        softmax.add((queries @ chunk.T).masked_fill_(same | ~usable, float("-inf")), chunk)  # [M,S]
    return softmax.result()


class _PositiveSums(NamedTuple):
    """Per-query sums over its positives p, with g_p = L - s_p (L: log-sum-exp of its negatives)."""

    loss: Tensor  # [M] sum of softplus(g_p) = -log(e^s_p / (e^s_p + sum_n e^s_n))
    pull: Tensor  # [M] sum of sigmoid(g_p) = d loss / d L
    pull_keys: Tensor  # [M,C] sum of sigmoid(g_p) k_p = -d loss / d query, positive part
    count: Tensor  # [M] number of positives


def _add_positives(
    sums: _PositiveSums, queries: Tensor, chunk: Tensor, rows: Tensor, lse: Tensor, positive: Tensor
) -> None:
    """Add the positives of queries `rows` among one chunk of unit keys [S,C] to `sums`."""
    gap = lse[rows, None] - queries[rows] @ chunk.T  # [R,S]
    # softplus(L - s) = -log(e^s / (e^s + e^L)): no exp overflow at small tau, and
    # exactly 0 when a query has no negatives (L = -inf).
    sums.loss.index_add_(0, rows, torch.where(positive, F.softplus(gap), 0.0).sum(1))
    pull = torch.where(positive, gap.sigmoid(), 0.0)
    sums.pull.index_add_(0, rows, pull.sum(1))
    sums.pull_keys.index_add_(0, rows, pull @ chunk)
    sums.count.index_add_(0, rows, positive.sum(1).to(sums.count.dtype))


def _positive_pass(queries: Tensor, keys: Tensor, layout: _KeyLayout, lse: Tensor) -> _PositiveSums:
    """Pass 2, only over the chunks and queries that have positives there."""
    count = queries.new_zeros(queries.shape[:1])
    sums = _PositiveSums(torch.zeros_like(count), torch.zeros_like(count), torch.zeros_like(queries), count)
    for start in layout.spans():
        rows = layout.rows_with_positives(start)
        if len(rows):
            same, usable = layout.masks(rows, start)
            chunk = _unit_keys(keys[start : start + layout.chunk_size])
            _add_positives(sums, queries, chunk, rows, lse, same & usable)
    return sums


def _query_weights(count: Tensor) -> Tensor:
    """Each query's weight in Eq. 4's double mean [M]: 1 / (its positives x queries with any), else 0."""
    has_positive = count > 0
    return has_positive / (count.clamp_min(1) * has_positive.sum().clamp_min(1))


def _score_gradient(
    queries: Tensor, chunk: Tensor, layout: _KeyLayout, start: int, lse: Tensor, pull: Tensor
) -> Tensor:
    """d (sum over queries of their loss) / d scores [M,S] for one chunk of unit keys [S,C]."""
    same, usable = layout.masks(slice(None), start)
    gap = lse[:, None] - queries @ chunk.T  # [M,S]
    # A negative's score moves L by its softmax share e^(s - L), and L enters every positive's
    # term with sigmoid(L - s) (summed in `pull`); a positive's own score enters with -sigmoid(L - s).
    towards_negatives = torch.where(~same & usable, pull[:, None] * (-gap).exp(), 0.0)
    return towards_negatives - torch.where(same & usable, gap.sigmoid(), 0.0)


def _key_gradient(
    queries: Tensor, keys: Tensor, layout: _KeyLayout, lse: Tensor, weight: Tensor, pull: Tensor
) -> Tensor:
    """Pass 3, only when the keys carry a graph (in-batch contrast): d loss / d keys [K,C]."""
    grad = torch.zeros_like(keys)
    for start in layout.spans():
        stored = keys[start : start + layout.chunk_size].detach().requires_grad_(True)
        with torch.enable_grad():
            chunk = _unit_keys(stored)
        d_scores = weight[:, None] * _score_gradient(queries, chunk.detach(), layout, start, lse, pull)
        # The normalisation's own backward, on this chunk only.
        grad[start : start + layout.chunk_size] = torch.autograd.grad(chunk, stored, d_scores.T @ queries)[0]
    return grad


class _StreamedInfoNCE(torch.autograd.Function):
    """Eq. 4 of scaled unit queries [M,C] against stored keys [K,C], never holding an [M,K] tensor.

    The forward passes already accumulate the gradient (an online softmax gives the
    negatives' share, pass 2 the positives'), so the backward only scales it:
    nothing is recomputed, and only [M,C] (and in-batch [K,C]) tensors are saved.
    """

    @staticmethod
    def forward(ctx, queries: Tensor, keys: Tensor, layout: _KeyLayout, grad_enabled: bool) -> Tensor:
        """The loss; also d loss / d inputs when grad_enabled (autograd runs forward in no-grad mode)."""
        query_grad_needed, key_grad_needed = (grad_enabled and needed for needed in ctx.needs_input_grad[:2])
        lse, negative_mean = _negative_pass(queries, keys, layout, query_grad_needed)
        sums = _positive_pass(queries, keys, layout, lse)
        weight = _query_weights(sums.count)
        query_grad = key_grad = None
        if query_grad_needed:
            query_grad = weight[:, None] * (sums.pull[:, None] * negative_mean - sums.pull_keys)
        if key_grad_needed:
            key_grad = _key_gradient(queries, keys, layout, lse, weight, sums.pull)
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


def _info_nce(
    queries: Tensor,
    query_labels: Tensor,
    keys: Tensor,
    key_labels: Tensor,
    key_valid: Tensor,
    tau: float,
    chunk_size: int | None,
    query_slots: Tensor | None = None,
) -> Tensor:
    """Eq. 4 averaged over queries with a positive, for keys [K,C] of any float dtype with valid [K].

    Peak extra memory is O(M x chunk_size); chunk_size None picks it with auto_chunk_size.
    """
    with _full_precision(queries.device):
        scaled = F.normalize(queries.float(), dim=1) / tau
        size = auto_chunk_size(len(queries), keys.shape[1]) if chunk_size is None else chunk_size
        layout = _KeyLayout(query_labels, key_labels, key_valid, query_slots, size)
        return _StreamedInfoNCE.apply(scaled, keys, layout, torch.is_grad_enabled())


def region_contrast_loss(
    queries: Tensor,
    query_labels: Tensor,
    bank_keys: Tensor,
    bank_valid: Tensor,
    tau: float,
    chunk_size: int | None = None,
) -> Tensor:
    """Eq. 4 for queries [M,C] of classes [M] against a per-class bank [N,K,C] with valid [N,K].

    The bank is read chunk_size slots at a time (None: auto_chunk_size), in its
    storage dtype; the result does not depend on the chunk size.
    """
    num_classes, size, dim = bank_keys.shape
    keys = bank_keys.reshape(num_classes * size, dim)  # [N,K,C] -> [NK,C]
    key_labels = torch.arange(num_classes, device=bank_keys.device).repeat_interleave(size)
    valid = bank_valid.reshape(num_classes * size)  # [N,K] -> [NK]
    return _info_nce(queries, query_labels, keys, key_labels, valid, tau, chunk_size)


def in_batch_contrast_loss(
    centers: Tensor,
    valid: Tensor,
    tau: float,
    query_images: QuerySelection = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Eq. 4 with the batch's own centers [B,N,C] as keys (bank size 0), each query excluded.

    `centers` is the gathered global batch; `query_images` (slice, index or bool
    tensor; None = all) picks the images whose centers are this rank's queries.
    Gradients flow through every entry of `centers` that carries a graph, both as
    a query and as a key; the engine decides which by detaching the rest.
    `chunk_size` as in region_contrast_loss.
    """
    batch, num_classes, dim = centers.shape
    keys = centers.reshape(batch * num_classes, dim)  # [B,N,C] -> [BN,C]
    key_labels = torch.arange(num_classes, device=centers.device).repeat(batch)
    chosen = torch.zeros(batch, dtype=torch.bool, device=centers.device)
    chosen[slice(None) if query_images is None else query_images] = True
    query_index = (valid & chosen[:, None]).flatten().nonzero()[:, 0]  # [B,N] -> [BN] -> [M]
    key_valid = valid.flatten()  # [B,N] -> [BN]
    queries, query_labels = keys[query_index], key_labels[query_index]
    return _info_nce(queries, query_labels, keys, key_labels, key_valid, tau, chunk_size, query_index)


# ---------------------------------------------------------------------------
# Cost model: the one definition of what a bank holds in memory
# ---------------------------------------------------------------------------

POINTER_BYTES = torch.int64.itemsize
EMPTY_LABEL = 255  # AllPixelBank's uint8 label of a slot holding no usable pixel


def region_bank_bytes(num_classes: int, size: int, dim: int, dtype: torch.dtype = torch.float32) -> int:
    """Keys [N,K,C] plus two int64 counters per class (write pointer, fill level).

    Slots fill in order, so the fill level replaces a per-slot valid mask.
    """
    return num_classes * size * dim * dtype.itemsize + 2 * num_classes * POINTER_BYTES


def pixel_bank_bytes(num_classes: int, memory_size: int, dim: int, dtype: torch.dtype = torch.float32) -> int:
    """A pixel queue and a segment queue, each laid out like a region bank."""
    return 2 * region_bank_bytes(num_classes, memory_size, dim, dtype)


def all_pixel_bank_bytes(
    num_images: int, height: int, width: int, dim: int, dtype: torch.dtype = torch.float32
) -> int:
    """One key and one uint8 label (EMPTY_LABEL when unused) per feature pixel of every image."""
    return num_images * height * width * (dim * dtype.itemsize + torch.uint8.itemsize)


def _buffer_bytes(module: nn.Module) -> int:
    """Bytes held by a module's buffers (banks have no parameters)."""
    return sum(buffer.numel() * buffer.element_size() for buffer in module.buffers())


# ---------------------------------------------------------------------------
# Banks
# ---------------------------------------------------------------------------


def class_ordinals(labels: Tensor, num_classes: int) -> Tensor:
    """Each entry's position [M] among the entries of its class, in push order."""
    one_hot = F.one_hot(labels, num_classes)  # [M,N]
    return one_hot.cumsum(0).gather(1, labels[:, None]).squeeze(1) - 1


class ClassQueues(nn.Module):
    """One FIFO queue of L2-normalised keys per class, stored as buffers [N,K,C]."""

    def __init__(self, num_classes: int, size: int, dim: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.num_classes, self.size, self.dim = num_classes, size, dim
        self.register_buffer("keys", torch.zeros(num_classes, size, dim, dtype=dtype))
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("filled", torch.zeros(num_classes, dtype=torch.long))

    @property
    def valid(self) -> Tensor:
        """Which slots hold a key [N,K]: a queue fills slots 0..K-1 before it wraps."""
        slots = torch.arange(self.size, device=self.filled.device)
        return slots[None, :] < self.filled[:, None]

    @torch.no_grad()
    def push(self, entries: Tensor, labels: Tensor) -> None:
        """Enqueue entries [M,C] of classes [M], in order, as if pushed one at a time."""
        if self.size == 0:
            return
        labels = labels.to(self.ptr.device)
        rank = class_ordinals(labels, self.num_classes)
        counts = torch.bincount(labels, minlength=self.num_classes)
        # Only a class's last K entries survive; their slots continue from its pointer.
        kept = rank >= counts[labels] - self.size
        slots = (self.ptr[labels] + rank) % self.size
        normalised = F.normalize(entries.detach().float(), dim=1).to(self.keys)
        self.keys[labels[kept], slots[kept]] = normalised[kept]
        self.ptr.add_(counts).remainder_(self.size)
        self.filled.add_(counts).clamp_(max=self.size)

    def entries(self) -> tuple[Tensor, Tensor, Tensor]:
        """All slots as keys [NK,C], class labels [NK] and valid [NK]."""
        keys = self.keys.reshape(self.num_classes * self.size, self.dim)  # [N,K,C] -> [NK,C]
        labels = torch.arange(self.num_classes, device=keys.device).repeat_interleave(self.size)
        return keys, labels, self.valid.flatten()  # [N,K] -> [NK]

    def nbytes(self) -> int:
        """Bytes of storage; equals region_bank_bytes for the same geometry."""
        return _buffer_bytes(self)


class RegionBank(ClassQueues):
    """The paper's memory bank: a FIFO of region centers per class (size 0: in-batch contrast)."""


class PixelBank(nn.Module):
    """ContrastiveSeg's pixel queue and segment queue per class, with correct pointers."""

    def __init__(
        self,
        num_classes: int,
        memory_size: int = 5000,
        dim: int = 256,
        pixel_update_freq: int = 10,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.num_classes, self.pixel_update_freq = num_classes, pixel_update_freq
        self.pixels = ClassQueues(num_classes, memory_size, dim, dtype)
        self.segments = ClassQueues(num_classes, memory_size, dim, dtype)

    @torch.no_grad()
    def push(
        self,
        features: Tensor,
        labels: Tensor,
        generator: torch.Generator | None = None,
        ignore_index: int = 255,
    ) -> None:
        """Enqueue each image's class means and up to pixel_update_freq random pixels per class."""
        flat_labels = labels.flatten(1)  # [B,H,W] -> [B,P]
        keep = flat_labels != ignore_index
        with _full_precision(features.device):
            truth = _members(flat_labels, keep, self.num_classes)
            means, present = _weighted_centers(features, truth, truth.sum(2))
        self.segments.push(*flatten_regions(means, present))
        self.pixels.push(*self._sample_pixels(features, labels, keep.flatten(), generator))  # [B,P] -> [BP]

    def _sample_pixels(
        self, features: Tensor, labels: Tensor, keep: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """Up to pixel_update_freq random kept pixels per image and class, image-major: [S,C], [S]."""
        flat_features, flat_labels, images = _flat_pixels(features, labels)
        kept = keep.nonzero()[:, 0]
        order, rank = _shuffle_within_groups(images[kept] * self.num_classes + flat_labels[kept], generator)
        chosen = kept[order[rank < self.pixel_update_freq]]
        return flat_features[chosen], flat_labels[chosen]

    def entries(self) -> tuple[Tensor, Tensor, Tensor]:
        """Pixel then segment slots as keys [2NK,C], labels [2NK] and valid [2NK]."""
        parts = zip(self.pixels.entries(), self.segments.entries())
        keys, labels, valid = (torch.cat(pair) for pair in parts)
        return keys, labels, valid

    def nbytes(self) -> int:
        """Bytes of storage; equals pixel_bank_bytes for the same geometry."""
        return _buffer_bytes(self)


class AllPixelBank(nn.Module):
    """Every feature pixel of the training set, one slot per image overwritten on revisit.

    Only for tiny datasets: at Cityscapes scale it needs all_pixel_bank_bytes = 28.7 GB.
    Labels are stored as uint8, so classes must be numbered below EMPTY_LABEL.
    """

    def __init__(
        self, num_images: int, height: int, width: int, dim: int, dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__()
        self.register_buffer("keys", torch.zeros(num_images, height * width, dim, dtype=dtype))
        empty = torch.full((num_images, height * width), EMPTY_LABEL, dtype=torch.uint8)
        self.register_buffer("labels", empty)

    @torch.no_grad()
    def push(self, features: Tensor, labels: Tensor, image_ids: Tensor, ignore_index: int = 255) -> None:
        """Store features [B,C,H,W] and labels [B,H,W] in the slots of dataset images `image_ids` [B]."""
        pixels = features.detach().float().flatten(2).transpose(1, 2)  # [B,C,H,W] -> [B,P,C]
        self.keys[image_ids] = F.normalize(pixels, dim=2).to(self.keys)
        flat_labels = labels.flatten(1)  # [B,H,W] -> [B,P]
        stored = flat_labels.masked_fill(flat_labels == ignore_index, EMPTY_LABEL)
        self.labels[image_ids] = stored.to(self.labels)

    def entries(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every slot as keys [DP,C], labels [DP] and valid [DP]."""
        keys = self.keys.flatten(0, 1)  # [D,P,C] -> [DP,C]
        labels = self.labels.flatten().long()  # [D,P] -> [DP]
        return keys, labels, labels != EMPTY_LABEL

    def nbytes(self) -> int:
        """Bytes of storage; equals all_pixel_bank_bytes for the same geometry."""
        return _buffer_bytes(self)


# ---------------------------------------------------------------------------
# Pixel-level contrast (ContrastiveSeg's anchors against a pixel bank)
# ---------------------------------------------------------------------------


def _flat_pixels(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pixel features [BP,C], labels [BP] and image indices [BP]."""
    batch, dim = features.shape[:2]
    flat_features = features.flatten(2).transpose(1, 2).reshape(-1, dim)  # [B,C,H,W] -> [B,P,C] -> [BP,C]
    flat_labels = labels.flatten().long()  # [B,H,W] -> [BP]
    images = torch.arange(batch, device=labels.device).repeat_interleave(labels[0].numel())
    return flat_features, flat_labels, images


def _shuffle_within_groups(groups: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """A group-major order of the items, random inside each group, and each item's rank in it."""
    device = generator.device if generator is not None else groups.device
    noise = torch.rand(groups.shape, generator=generator, device=device).to(groups.device)
    order = noise.argsort()
    order = order[groups[order].argsort(stable=True)]  # stable sort keeps the random order inside a group
    sorted_groups = groups[order]
    first = torch.searchsorted(sorted_groups, sorted_groups)  # where each item's group starts
    return order, torch.arange(groups.numel(), device=groups.device) - first


def _anchor_quotas(counts: Tensor, views: int) -> Tensor:
    """Per (image, class) pair with [easy, hard] counts [U,2]: how many of each to sample [U,2].

    Half hard, half easy; when one kind runs short the other fills up (ContrastiveSeg).
    """
    easy, hard = counts.unbind(1)
    take_hard = torch.minimum(hard, torch.clamp(views - easy, min=views // 2))
    take_easy = torch.minimum(easy, views - take_hard)
    return torch.stack([take_easy, take_hard], 1)


def sample_anchors(
    features: Tensor,
    labels: Tensor,
    predictions: Tensor,
    max_samples: int = 1024,
    max_views: int = 100,
    generator: torch.Generator | None = None,
    ignore_index: int = 255,
) -> tuple[Tensor, Tensor]:
    """ContrastiveSeg's hard-anchor sampling: anchor features [A,C] and labels [A].

    Per image and ground-truth class, up to min(max_views, max_samples // pairs)
    pixels, half hard (prediction != label) and half easy. Unlike ContrastiveSeg,
    a class with fewer pixels than that still gives all it has instead of being
    dropped, which at stride 8 on small crops would drop every class.
    """
    flat_features, flat_labels, images = _flat_pixels(features, labels)
    kept = (flat_labels != ignore_index).nonzero()[:, 0]
    image_class = torch.stack([images[kept], flat_labels[kept]], 1)  # [S,2]
    pairs, pair_of = torch.unique(image_class, dim=0, return_inverse=True)
    views = min(max_views, max_samples // max(len(pairs), 1))
    hard = (predictions.flatten()[kept] != flat_labels[kept]).long()  # [B,H,W] -> [BP] -> [S]
    groups = pair_of * 2 + hard
    counts = torch.bincount(groups, minlength=2 * len(pairs)).reshape(-1, 2)  # [2U] -> [U,2]
    quotas = _anchor_quotas(counts, views).flatten()  # [U,2] -> [2U]
    order, rank = _shuffle_within_groups(groups, generator)
    chosen = kept[order[rank < quotas[groups[order]]]]
    return flat_features[chosen], flat_labels[chosen]


def pixel_contrast_loss(
    features: Tensor,
    labels: Tensor,
    predictions: Tensor,
    bank: PixelBank | AllPixelBank,
    tau: float,
    max_samples: int = 1024,
    max_views: int = 100,
    generator: torch.Generator | None = None,
    ignore_index: int = 255,
    chunk_size: int | None = None,
) -> Tensor:
    """Supervised contrast of sampled anchors against a pixel bank's entries (Eq. 4's core).

    Positives are the bank's entries of the anchor's class, negatives all others.
    ContrastiveSeg's extra factor tau / base_tau is left to the loss weight.
    """
    anchors, anchor_labels = sample_anchors(
        features, labels, predictions, max_samples, max_views, generator, ignore_index
    )
    keys, key_labels, valid = bank.entries()
    return _info_nce(anchors, anchor_labels, keys, key_labels, valid, tau, chunk_size)
