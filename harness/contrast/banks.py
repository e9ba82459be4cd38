"""Memory banks, each beside the cost function that predicts its bytes.

Every bank is an nn.Module of buffers (so state_dict checkpoints it) behind one
small protocol, `Bank`. Banks are pure tensor code: the engine gathers what
every rank pushes, so replicated banks stay bitwise identical across ranks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.contrast.centers import region_entries, truth_sums
from harness.contrast.sampling import class_pixels
from harness.labels import IGNORE_INDEX

POINTER_BYTES = torch.int64.itemsize


class Bank(Protocol):
    """What the engine needs of any kind's bank: an nn.Module of buffers with these members. Its `push` differs by
    kind, and only its contrast term calls it, with what every rank gathered (so replicated banks stay identical).

    The engine moves it to the run's device (`to`), never through accelerator.prepare (DDP would broadcast it,
    DeepSpeed cast it); checkpoints it (`state_dict` / `load_state_dict`: a replicated bank once, through
    Accelerate, a sharded one per rank) and checks it finite before every save; proves after training that every
    rank holds the bank it should (`agreement_state`, digested and compared across ranks); and records its
    `fill` while training and its `nbytes` in the summary. Whether a kind's bank can shard is its spec's
    (harness.engine.terms.ContrastKind.shards); `replicated` says which layout this one has.
    """

    # True: every rank holds the same state (checkpointed once); False: each rank holds its own shard.
    replicated: bool

    def nbytes(self) -> int:
        """Bytes of this rank's storage, as the bank's cost function predicts."""

    def fill(self) -> Tensor:
        """The fraction of this rank's slots that hold a key (a 0-dim tensor, no host sync)."""

    def agreement_state(self) -> dict[str, Tensor]:
        """The tensors that must be bitwise equal on every rank (a replicated bank: all of them)."""

    def state_dict(self) -> dict[str, Tensor]:
        """Everything a resume needs (nn.Module's: its buffers)."""

    def load_state_dict(self, state_dict: Mapping[str, Tensor]) -> Any:
        """Put a checkpoint's state back into its own buffers, on their device (nn.Module's)."""

    def to(self, device: torch.device) -> "Bank":
        """The bank on `device` (nn.Module's)."""


def buffer_bytes(module: nn.Module) -> int:
    """Bytes held by a module's buffers (banks have no parameters)."""
    return sum(buffer.numel() * buffer.element_size() for buffer in module.buffers())


class ReplicatedBank(nn.Module):
    """A bank every rank holds whole: all ranks push the same gathered entries in the same order."""

    replicated = True

    def agreement_state(self) -> dict[str, Tensor]:
        """The whole state."""
        return self.state_dict()

    def nbytes(self) -> int:
        """Bytes of storage; equals the bank's cost function for the same geometry."""
        return buffer_bytes(self)


# ---------------------------------------------------------------------------
# Class queues: the region bank, and the two halves of the pixel bank
# ---------------------------------------------------------------------------


def region_bank_bytes(num_classes: int, size: int, dim: int, dtype: torch.dtype = torch.float32) -> int:
    """Keys [N,K,C], one spare key, and two int64 counters per class (write pointer, fill level).

    Slots fill in order, so the fill level replaces a per-slot valid mask. The spare key
    absorbs the writes a push masks out (see ClassQueues.push).
    """
    return (num_classes * size + 1) * dim * dtype.itemsize + 2 * num_classes * POINTER_BYTES


def class_members(labels: Tensor, valid: Tensor, num_classes: int) -> Tensor:
    """Indicator [M,N] of entry m being valid and of class n (arithmetic: no host round trip)."""
    classes = torch.arange(num_classes, device=labels.device)
    return (labels[:, None] == classes[None, :]) & valid[:, None]


def class_ordinals(members: Tensor, labels: Tensor) -> Tensor:
    """Each entry's position [M] among the valid entries of its class, in push order (garbage if invalid)."""
    return members.long().cumsum(0).gather(1, labels[:, None]).squeeze(1) - 1


class PushOrder(NamedTuple):
    """Where a push's entries stand, with arithmetic only (no host round trip)."""

    labels: Tensor  # [M] on the bank's device
    valid: Tensor  # [M]
    members: Tensor  # [M,N] valid and of class n
    ordinals: Tensor  # [M] position among the valid entries of its class

    @classmethod
    def of(cls, labels: Tensor, valid: Tensor | None, num_classes: int, device: torch.device) -> "PushOrder":
        """The order of entries of classes `labels` [M], the valid ones only (None: all)."""
        labels = labels.to(device)
        valid = torch.ones_like(labels, dtype=torch.bool) if valid is None else valid.to(device)
        members = class_members(labels, valid, num_classes)
        return cls(labels, valid, members, class_ordinals(members, labels))


class ClassQueues(ReplicatedBank):
    """One FIFO queue of L2-normalised keys per class: `keys` [N,K,C], class-major in one buffer."""

    def __init__(self, num_classes: int, size: int, dim: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.num_classes, self.size, self.dim = num_classes, size, dim
        # N*K slots, then one spare that absorbs the writes a push masks out: a push then never
        # needs the host to count which entries it keeps.
        self.register_buffer("slots", torch.zeros(num_classes * size + 1, dim, dtype=dtype))
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("filled", torch.zeros(num_classes, dtype=torch.long))

    @property
    def keys(self) -> Tensor:
        """The queues [N,K,C], a view of the slots without the spare."""
        return self.slots[:-1].view(self.num_classes, self.size, self.dim)

    @property
    def valid(self) -> Tensor:
        """Which slots hold a key [N,K]: a queue fills slots 0..K-1 before it wraps."""
        slots = torch.arange(self.size, device=self.filled.device)
        return slots[None, :] < self.filled[:, None]

    @torch.no_grad()
    def push(self, entries: Tensor, labels: Tensor, valid: Tensor | None = None) -> None:
        """Enqueue the valid ones (None: all) of entries [M,C] of classes [M], in order, as if one at a time."""
        if self.size == 0:
            return
        labels, valid, members, rank = PushOrder.of(labels, valid, self.num_classes, self.ptr.device)
        counts = members.sum(0)  # [N]
        # Only a class's last K entries survive; their slots continue from its pointer.
        kept = valid & (rank >= counts[labels] - self.size)
        slot = labels * self.size + (self.ptr[labels] + rank) % self.size
        spare = self.num_classes * self.size
        normalised = F.normalize(entries.detach().float(), dim=1).to(self.slots)
        # Kept entries land in distinct slots; every other entry lands in the spare.
        self.slots.index_copy_(0, torch.where(kept, slot, spare), normalised)
        self.ptr.add_(counts).remainder_(self.size)
        self.filled.add_(counts).clamp_(max=self.size)

    def entries(self) -> tuple[Tensor, Tensor, Tensor]:
        """All slots as keys [NK,C] (a view: no copy), class labels [NK] and valid [NK]."""
        labels = torch.arange(self.num_classes, device=self.slots.device).repeat_interleave(self.size)
        return self.slots[:-1], labels, self.valid.flatten()  # [N,K] -> [NK]

    def fill(self) -> Tensor:
        """The fraction of slots holding a key."""
        return self.filled.sum() / max(self.num_classes * self.size, 1)


class RegionBank(ClassQueues):
    """The paper's memory bank: a FIFO of region centers per class (size 0: in-batch contrast)."""


# ---------------------------------------------------------------------------
# ContrastiveSeg's pixel + segment queues
# ---------------------------------------------------------------------------


def pixel_bank_bytes(num_classes: int, memory_size: int, dim: int, dtype: torch.dtype = torch.float32) -> int:
    """A pixel queue and a segment queue, each laid out like a region bank."""
    return 2 * region_bank_bytes(num_classes, memory_size, dim, dtype)


class PixelBank(ReplicatedBank):
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
    def push(self, features: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> None:
        """Enqueue each image's class means and up to pixel_update_freq random pixels per class (image-major)."""
        sums, counts = truth_sums(features, labels, self.num_classes)
        self.segments.push(*region_entries(sums / counts.clamp_min(1)[..., None], counts > 0))
        # Fixed slots (B x classes x pixel_update_freq at most), the padding masked: no count reaches the host.
        sample = class_pixels(labels, self.pixel_update_freq, self.num_classes, generator)
        self.pixels.push(sample.features(features), sample.labels(labels, padding=0), sample.valid)

    def entries(self) -> tuple[Tensor, Tensor, Tensor]:
        """Pixel then segment slots as keys [2NK,C], labels [2NK] and valid [2NK]."""
        parts = zip(self.pixels.entries(), self.segments.entries())
        keys, labels, valid = (torch.cat(pair) for pair in parts)
        return keys, labels, valid

    def fill(self) -> Tensor:
        """The fraction of slots, over both queues, holding a key."""
        return (self.pixels.fill() + self.segments.fill()) / 2


# ---------------------------------------------------------------------------
# Every pixel of the training set
# ---------------------------------------------------------------------------


def all_pixel_bank_bytes(
    num_images: int, height: int, width: int, dim: int, dtype: torch.dtype = torch.float32
) -> int:
    """One key and one uint8 label (IGNORE_INDEX when unused) per feature pixel of every image."""
    return num_images * height * width * (dim * dtype.itemsize + torch.uint8.itemsize)


class AllPixelBank(ReplicatedBank):
    """Every feature pixel of the training set, one slot per image overwritten on revisit.

    Only for tiny datasets: at Cityscapes scale it needs all_pixel_bank_bytes = 28.7 GB.
    Labels are stored as uint8, so classes must be numbered below IGNORE_INDEX, which marks
    ignored pixels and slots never written.
    """

    def __init__(
        self, num_images: int, height: int, width: int, dim: int, dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__()
        self.register_buffer("keys", torch.zeros(num_images, height * width, dim, dtype=dtype))
        self.register_buffer("labels", torch.full((num_images, height * width), IGNORE_INDEX, dtype=torch.uint8))

    @torch.no_grad()
    def push(self, features: Tensor, labels: Tensor, image_ids: Tensor) -> None:
        """Store features [B,C,H,W] and labels [B,H,W] in the slots of dataset images `image_ids` [B]."""
        pixels = features.detach().float().flatten(2).transpose(1, 2)  # [B,C,H,W] -> [B,P,C]
        self.keys[image_ids] = F.normalize(pixels, dim=2).to(self.keys)
        self.labels[image_ids] = labels.flatten(1).to(self.labels)  # [B,H,W] -> [B,P]

    def entries(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every slot as keys [DP,C], labels [DP] and valid [DP]."""
        keys = self.keys.flatten(0, 1)  # [D,P,C] -> [DP,C]
        labels = self.labels.flatten().long()  # [D,P] -> [DP]
        return keys, labels, labels != IGNORE_INDEX

    def fill(self) -> Tensor:
        """The fraction of pixel slots holding a labelled key."""
        return (self.labels != IGNORE_INDEX).float().mean()
