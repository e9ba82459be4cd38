"""The contrastive terms: a registry of contrast kinds, each a ContrastKind spec whose factory builds a ContrastTerm.

A term is where the gathers happen: each rank computes its own queries into fixed shapes,
gathers them, and pushes the gathered entries in the same order on every rank.

    base.py      ContrastKind (a kind's spec), the ContrastTerm protocol, TermInputs, held bank writes
    region.py    RegionContrast: region centers against a region bank (replicated or sharded)
    in_batch.py  bank size 0: region centers against the whole gathered batch
    pixel.py     ContrastiveSeg's pixel + segment queues, and the all-pixel bank

`loss.contrast.kind` names an entry of contrast_kinds(): the built-in CONTRAST_KINDS and the specs that
installed packages declare in the entry-point group `harness.contrast_kinds` (name = "module:SPEC"), in
one mapping that every check, build and summary reads. README's "Adding a contrastive loss" walks
through a kind from outside the harness (examples/prototype_contrast).
"""

from __future__ import annotations

from dataclasses import replace
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from harness.engine.terms.base import Batch, ContrastKind, ContrastTerm, PendingPushes, TermFactory, TermInputs
from harness.engine.terms.in_batch import InBatchTerm
from harness.engine.terms.pixel import all_pixel_term, pixel_term
from harness.engine.terms.region import local_centers, region_bank_size, region_summary, region_term
from harness.models import SegmentationModel
from harness.recipe import ContrastConfig, PixelBankConfig, RecipeError

ENTRY_POINT_GROUP = "harness.contrast_kinds"


def no_contrast(inputs: TermInputs) -> None:
    """CE (+ aux) only."""
    return None


def region_or_in_batch(inputs: TermInputs) -> ContrastTerm:
    """RegionContrast with its bank, or in-batch contrast when loss.contrast.bank_size is 0 (the paper's w/o MB)."""
    if region_bank_size(inputs.cfg, inputs.train_images) == 0:
        return InBatchTerm(inputs)
    return region_term(inputs)


# RegionContrast's keys (variant, bank_size, bank_layout) are loss.contrast's own, and the pixel queues' block is
# the declared loss.contrast.pixel (all_pixel reads its anchor sampling there too): where recipes have always
# had them, so that no committed recipe's fingerprint changes.
CONTRAST_KINDS: dict[str, ContrastKind] = {
    "none": ContrastKind(no_contrast),
    "region": ContrastKind(region_or_in_batch, shards=True, summary=region_summary),
    "pixel": ContrastKind(pixel_term, settings=PixelBankConfig, block="pixel"),
    "all_pixel": ContrastKind(all_pixel_term, settings=PixelBankConfig, block="pixel"),
}


def declared(point: EntryPoint) -> ContrastKind:
    """The spec an entry point names. One that cannot be loaded, or names something else, stops every run before
    anything is written (a RecipeError naming it): the registry must be whole for any recipe to be checked."""
    where = f"entry point {point.name} = {point.value} ({ENTRY_POINT_GROUP})"
    try:
        spec = point.load()
    except Exception as error:  # noqa: BLE001 - whatever a package's import raises, it is said in one line
        raise RecipeError("loss.contrast.kind", f"{where} cannot be loaded: {type(error).__name__}: {error}") from None
    if not isinstance(spec, ContrastKind):
        raise RecipeError("loss.contrast.kind", f"{where} names a {type(spec).__name__}, not a "
                          "harness.engine.terms.ContrastKind")
    return spec


def contrast_kinds() -> dict[str, ContrastKind]:
    """Every registered kind: the built-in ones, and those that installed packages declare under the entry-point
    group (a built-in name keeps its built-in kind)."""
    points = {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP) if point.name not in CONTRAST_KINDS}
    return {**CONTRAST_KINDS, **{name: declared(point) for name, point in points.items()}}


def check_contrast(cfg: ContrastConfig) -> ContrastKind:
    """The spec of the recipe's kind, once loss.contrast holds nothing it cannot use: a registered kind, every
    settings block validated by its owner's model, a sharded layout only for a kind whose bank shards. A
    RecipeError names the dotted key."""
    kinds = contrast_kinds()
    if cfg.kind not in kinds:
        raise RecipeError("loss.contrast.kind", f"unknown kind '{cfg.kind}'; registered: {', '.join(kinds)}")
    owners = {spec.block: spec for spec in kinds.values() if spec.block is not None}
    for block in cfg.model_extra or {}:
        if block not in owners:
            raise RecipeError(f"loss.contrast.{block}", f"no registered kind has a settings block of this name; "
                              f"the blocks: {', '.join(sorted(owners))}")
        owners[block].settings_of(cfg)  # a sweep's variants may share one block: each is checked, used or not
    spec = kinds[cfg.kind]
    if cfg.bank_layout == "sharded" and not spec.shards:
        shardable = ", ".join(name for name, other in kinds.items() if other.shards)
        raise RecipeError("loss.contrast.bank_layout", f"'sharded' needs a kind whose bank shards ({shardable}), "
                          f"not '{cfg.kind}'")
    spec.settings_of(cfg)
    return spec


def contrast_summary(cfg: ContrastConfig, train_images: int | None) -> dict[str, Any]:
    """The summary fields the recipe's kind adds (train_images None where the run never knew them)."""
    return check_contrast(cfg).summary_fields(cfg, train_images)


def contrast_feature_geometry(cfg: ContrastConfig, model: SegmentationModel) -> tuple[int, int]:
    """(channels, stride) of the feature map the contrast reads: the head's F or the backbone's last stage."""
    if cfg.feature == "head":
        return model.feature_dim, model.feature_stride
    info = model.backbone.feature_info
    return info.channels()[-1], info.reduction()[-1]


def build_term(inputs: TermInputs) -> ContrastTerm | None:
    """The contrast term the recipe's kind builds (None for CE only), with its settings, its bank on the run's
    device."""
    spec = check_contrast(inputs.cfg)
    return spec.build(replace(inputs, settings=spec.settings_of(inputs.cfg)))


# What a kind from outside the harness builds on (examples/prototype_contrast): its spec, the term's protocol and
# inputs, held bank writes, and this rank's region centers.
__all__ = [
    "CONTRAST_KINDS", "ENTRY_POINT_GROUP", "Batch", "ContrastKind", "ContrastTerm", "PendingPushes", "TermFactory",
    "TermInputs", "build_term", "check_contrast", "contrast_feature_geometry", "contrast_kinds", "contrast_summary",
    "local_centers",
]
