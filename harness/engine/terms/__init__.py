"""The contrastive terms: a registry of contrast kinds, each a module implementing ContrastTerm.

A term is where the gathers happen: each rank computes its own queries into fixed shapes,
gathers them, and pushes the gathered entries in the same order on every rank.

    base.py      the ContrastTerm protocol, TermInputs (what a kind is built from), held bank writes
    region.py    RegionContrast: region centers against a region bank (replicated or sharded)
    in_batch.py  bank size 0: region centers against the whole gathered batch
    pixel.py     ContrastiveSeg's pixel + segment queues, and the all-pixel bank

`loss.contrast.kind` names an entry of CONTRAST_KINDS. A package outside the harness adds a kind
through the entry-point group `harness.contrast_kinds` (name = "module:factory"); README's
"Adding a contrastive loss" walks through it.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from harness.engine.terms.base import Batch, ContrastTerm, TermFactory, TermInputs
from harness.engine.terms.in_batch import InBatchTerm
from harness.engine.terms.pixel import all_pixel_term, pixel_term
from harness.engine.terms.region import region_bank_size, region_term
from harness.models import SegmentationModel
from harness.recipe import ContrastConfig, RecipeError

ENTRY_POINT_GROUP = "harness.contrast_kinds"


def no_contrast(inputs: TermInputs) -> None:
    """CE (+ aux) only."""
    return None


def region_or_in_batch(inputs: TermInputs) -> ContrastTerm:
    """RegionContrast with its bank, or in-batch contrast when loss.contrast.bank_size is 0 (the paper's w/o MB)."""
    if region_bank_size(inputs.cfg, inputs.train_images) == 0:
        return InBatchTerm(inputs)
    return region_term(inputs)


CONTRAST_KINDS: dict[str, TermFactory] = {
    "none": no_contrast, "region": region_or_in_batch, "pixel": pixel_term, "all_pixel": all_pixel_term,
}


def contrast_kinds() -> dict[str, TermFactory]:
    """The built-in kinds and those that installed packages declare under the entry-point group."""
    declared = {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP)}
    return {**{name: point.load() for name, point in declared.items() if name not in CONTRAST_KINDS}, **CONTRAST_KINDS}


def check_contrast_kind(kind: str) -> None:
    """Raise a RecipeError naming loss.contrast.kind unless `kind` is registered."""
    known = contrast_kinds()
    if kind not in known:
        raise RecipeError("loss.contrast.kind", f"unknown kind '{kind}'; registered: {', '.join(known)}")


def contrast_feature_geometry(cfg: ContrastConfig, model: SegmentationModel) -> tuple[int, int]:
    """(channels, stride) of the feature map the contrast reads: the head's F or the backbone's last stage."""
    if cfg.feature == "head":
        return model.feature_dim, model.feature_stride
    info = model.backbone.feature_info
    return info.channels()[-1], info.reduction()[-1]


def build_term(inputs: TermInputs) -> ContrastTerm | None:
    """The contrast term the recipe's kind builds (None for CE only), its bank on the run's device."""
    check_contrast_kind(inputs.cfg.kind)
    return contrast_kinds()[inputs.cfg.kind](inputs)


__all__ = [
    "CONTRAST_KINDS", "Batch", "ContrastTerm", "TermInputs", "build_term", "check_contrast_kind",
    "contrast_feature_geometry", "contrast_kinds", "region_bank_size",
]
