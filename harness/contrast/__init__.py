"""Region centers, memory banks and contrastive losses: pure tensor code.

Nothing here talks to Accelerate, and only sharded.py to torch.distributed. The
engine gathers region centers (or features) across ranks and hands these modules
the gathered tensors, so every rank pushes the same entries in the same order.

    centers.py    Eq. 2 / Eq. 3 region centers
    streaming.py  Eq. 4's streamed core (chunked online softmax, gradient built in the forward)
    losses.py     Eq. 4 against a region bank, in-batch, and pixel anchors against a pixel bank
    banks.py      region / pixel / all-pixel banks behind the Bank protocol, with their cost functions
    sampling.py   ContrastiveSeg's anchor sampling and per-class pixel sampling
    sharded.py    the region bank split across ranks, and its exact loss

Paper: Hu, Cui, Wang, "Region-aware Contrastive Learning for Semantic
Segmentation", ICCV 2021, Section 3 (Eq. 2-4). The pixel-level banks follow
ContrastiveSeg's design with its pointer bugs fixed, for comparison.
"""

from harness.contrast.banks import (
    POINTER_BYTES,
    AllPixelBank,
    Bank,
    ClassQueues,
    PixelBank,
    RegionBank,
    all_pixel_bank_bytes,
    pixel_bank_bytes,
    region_bank_bytes,
)
from harness.contrast.centers import (
    CENTER_VARIANTS,
    region_centers,
    region_entries,
    truth_sums,
)
from harness.contrast.losses import (
    in_batch_contrast_loss,
    pixel_contrast_loss,
    region_contrast_loss,
)
from harness.contrast.sampling import sample_anchors
from harness.contrast.sharded import (
    ShardedRegionBank,
    sharded_bank_bytes,
    sharded_region_contrast_loss,
)
from harness.contrast.streaming import CHUNK_BUDGET_BYTES, auto_chunk_size, chunk_bytes

__all__ = [
    "CENTER_VARIANTS", "CHUNK_BUDGET_BYTES", "POINTER_BYTES", "AllPixelBank", "Bank", "ClassQueues", "PixelBank",
    "RegionBank", "ShardedRegionBank", "all_pixel_bank_bytes", "auto_chunk_size", "chunk_bytes",
    "in_batch_contrast_loss", "pixel_bank_bytes", "pixel_contrast_loss", "region_bank_bytes",
    "region_centers", "region_contrast_loss", "region_entries", "sample_anchors", "sharded_bank_bytes", "sharded_region_contrast_loss",
    "truth_sums",
]
