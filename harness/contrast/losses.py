"""The Eq. 4 losses the engine calls: queries against a region bank, in-batch, and pixel anchors.

Each is a thin layout of its keys over the streamed core (streaming.info_nce):
positives are the keys of the query's class, negatives all other valid keys.

The pixel loss is the baseline the paper is measured against: ContrastiveSeg's
PixelContrastLoss against its pixel and segment queues (Wang et al., ICCV 2021;
tfzhou/ContrastiveSeg, lib/loss/loss_contrast_mem.py), its factor tau / base_tau left
to the loss weight. It departs from that code on purpose in two places:
(1) class 0 is a real class here. The official queue update enqueues no pixel or
segment of label 0 and its `_sample_negative` reads no class-0 queue, because its
datasets use 0 for "unlabelled"; here only `ignore_index` is left out, as in every
other loss of the harness. (2) The official `logits_mask`, which keeps an anchor from
being its own positive when anchors contrast with each other, is applied to queue keys
too, where it removes the unrelated queue column i from anchor i's positives (its
issue #55); queue keys are never anchors, so no key is removed here. Its anchor
sampling differs as sampling.sample_anchors says (small classes give what they have).
"""

from __future__ import annotations

import torch
from torch import Tensor

from harness.contrast.banks import AllPixelBank, PixelBank
from harness.contrast.centers import region_entries
from harness.contrast.sampling import sample_anchors
from harness.contrast.streaming import info_nce
from harness.labels import IGNORE_INDEX

QuerySelection = slice | Tensor | None


def region_contrast_loss(
    queries: Tensor,
    query_labels: Tensor,
    bank_keys: Tensor,
    bank_valid: Tensor,
    tau: float,
    chunk_size: int | None = None,
    query_valid: Tensor | None = None,
    keys_unit: bool = False,
) -> Tensor:
    """Eq. 4 for queries [M,C] of classes [M] against a per-class bank [N,K,C] with valid [N,K].

    The bank is read chunk_size slots at a time (None: auto_chunk_size), in its
    storage dtype; the result does not depend on the chunk size. query_valid [M]
    masks padding queries (None: all count); keys_unit says the keys are stored
    L2-normalised (a bank's are), so fp32 ones are read without a copy.
    """
    num_classes, size, dim = bank_keys.shape
    keys = bank_keys.reshape(num_classes * size, dim)  # [N,K,C] -> [NK,C]
    key_labels = torch.arange(num_classes, device=bank_keys.device).repeat_interleave(size)
    valid = bank_valid.reshape(num_classes * size)  # [N,K] -> [NK]
    return info_nce(
        queries, query_labels, keys, key_labels, valid, tau, chunk_size, query_valid, keys_unit=keys_unit, queue_size=size
    )


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
    keys, key_labels, key_valid = region_entries(centers, valid)  # [BN,C], [BN], [BN]
    chosen = torch.zeros(valid.shape[0], dtype=torch.bool, device=centers.device)
    chosen[slice(None) if query_images is None else query_images] = True
    # Every slot is a query row, masked unless valid and chosen: fixed shapes, no host round trip.
    query_valid = key_valid & chosen.repeat_interleave(valid.shape[1])  # [B] -> [BN]
    own_slots = torch.arange(len(keys), device=keys.device)
    return info_nce(keys, key_labels, keys, key_labels, key_valid, tau, chunk_size, query_valid, own_slots)



def pixel_contrast_loss(
    features: Tensor,
    labels: Tensor,
    predictions: Tensor,
    bank: PixelBank | AllPixelBank,
    tau: float,
    max_samples: int = 1024,
    max_views: int = 100,
    generator: torch.Generator | None = None,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int | None = None,
) -> Tensor:
    """Supervised contrast of sampled anchors against a pixel bank's entries (Eq. 4's core).

    Positives are the bank's entries of the anchor's class, negatives all others.
    ContrastiveSeg's extra factor tau / base_tau is left to the loss weight. The anchors
    fill a fixed number of slots; the padding ones (labelled ignore_index) count for nothing.
    """
    anchors, anchor_labels = sample_anchors(
        features, labels, predictions, max_samples, max_views, generator, ignore_index
    )
    anchor_valid = anchor_labels != ignore_index
    if isinstance(bank, PixelBank):
        # Each class's pixel and segment queue side by side: class-major queues, so Eq. 4 takes the
        # region bank's path (each anchor's positives are one block). A copy, as entries() makes too.
        keys = torch.cat([bank.pixels.keys, bank.segments.keys], 1)  # 2 x [N,K,C] -> [N,2K,C]
        valid = torch.cat([bank.pixels.valid, bank.segments.valid], 1)  # 2 x [N,K] -> [N,2K]
        classes = torch.where(anchor_valid, anchor_labels, 0)  # the queue path indexes by class, padding too
        return region_contrast_loss(anchors, classes, keys, valid, tau, chunk_size, anchor_valid, keys_unit=True)
    keys, key_labels, valid = bank.entries()
    return info_nce(anchors, anchor_labels, keys, key_labels, valid, tau, chunk_size, anchor_valid, keys_unit=True)
