"""Recipe schema, YAML loading, `--set` overrides and sweep expansion.

A recipe file is validated into typed pydantic objects. Every error names the
file and the dotted key it concerns, so `run.py` can print it and exit 2
before anything is written under results/. This module imports nothing else
from the harness.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class RecipeError(ValueError):
    """A recipe problem, located by file and dotted key."""

    def __init__(self, key: str, message: str, source: str | Path | None = None) -> None:
        self.key, self.message, self.source = key, message, source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source is not None else ""
        return f"{where}{self.key}: {self.message}"

    def located(self, source: str | Path) -> "RecipeError":
        """The same error, attributed to `source`."""
        return RecipeError(self.key, self.message, source)


class Strict(BaseModel):
    """Base for every section: unknown keys and lossy coercions are errors."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class RunConfig(Strict):
    name: str = "recipe"
    seed: int = 0
    output_dir: Path = Path("results")
    reports_dir: Path = Path("reports")
    # A committed results folder of this recipe (the quickstart's) whose numbers the report and the run's last lines
    # set beside these, e.g. results/quickstart_reference: what another machine got.
    reference: Path | None = None
    deterministic: bool = False
    log_interval: int = Field(10, ge=1)
    checkpoint_interval: int = Field(0, ge=0)  # iterations between checkpoints; 0 = none
    # Minutes between checkpoints, beside checkpoint_interval (None = by iteration only): a preempted or
    # killed run loses at most this much work whatever its step time.
    checkpoint_minutes: float | None = Field(None, gt=0)
    # After training, time the run's step with and without its contrast term, paired (harness/engine/probe.py):
    # summary.json's cost_ratio. A few % of the run; the run's results are the same with or without it.
    cost_probe: bool = True
    keep_checkpoint: bool = False  # keep the final training state in checkpoint/ (removed by default)
    save_aux_head: bool = False  # model.safetensors holds the aux head too (it only trains; inference skips it)
    # Accelerate trackers (log_with), e.g. [tensorboard]: losses, lr, step and contrast time, val mIoU.
    trackers: tuple[str, ...] = ()
    # torch.compile the model (minutes of compiling first, then faster steps). "auto": on a CUDA device
    # (not under DeepSpeed, whose engine wraps the model itself), off on a CPU; the run's context resolves it.
    compile: Literal["auto"] | bool = "auto"


def _check_base_size(value: tuple[int, int] | None) -> tuple[int, int] | None:
    """A base scale is (long, short) sides, both positive."""
    if value is not None and not 0 < value[1] <= value[0]:
        raise ValueError("base_size must be (long, short) with 0 < short <= long")
    return value


class AugmentConfig(Strict):
    scale: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    # (long, short) side of mmsegmentation's base scale, e.g. (2048, 512) for ADE20K and COCO-Stuff: each
    # image is first fitted into it, aspect kept, and `scale` jitters that size. None: jitter the native size.
    base_size: tuple[int, int] | None = None

    _base_size = field_validator("base_size")(_check_base_size)

    @model_validator(mode="after")
    def _ordered(self) -> "AugmentConfig":
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError("scale must be (low, high) with 0 < low <= high")
        return self


class DigitScenesConfig(Strict):
    """Geometry of the embedded dataset built from scikit-learn's digits."""

    train_images: int = Field(1000, ge=1)
    val_images: int = Field(200, ge=1)
    test_images: int = Field(200, ge=1)  # held out: scored only by a recipe with eval.split: test
    image_size: int = Field(64, ge=16)
    digits_per_image: tuple[int, int] = (2, 4)
    digit_scale: tuple[float, float] = (0.25, 0.4375)  # digit side as a fraction of the image side
    # The dataset's own seed: which digit samples are train or val, and the scenes drawn from them.
    # Fixed across a sweep's seeds (run.seed), as a real dataset is.
    seed: int = 0

    @field_validator("digits_per_image")
    @classmethod
    def _count_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= value[0] <= value[1]:
            raise ValueError("must be (low, high) with 1 <= low <= high")
        return value

    @field_validator("digit_scale")
    @classmethod
    def _scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise ValueError("must be (low, high) with 0 < low <= high <= 1")
        return value


class DataConfig(Strict):
    dataset: Literal["digit_scenes", "cityscapes", "ade20k", "coco_stuff", "coco_stuff10k"] = "digit_scenes"
    root: Path | None = None
    crop_size: int = Field(64, ge=8)
    # With global_batch_size unset: the batch of each process, per micro-batch. With it set: the most
    # images a process takes at once (what fits its memory); see with_batch_plan.
    batch_size: int = Field(8, ge=1)
    # The batch of one optimizer step over all processes (the paper's 8 on Cityscapes, 16 on ADE20K and
    # COCO Stuff), whatever the launch: fewer processes accumulate gradients instead.
    global_batch_size: int | None = Field(None, ge=1)
    # DataLoader workers per process; None: harness.data.auto_num_workers (a share of the usable cores).
    num_workers: int | None = Field(None, ge=0)
    # Real datasets: auto reads each split from its prepared store (decoded once into memory-mapped uint8
    # images and train ids by `harness prepare`, or on first use); off decodes the files for every item.
    # Both give the same items, pixel for pixel. The digit scenes need none.
    prepare: Literal["auto", "off"] = "auto"
    # Where prepared stores live. None: beside the dataset (<root>.prepared/), or the user cache
    # (~/.cache/harness/prepared) where the dataset's parent folder cannot be written.
    cache_dir: Path | None = None
    augment: AugmentConfig = AugmentConfig()
    digit_scenes: DigitScenesConfig = DigitScenesConfig()


class ModelConfig(Strict):
    backbone: str = "resnet50"
    pretrained: bool = False
    # timm: timm's weights (ImageNet) from the Hugging Face cache; digits: the local stand-in,
    # the backbone pretrained on classifying the digit scenes' train-split digits (harness/pretrain.py).
    pretrained_source: Literal["timm", "digits"] = "timm"
    weights: Path | None = None
    output_stride: Literal[8, 16, 32] = 8
    head: Literal["deeplabv3", "fcn", "hrnetv2"] = "deeplabv3"
    # Channels of the feature map F. None: the head's reference width, 256 for deeplabv3 and fcn,
    # the concatenated branches for hrnetv2 (720 for W48).
    head_channels: int | None = Field(None, ge=1)
    # An FCN aux head on the second-to-last stage. Unset: on for deeplabv3 and fcn, off for hrnetv2,
    # whose reference trains without one.
    aux_head: bool = True
    aux_channels: int = Field(256, ge=1)
    sync_bn: bool = False
    # NHWC activations and weights: faster convolutions with bf16 tensor cores on a GPU.
    channels_last: bool = False
    # Bilinear upsampling of logits (loss, evaluation) and of HRNet's branches with corners aligned:
    # DeepLab's choice for crops of stride * k + 1 pixels (769), where feature cell k sits on pixel 8k.
    align_corners: bool = False

    @model_validator(mode="before")
    @classmethod
    def _aux_head_follows_the_head(cls, data: Any) -> Any:
        """An unset aux_head takes the head's reference choice, so the resolved recipe states it."""
        if isinstance(data, dict) and data.get("aux_head") is None:
            return {**data, "aux_head": data.get("head", "deeplabv3") != "hrnetv2"}
        return data


class PixelBankConfig(Strict):
    """ContrastiveSeg's pixel/segment queues and anchor sampling (Cityscapes config)."""

    memory_size: int = Field(5000, ge=1)
    pixel_update_freq: int = Field(10, ge=1)
    max_samples: int = Field(1024, ge=1)
    max_views: int = Field(100, ge=1)


def _a_settings_block(value: Any) -> dict[str, Any]:
    """A key of loss.contrast that is not declared below must be a contrast kind's settings block: a mapping."""
    if not isinstance(value, dict):
        raise ValueError("unknown key; besides its declared keys, loss.contrast holds only contrast kinds' settings "
                         "blocks (mappings, e.g. prototype: {momentum: 0.99})")
    return value


class ContrastConfig(Strict):
    """loss.contrast: the kind, the keys every kind shares, RegionContrast's and the pixel queues' keys (where they
    have always been), and any other kind's settings block, loss.contrast.<kind>: {...}.

    A kind's settings model lives with the kind, in the engine's registry (harness/engine/terms), which this
    module cannot import. So a block is kept here as the mapping it is, and the engine's check
    (harness.engine.terms.check_contrast, which run.check_variants calls before anything is written) validates
    it with its kind's model, naming the dotted key, and refuses a block no registered kind owns. An undeclared
    key whose value is not a mapping is refused here, as an unknown key anywhere else is. Blocks appear in a
    recipe's dump, and so in its fingerprint, only where a recipe gives one: recipes without one keep theirs.
    """

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Annotated[dict[str, Any], BeforeValidator(_a_settings_block)]]

    # An entry of the engine's registry of contrast kinds (harness/engine/terms): none, region, pixel,
    # all_pixel, or one an installed package declares; checked against the registry before a run starts.
    kind: str = "none"
    weight: float = Field(0.1, ge=0)
    tau: float = Field(0.1, gt=0)
    variant: Literal["average", "ep_hp", "weighted"] = "weighted"
    # None: one slot per training image, as in the paper; 0: in-batch contrast only.
    bank_size: int | None = Field(None, ge=0)
    feature: Literal["head", "backbone"] = "head"
    # replicated: every rank holds the whole bank; sharded: 1/world_size of each class queue per rank, for a kind
    # whose bank shards (the engine's check refuses it for any other).
    bank_layout: Literal["replicated", "sharded"] = "replicated"
    pixel: PixelBankConfig = PixelBankConfig()
    # Bank slots the loss reads at a time (None: sized from a memory budget); any value gives the
    # same loss up to float32 rounding, only its peak memory and speed change.
    chunk_size: int | None = Field(None, ge=1)
    # Storage of the bank's keys; the loss always accumulates in float32.
    bank_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # CE only before this iteration (ContrastiveSeg uses 5000); the bank fills meanwhile, so the
    # contrast starts against a full bank rather than an empty one.
    warmup_iters: int = Field(0, ge=0)


class LossConfig(Strict):
    kind: Literal["ce", "ohem"] = "ce"
    aux_weight: float = Field(0.4, ge=0)
    ohem_thresh: float = Field(0.7, gt=0, le=1)
    ohem_min_kept: int = Field(100_000, ge=1)
    contrast: ContrastConfig = ContrastConfig()


class OptimConfig(Strict):
    # SGD is the paper's; AdamW trains the from-scratch quickstart in a CPU's minutes.
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(5e-4, ge=0)
    poly_power: float = Field(0.9, ge=0)
    iterations: int = Field(1000, ge=1)
    grad_accum_steps: int = Field(1, ge=1)


class EvalConfig(Strict):
    # The labelled split scored: val while developing; test (the digit scenes' held-out digits) once,
    # for a study whose design is fixed. val_miou in the summary is this split's mIoU.
    split: Literal["val", "test"] = "val"
    interval: int = Field(0, ge=0)  # 0: evaluate once, at the end
    mode: Literal["whole", "slide"] = "whole"
    slide_crop: int | None = Field(None, ge=8)
    slide_stride: int | None = Field(None, ge=1)
    # Slide windows per forward (each with every image of the batch and, with `flip`, its mirror): a GPU
    # is busy only with several; 8 covers the 2 x 4 windows of a 1024 x 2048 Cityscapes image at 769 / 513.
    batch_windows: int = Field(8, ge=1)
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    # (long, short): mmsegmentation's test pipeline fits each image into this base scale (aspect kept)
    # before the `scales`, and scores the prediction at the native size. None: scale the native size.
    base_size: tuple[int, int] | None = None
    max_images: int | None = Field(None, ge=1)

    _base_size = field_validator("base_size")(_check_base_size)

    @model_validator(mode="after")
    def _slide_needs_geometry(self) -> "EvalConfig":
        if self.mode == "slide" and (self.slide_crop is None or self.slide_stride is None):
            raise ValueError("mode 'slide' needs slide_crop and slide_stride")
        return self


class PaperRow(Strict):
    """The paper's number that a variant reproduces, shown beside ours in reports."""

    table: str
    row: str
    miou: float


class Recipe(Strict):
    """One fully resolved training configuration (a single sweep variant)."""

    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    paper: PaperRow | None = None


def _check_across_sections(recipe: Recipe) -> None:
    """Rules that tie keys of different sections together, each error located at one key."""
    model = recipe.model
    if model.pretrained and model.pretrained_source == "digits" and recipe.data.dataset != "digit_scenes":
        raise RecipeError("model.pretrained_source", "the digits stand-in only fits data.dataset: digit_scenes")
    if recipe.eval.split == "test" and recipe.data.dataset != "digit_scenes":
        raise RecipeError("eval.split", f"{recipe.data.dataset} publishes no test labels: score its test split "
                          "on the benchmark's server (python -m harness.evaluate RUN --export DIR --split test)")
    if recipe.eval.split == "test" and recipe.eval.interval:
        raise RecipeError("eval.interval", "a test split is scored once, at the end: set eval.interval: 0")


class SweepSpec(Strict):
    """How one recipe file expands into runs: a grid plus named extra points, each once per seed."""

    grid: dict[str, list[Any]] = {}
    variants: dict[str, dict[str, Any]] = {}
    paper: dict[str, PaperRow] = {}
    # Each variant once per seed (run.seed set to it), into <variant>/seed-<k>/; empty: once, at run.seed.
    seeds: list[int] = []
    # The CE variant deltas are paired against; unset: the only variant without a contrastive loss.
    baseline: str | None = None
    # The smallest Δ mIoU (a fraction: 0.005 = 0.5 pp) the study means to detect, for its power and planning;
    # and the margin inside which a variant counts as equivalent to the baseline.
    target_delta: float = Field(0.005, gt=0)
    equivalence_margin: float = Field(0.005, gt=0)
    # fixed: every variant runs every seed, and the report decides once all have finished. sequential: seeds in
    # the order `seeds` lists them, looked at after `looks` of them (seed counts, the last = max_seeds, default
    # len(seeds)); a variant stops at the first look that decides it (README: "Sequential studies").
    design: Literal["fixed", "sequential"] = "fixed"
    max_seeds: int | None = Field(None, ge=3)
    looks: list[int] | None = None

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("seeds must be distinct")
        return value

    @model_validator(mode="before")
    @classmethod
    def _max_seeds_default_to_the_seeds_listed(cls, tree: Any) -> Any:
        if isinstance(tree, dict) and tree.get("design") == "sequential" and tree.get("max_seeds") is None:
            return {**tree, "max_seeds": len(tree.get("seeds") or [])}
        return tree

    @model_validator(mode="after")
    def _a_sequential_design_is_planned(self) -> "SweepSpec":
        if self.design == "fixed":
            if self.max_seeds is not None or self.looks is not None:
                raise ValueError("max_seeds and looks belong to design: sequential")
            return self
        max_seeds = self.max_seeds
        if not self.seeds or max_seeds > len(self.seeds):
            raise ValueError(f"a sequential design lists its seeds in order, at least max_seeds ({max_seeds}) of them")
        looks = self.looks or []
        if not looks or looks != sorted(set(looks)) or looks[0] < 3 or looks[-1] != max_seeds:
            raise ValueError(f"a sequential design names its looks: increasing seed counts from 3 on, the last "
                             f"{max_seeds} (max_seeds), e.g. [5, 10, {max_seeds}]; `harness plan --design sequential` "
                             "suggests some")
        return self


# Where a run writes, not what it computes: never part of its fingerprint.
RUN_MANAGEMENT_KEYS = ("run.output_dir", "run.reports_dir", "run.reference")
# What a resumed run may change, each only when --allow-change names it: how the run is watched, saved,
# fed or scored, never what it trains.
CHANGEABLE_MID_RUN = (
    "run.log_interval", "run.checkpoint_interval", "run.checkpoint_minutes", "run.keep_checkpoint",
    "run.cost_probe", "run.compile", "run.trackers", "data.num_workers", "data.root", "data.prepare", "data.cache_dir", "eval.*",
)


def flat_keys(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {dotted key: leaf value}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        flat.update(flat_keys(value, f"{dotted}.") if isinstance(value, dict) else {dotted: value})
    return flat


def fingerprinted(tree: dict[str, Any]) -> dict[str, Any]:
    """The dotted keys of a resolved recipe's mapping that its fingerprint covers: all but RUN_MANAGEMENT_KEYS."""
    return {key: value for key, value in flat_keys(tree).items() if key not in RUN_MANAGEMENT_KEYS}


def fingerprint(recipe: Recipe) -> str:
    """SHA-256 of what a run computes from: every resolved key except where it writes."""
    canonical = json.dumps(fingerprinted(recipe.model_dump(mode="json")), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def changed_keys(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two recipes' mappings (added or removed ones too)."""
    old, new = fingerprinted(before), fingerprinted(after)
    return sorted(key for key in old.keys() | new.keys() if old.get(key, _ABSENT) != new.get(key, _ABSENT))


def disallowed_changes(keys: list[str], allowed: list[str]) -> list[str]:
    """Of changed `keys`, those no --allow-change pattern permits; a pattern must lie inside CHANGEABLE_MID_RUN."""
    unsafe = [pattern for pattern in allowed if not any(fnmatch.fnmatch(pattern, safe) for safe in CHANGEABLE_MID_RUN)]
    if unsafe:
        raise RecipeError("--allow-change", f"{', '.join(unsafe)} cannot change mid-run; only "
                          f"{', '.join(CHANGEABLE_MID_RUN)} can")
    return [key for key in keys if not any(fnmatch.fnmatch(key, pattern) for pattern in allowed)]


_ABSENT = object()


def with_batch_plan(recipe: Recipe, world_size: int) -> Recipe:
    """The recipe with its per-process micro-batch and accumulation steps derived from data.global_batch_size.

    Each of the world_size processes takes global / world_size images per optimizer step, in the fewest
    equal micro-batches of at most data.batch_size; without a global batch the recipe is returned as is.
    """
    data = recipe.data
    if data.global_batch_size is None:
        return recipe
    share, remainder = divmod(data.global_batch_size, world_size)
    if remainder or share == 0:
        raise RecipeError("data.global_batch_size", f"{data.global_batch_size} images do not split evenly over "
                          f"{world_size} processes; launch a number of processes that divides it")
    steps = next(count for count in range(-(-share // data.batch_size), share + 1) if share % count == 0)
    return recipe.model_copy(update={
        "data": data.model_copy(update={"batch_size": share // steps}),
        "optim": recipe.optim.model_copy(update={"grad_accum_steps": steps}),
    })


class Variant(BaseModel):
    """One run of a sweep: a named point, its seed (None outside a seeded sweep) and its resolved recipe."""

    model_config = ConfigDict(frozen=True)
    name: str
    recipe: Recipe
    seed: int | None = None


def set_dotted(tree: dict[str, Any], dotted_key: str, value: Any) -> None:
    """Set `tree[a][b][c] = value` for `dotted_key` 'a.b.c', creating sections."""
    *parents, leaf = dotted_key.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(dotted_key, f"'{part}' is a value, not a section")
        node = child
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split a `--set a.b=value` argument; the value is read as YAML (so 8 is an int)."""
    key, sep, raw = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
        raise RecipeError(text, "an override must look like dotted.key=value")
    return key, yaml.safe_load(raw)


def _dotted_location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


def validate(tree: dict[str, Any]) -> Recipe:
    """Validate a raw mapping into a Recipe; the first error becomes a RecipeError."""
    try:
        recipe = Recipe.model_validate(tree)
    except ValidationError as error:
        first = error.errors()[0]
        raise RecipeError(_dotted_location(first["loc"]), first["msg"]) from None
    _check_across_sections(recipe)
    return recipe


def _variant_name(overrides: dict[str, Any]) -> str:
    """A filesystem-safe name such as 'kind-region_bank_size-1000'."""
    parts = [f"{key.rsplit('.', 1)[-1]}-{value}" for key, value in overrides.items()]
    return re.sub(r"[^\w.\-]+", "_", "_".join(parts)) or "default"


def _grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise RecipeError(f"sweep.grid.{key}", "must be a non-empty list of values")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*grid.values())]


def _named_points(spec: SweepSpec) -> dict[str, dict[str, Any]]:
    """Every sweep point by name: the grid first, then the explicit variants."""
    points = {_variant_name(point): point for point in _grid_points(spec.grid)} if spec.grid else {}
    for name, overrides in spec.variants.items():
        if name in points:
            raise RecipeError(f"sweep.variants.{name}", "duplicates a grid variant's name")
        points[name] = overrides
    return points or {"default": {}}


def sweep_spec(tree: dict[str, Any]) -> SweepSpec:
    """The validated `sweep` section of a raw recipe mapping."""
    try:
        return SweepSpec.model_validate(tree.get("sweep") or {})
    except ValidationError as error:
        first = error.errors()[0]
        raise RecipeError("sweep." + _dotted_location(first["loc"]), first["msg"]) from None


def expand(tree: dict[str, Any], overrides: list[tuple[str, Any]] = ()) -> list[Variant]:
    """Expand a raw recipe mapping into validated runs; see expand_sweep."""
    return expand_sweep(tree, overrides)[0]


def expand_sweep(tree: dict[str, Any], overrides: list[tuple[str, Any]] = ()) -> tuple[list[Variant], SweepSpec]:
    """Validated runs, variant-major then seed, and the sweep section; `overrides` apply to all.

    An override of a `sweep.` key changes the sweep itself (e.g. `sweep.seeds=[0,1,2]`).
    """
    base = copy.deepcopy(tree)
    for key, value in overrides:
        set_dotted(base, key, value)
    spec = sweep_spec(base)
    base.pop("sweep", None)
    variants = []
    for name, point in _named_points(spec).items():
        resolved = copy.deepcopy(base)
        for key, value in point.items():
            set_dotted(resolved, key, value)
        if name in spec.paper:
            resolved["paper"] = spec.paper[name].model_dump()
        for seed in spec.seeds or [None]:
            if seed is not None:
                set_dotted(resolved, "run.seed", seed)
            try:
                recipe = validate(resolved)
            except RecipeError as error:
                raise RecipeError(error.key, f"{error.message} (sweep variant '{name}')") from None
            variants.append(Variant(name=name, recipe=recipe, seed=seed))
    names = {variant.name for variant in variants}
    for section, named in (("paper", spec.paper), ("baseline", [spec.baseline] if spec.baseline else [])):
        unknown = set(named) - names
        if unknown:
            key = f"sweep.{section}.{sorted(unknown)[0]}" if section == "paper" else "sweep.baseline"
            raise RecipeError(key, "names no variant")
    return variants, spec


def load(path: str | Path, overrides: list[str] = ()) -> list[Variant]:
    """Read a recipe file, apply `--set` overrides and expand its sweep."""
    return load_sweep(path, overrides)[0]


def load_sweep(path: str | Path, overrides: list[str] = ()) -> tuple[list[Variant], SweepSpec]:
    """Read a recipe file, apply `--set` overrides; its runs and its sweep section."""
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise RecipeError("<file>", "recipe file not found", path) from None
    except yaml.YAMLError as error:
        raise RecipeError("<file>", f"not valid YAML: {error}", path) from None
    if not isinstance(tree, dict):
        raise RecipeError("<root>", "a recipe must be a mapping of sections", path)
    tree.setdefault("run", {}).setdefault("name", path.stem)
    try:
        return expand_sweep(tree, [parse_override(text) for text in overrides])
    except RecipeError as error:
        raise error.located(path) from None
