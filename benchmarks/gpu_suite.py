"""One command for a lent GPU: step time, MFU and memory at Cityscapes scale, evaluation speed, a profile,
a batch sweep, Eq. 4 at ADE20K scale, data loading with and without the training loop, and an end-to-end
training smoke run with a kill and a resume, as one markdown report (naming the card) and one JSON file.

    python benchmarks/gpu_suite.py --out results/gpu_suite            # one H100 / H200 (about 15 min, estimated)
    python benchmarks/gpu_suite.py --tiny --out /tmp/gpu_suite        # the same sections on a CPU, small
    python benchmarks/gpu_suite.py --out DIR --sections training,evaluation   # some sections only

Sections, in order; each runs in its own try/except (an error is recorded in the table and the JSON
and the suite goes on), and past --budget-s the remaining ones are skipped with a note. Every ratio
comes with its spread over repeats (quartiles and n).

- matmul: a bf16 N^3 matrix product on random data, the achievable ceiling beside the datasheet peak.
- training: DeepLabV3 on a dilated ResNet-50 (OS 8, aux head on stage 3), 769x769, batch 8, bf16
  autocast, channels_last and cudnn.benchmark on in every row, on synthetic blob scenes of 19 classes
  generated on the device once (a few distinct batches, cycled). Rows: a bare PyTorch loop, the
  harness Trainer with CE, + RegionContrast (full 19 x 2975 bank), + in-batch (bank 0), + ContrastiveSeg
  pixel queues (19 x 5000 each, full), and CE and RegionContrast again with run.compile: true (what
  run.compile: auto gives on a GPU). Rows alternate with the cost probe's paired timer
  (harness.engine.probe.alternate): each round steps every row twice on one batch, in mirrored order
  (bare, CE, region, ..., region, CE, bare), so that a load change hits all of them alike; a ratio is
  the median over rounds of the two rows' per-round sums. Step times come from SpanTimer (CUDA events
  on a GPU), read after the timed loop.
- evaluation: images/s of whole-image, slide (769 / 513) and multi-scale (0.5-1.75) + flip slide
  prediction of 1024x2048 images, with eval.batch_windows windows per forward and with one.
- profile: one RegionContrast step under torch.profiler, the top kernels by device time.
- batch_sweep: the RegionContrast step at batch 8, 16 and 24: s/iter and the allocator's peak reserved memory.
- sync: on a GPU, one non-logging harness step of each kind under torch.cuda.set_sync_debug_mode("warn"):
  every CUDA call that makes the host wait, with where it came from (expected: none but the pixel
  queues' data-dependent sampling).
- eq4: one forward + backward of Eq. 4, 160 queries against a full 150 x 20210 x 256 bank (ADE20K),
  streamed (harness) against direct (the whole score matrix under autograd, float32).
- loader: harness/run.py at 769 px on a generated Cityscapes-layout tree of 1024x2048 PNGs with 16
  loader workers: images/s with the loader in the loop, against the training section's synthetic CE row.
- data_loading: benchmarks/data_loading.py as a subprocess, with this machine's cores.
- smoke: the quickstart recipe under `accelerate launch`, SIGKILLed once its region variant has a
  checkpoint, then resumed: both summaries ok, report.md written, and the resumed region bank equal in
  pointers and fill (bitwise, on a CPU) to that of an uninterrupted run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import accelerate
import psutil
import timm
import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from PIL import Image
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import GEOMETRIES, TAU, batch_queries, dense_bank_loss, fill_bank  # noqa: E402
from harness import results  # noqa: E402
from harness.contrast import RegionBank, region_contrast_loss  # noqa: E402
from harness.engine import build, make_context, prepare, probe  # noqa: E402
from harness.engine.evaluate import predict  # noqa: E402
from harness.labels import IGNORE_INDEX  # noqa: E402
from harness.measure import PeakMemory, SpanTimer, device_name  # noqa: E402
from harness.models import SegmentationModel, build_model  # noqa: E402
from harness.ops import IMAGENET, normalize  # noqa: E402
from harness.recipe import EvalConfig, Recipe  # noqa: E402
from harness.results import METRICS_FILE, SUMMARY_FILE, read_metrics, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CITYSCAPES = GEOMETRIES["cityscapes"]
ADE20K = GEOMETRIES["ade20k"]
# Dense bf16 tensor-core FLOP/s of the SXM cards (datasheets); PCIe and NVL parts run lower clocks.
BF16_PEAKS = {"H100": 989.4e12, "H200": 989.4e12}
PRESENT = 0.6  # the share of the 19 classes an image shows (Cityscapes images show about 10-12)
SEAM = 0.01  # score margin under which a pixel lies on a region boundary and is ignored
NOISE = 12.0  # sensor noise (uint8 levels) over each region's colour
DATA_LOADING_LIMIT_S = 150  # a stuck loader must not starve the smoke run after it
GB, MB = 1e9, 1e6
Batch = dict[str, Tensor]
Step = Callable[[Batch, int], object]


@dataclass(frozen=True)
class Scale:
    """Sizes and step counts of one suite mode."""

    backbone: str
    crop: int
    batch: int
    head_channels: int
    region_bank: int  # region slots per class
    pixel_memory: int  # slots per class in each pixel queue
    ade_bank: int  # slots per class of the 150-class Eq. 4 bank
    matmul: int  # side of the square bf16 matrix product
    launch_config: str  # accelerate config of the smoke run
    smoke_sets: tuple[str, ...]  # --set overrides of the smoke run
    smoke_env: tuple[tuple[str, str], ...] = ()  # environment variables of the smoke run
    threads: int | None = None  # torch CPU threads; None keeps torch's default
    batches: int = 4  # distinct batches, cycled
    warmup: int = 5  # steps per row before the rounds (not timed)
    rounds: int = 12  # timed rounds, each two steps of every row (harness.engine.probe.alternate)
    eq4_warmup: int = 3
    eq4_repeats: int = 10
    compiled_rows: tuple[str, ...] = ("ce_compiled", "region_compiled")  # training rows with run.compile: true
    image_size: tuple[int, int] = (1024, 2048)  # (height, width) of the evaluated and the loaded images
    eval_window: tuple[int, int] = (CITYSCAPES.crop, 513)  # slide crop and stride (mmsegmentation's Cityscapes)
    eval_scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    eval_rounds: int = 3  # each protocol times one image per round
    sweep_batches: tuple[int, ...] = (8, 16, 24)
    sweep_steps: int = 6  # timed steps per batch size, after `warmup`
    loader_images: int = 48  # training images of the generated Cityscapes tree
    loader_workers: int = 16
    loader_iterations: int = 40


FULL = Scale(
    "resnet50", CITYSCAPES.crop, 8, 256, CITYSCAPES.train_images, 5000, ADE20K.train_images, 8192, "launch/gpu.yaml",
    ("optim.iterations=50", "run.checkpoint_interval=20", "eval.interval=25"), rounds=20,
)
# A shared 2-core CPU: one thread (a second mostly waits at barriers), a resnet10t at 64x64. The smoke
# run loads its 32 px scenes in the training process (a loader worker would compete for the 2 cores),
# and its OpenMP threads (run.py uses every core) sleep rather than spin at barriers: spinning on a
# loaded 2-core machine made steps 25x slower (3.3 s instead of 0.13 s) in bursts.
TINY = Scale(
    "resnet10t", 64, 2, 64, 200, 500, 500, 512, "accelerate_config.yaml",
    ("optim.iterations=12", "run.checkpoint_interval=4", "eval.interval=6", "data.digit_scenes.train_images=32",
     "data.digit_scenes.val_images=8", "data.digit_scenes.image_size=32", "data.crop_size=32",
     "model.backbone=resnet10t", "data.num_workers=0", "run.cost_probe=false"),  # 88 probe steps after 12
    smoke_env=(("OMP_WAIT_POLICY", "PASSIVE"),), threads=1, rounds=12, eq4_warmup=1, eq4_repeats=3,
    compiled_rows=(), image_size=(64, 128), eval_window=(48, 32), eval_scales=(0.5, 1.0, 1.5),
    sweep_batches=(2, 4, 6), sweep_steps=2, loader_images=8, loader_workers=1, loader_iterations=8,
)


# ---------------------------------------------------------------- small helpers


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def in_use(device: torch.device) -> int:
    """Bytes in use now: the CUDA allocator's, else the process's resident set."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return psutil.Process().memory_info().rss


def error_text(error: BaseException) -> str:
    """An exception as one line."""
    return f"{type(error).__name__}: {error}".splitlines()[0]


def fmt(value: float | None, spec: str) -> str:
    """A table cell: `value` formatted, or blank."""
    return "" if value is None else format(value, spec)


def remaining(deadline: float) -> float:
    """Seconds left before the budget runs out."""
    return deadline - time.monotonic()


# ---------------------------------------------------------------- synthetic scenes


def synthetic_batch(batch: int, size: int | tuple[int, int], generator: torch.Generator) -> Batch:
    """uint8 images [B,3,H,W] and int64 labels [B,H,W] of blobby class regions (`size`: H = W, or (H, W)),
    made on the generator's device.

    A random score per class on a coarse grid, bicubically upsampled, gives regions with smooth
    curved boundaries at the scale of objects; pixels where the two best classes nearly tie are
    ignored, like the thin unlabelled seams of Cityscapes' annotations.
    """
    device, classes = generator.device, CITYSCAPES.num_classes
    height, width = (size, size) if isinstance(size, int) else size
    cells = max(4, min(height, width) // 96)  # about 8 x 8 cells at 769, 4 x 4 at 64
    scores = torch.rand(batch, classes, cells, cells * width // height, generator=generator, device=device)
    absent = torch.rand(batch, classes, 1, 1, generator=generator, device=device) > PRESENT
    scores = scores.masked_fill(absent, -1.0)  # an absent class never wins a cell
    smooth = F.interpolate(scores, size=(height, width), mode="bicubic", align_corners=False)  # [B,N,c,c'] -> [B,N,H,W]
    best = smooth.topk(2, dim=1).values  # [B,2,H,W]
    labels = smooth.argmax(1).masked_fill(best[:, 0] - best[:, 1] < SEAM, IGNORE_INDEX)  # [B,H,W]
    palette = torch.randint(0, 256, (classes + 1, 3), generator=generator, device=device).float()  # last: ignored
    colours = palette[labels.clamp(max=classes)].permute(0, 3, 1, 2)  # [B,H,W,3] -> [B,3,H,W]
    noise = NOISE * torch.randn(colours.shape, generator=generator, device=device)
    images = (colours + noise).clamp(0, 255).to(torch.uint8)
    return {"image": images, "label": labels}


def batch_bytes(batch: Batch) -> int:
    """Bytes of one batch's tensors."""
    return sum(tensor.nbytes for tensor in batch.values())


# ---------------------------------------------------------------- the training rows


def suite_recipe(scale: Scale, contrast: dict[str, Any], compile_model: bool = False) -> Recipe:
    """The Cityscapes DeepLabV3 recipe at `scale`, with `contrast` as loss.contrast."""
    return Recipe.model_validate({
        "run": {"name": "gpu_suite", "compile": compile_model},
        "data": {"dataset": "cityscapes", "crop_size": scale.crop, "batch_size": scale.batch},
        "model": {
            "backbone": scale.backbone, "pretrained": False, "output_stride": 8, "head": "deeplabv3",
            "head_channels": scale.head_channels, "aux_head": True, "aux_channels": scale.head_channels,
            "channels_last": True,
        },
        "loss": {"kind": "ce", "aux_weight": 0.4, "contrast": contrast},
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
    })


COMPILED = "_compiled"  # the suffix of a row that is its eager namesake with run.compile: true


def row_settings(scale: Scale) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each row's name: its label and loss.contrast (the bare row reads only the model settings)."""
    classes = CITYSCAPES.num_classes
    eager = {
        "bare": ("bare PyTorch loop", {"kind": "none"}),
        "ce": ("harness, CE", {"kind": "none"}),
        "region": (f"RegionContrast, full {classes}x{scale.region_bank} bank",
                   {"kind": "region", "bank_size": scale.region_bank}),
        "in_batch": ("RegionContrast in-batch (bank 0)", {"kind": "region", "bank_size": 0}),
        "pixel": (f"ContrastiveSeg pixel queues, full {classes}x{scale.pixel_memory}",
                  {"kind": "pixel", "tau": 0.07, "pixel": {"memory_size": scale.pixel_memory}}),
    }
    rows = {}
    for name, (label, contrast) in eager.items():
        rows[name] = (label, contrast)
        if name + COMPILED in scale.compiled_rows:
            rows[name + COMPILED] = (f"{label}, run.compile", contrast)
    return rows


@dataclass
class Row:
    """One training configuration under test: its step, timers and memory."""

    name: str
    label: str
    step: Step | None  # None once it failed
    contrast_timer: SpanTimer | None = None
    bank_fill: float | None = None
    resident_bytes: int = 0  # what building and warming it left allocated (model, optimizer state, bank)
    extra_bytes: int = 0  # the most any timed step allocated above what was in use before the rounds
    error: str | None = None
    seconds: list[float] = dataclasses.field(default_factory=list)  # its timed steps, two a round


def seeded_model(recipe: Recipe, device: torch.device) -> SegmentationModel:
    """The recipe's model on `device`, from the same initial weights in every row."""
    torch.manual_seed(0)
    return build_model(recipe.model, CITYSCAPES.num_classes).to(device)


def bare_loss(model: torch.nn.Module, batch: Batch) -> Tensor:
    """CE + 0.4 aux CE on logits interpolated to the labels, all under plain bf16 autocast."""
    labels = batch["label"]
    with torch.autocast(labels.device.type, dtype=torch.bfloat16):
        output = model(normalize(batch["image"], torch.float32, IMAGENET))
        size = tuple(labels.shape[-2:])
        logits = F.interpolate(output.logits, size=size, mode="bilinear", align_corners=False)
        aux = F.interpolate(output.aux_logits, size=size, mode="bilinear", align_corners=False)
        return (F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
                + 0.4 * F.cross_entropy(aux, labels, ignore_index=IGNORE_INDEX))


def bare_row(label: str, recipe: Recipe, device: torch.device, scale: Scale) -> Row:
    """The same model with nothing else of the harness: autocast, two CEs, SGD."""
    model = seeded_model(recipe, device)
    optim = recipe.optim
    optimizer = torch.optim.SGD(model.parameters(), lr=optim.lr, momentum=optim.momentum,
                                weight_decay=optim.weight_decay)

    def step(batch: Batch, iteration: int) -> None:
        bare_loss(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return Row("bare", label, step)


def harness_row(name: str, label: str, recipe: Recipe, device: torch.device, scale: Scale) -> Row:
    """harness.engine's Trainer under a bf16 Accelerator; its bank, if any, filled to the brim."""
    accelerator = Accelerator(mixed_precision="bf16")
    classes = CITYSCAPES.num_classes
    torch.manual_seed(0)  # the same initial weights in every row
    ctx = make_context(accelerator, recipe)
    trainer, _ = prepare(ctx, build(ctx, classes, CITYSCAPES.train_images))  # as set_up makes it, without data
    fill = None
    if trainer.bank is not None:
        fill_bank(trainer.bank, classes, torch.Generator(device).manual_seed(0))
        fill = float(trainer.bank.fill())
        if fill != 1.0:
            raise RuntimeError(f"the {name} bank is only {fill:.3f} full after filling")
    trainer.contrast_timer.warmup = scale.warmup
    return Row(name, label, trainer.step, trainer.contrast_timer if trainer.contrast is not None else None, fill)


def warm_row(build: Callable[[], Row], batches: list[Batch], scale: Scale, device: torch.device) -> Row:
    """Build a row and run its warm-up steps (cuDNN's autotuning among them)."""
    before = in_use(device)
    row = build()
    for iteration in range(scale.warmup):
        row.step(batches[iteration % len(batches)], iteration)
    sync(device)
    row.resident_bytes = in_use(device) - before
    return row


def paired_step(row: Row) -> probe.Step:
    """The row's step on a round's one batch; a failure is recorded and the row drops out, the others go on."""
    def step(micro_batches: list[Batch], iteration: int) -> None:
        if row.step is None:
            return
        try:
            row.step(micro_batches[0], iteration)
        except Exception as error:  # noqa: BLE001 - one failing row must not lose the others
            row.error, row.step = f"timed rounds: {error_text(error)}", None
            print(f"  row {row.name} failed: {row.error}", flush=True)
    return step


def run_rounds(rows: list[Row], batches: list[Batch], scale: Scale, device: torch.device) -> None:
    """Every live row's step, paired in mirrored order on each round's batch (harness.engine.probe.alternate): each
    row's step times and the most a step allocated above what all rows held before the rounds."""
    live = [row for row in rows if row.step is not None]
    sync(device)
    floor = in_use(device)
    shared = ([batches[round_index % len(batches)]] for round_index in range(scale.rounds))
    clock, memory = probe.alternate({row.name: paired_step(row) for row in live}, shared, scale.rounds,
                                    scale.warmup, device)
    for row in live:
        row.seconds = clock.seconds(row.name)
        row.extra_bytes = max(0, memory.phases[row.name] - floor)


def paired_ratios(row: Row, reference: Row | None) -> list[float] | None:
    """Per round, row's steps over reference's (None without a reference)."""
    if reference is None or reference.error is not None:
        return None
    return probe.round_ratios(row.seconds, reference.seconds)


def spread(values: list[float] | None) -> dict[str, Any] | None:
    """Median, quartiles and count of repeated measurements of one ratio (None without any)."""
    if not values:
        return None
    low, _, high = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return {"median": statistics.median(values), "q1": low, "q3": high, "n": len(values)}


def spread_cell(value: dict[str, Any] | None) -> str:
    """A ratio's table cell: median (quartiles over n repeats)."""
    if value is None:
        return ""
    return f"{value['median']:.3f} ({value['q1']:.3f}-{value['q3']:.3f}, n={value['n']})"


def step_flops(recipe: Recipe, batch: Batch, device: torch.device) -> int:
    """FLOPs of one forward + backward of the model on `batch` under bf16 autocast (FlopCounterMode)."""
    model = seeded_model(recipe, device)
    with FlopCounterMode(display=False) as counter:
        bare_loss(model, batch).backward()
    return counter.get_total_flops()


def peak_rate(device: torch.device, matmul: dict[str, Any]) -> tuple[float | None, str]:
    """The bf16 FLOP/s MFU is measured against, and where it comes from."""
    name = device_name(device)
    if device.type == "cuda" and "PCIe" not in name and "NVL" not in name:
        for card, peak in BF16_PEAKS.items():
            if card in name:
                return peak, f"{card} SXM dense bf16 datasheet peak"
    if matmul.get("flops_per_s"):
        return matmul["flops_per_s"], "the measured bf16 matmul rate (no datasheet peak known for this device)"
    return None, "no peak known and no matmul measured"


def row_result(row: Row, rows: dict[str, Row], scale: Scale, flops: int | None, peak: float | None,
               one_batch: int) -> dict[str, Any]:
    """A row's numbers (its timers flushed): medians, throughput, MFU, memory, contrast time, paired ratios."""
    if row.error is not None:
        return {"label": row.label, "error": row.error}
    seconds = statistics.median(row.seconds)
    contrast = 1000 * row.contrast_timer.median() if row.contrast_timer is not None else None
    rate = flops / seconds if flops else None
    eager = row.name.removesuffix(COMPILED)
    harness, contrasted, compiled = row.name != "bare", eager not in ("bare", "ce"), eager != row.name
    return {
        "label": row.label, "s_per_iter": seconds, "images_per_s": scale.batch / seconds,
        "tflops_per_s": rate / 1e12 if rate else None, "mfu": rate / peak if rate and peak else None,
        "peak_memory_bytes": row.resident_bytes + one_batch + row.extra_bytes, "contrast_ms": contrast,
        "ratio_to_bare": spread(paired_ratios(row, rows.get("bare")) if harness else None),
        "ratio_to_ce": spread(paired_ratios(row, rows.get("ce")) if contrasted else None),
        "ratio_to_eager": spread(paired_ratios(row, rows.get(eager)) if compiled else None),
        "bank_fill": row.bank_fill, "timed_steps": len(row.seconds), "warmup_steps": scale.warmup,
        "steps": row.seconds,
    }


def training_section(scale: Scale, device: torch.device, report: dict[str, Any]) -> dict[str, Any]:
    """Every training row, interleaved in rounds, with FLOPs, MFU and memory."""
    generator = torch.Generator(device).manual_seed(0)
    batches = [synthetic_batch(scale.batch, scale.crop, generator) for _ in range(scale.batches)]
    labels = torch.stack([batch["label"] for batch in batches])
    ignored = float((labels == IGNORE_INDEX).float().mean())
    images = labels.flatten(0, 1)  # [n,B,H,W] -> [nB,H,W]
    classes = sum(int((image.unique() != IGNORE_INDEX).sum()) for image in images) / len(images)
    settings = row_settings(scale)
    flops, flops_error = None, None
    try:
        flops = step_flops(suite_recipe(scale, {"kind": "none"}), batches[0], device)
    except Exception as error:  # noqa: BLE001 - the rows are worth having without MFU
        flops_error = error_text(error)
    gc.collect()
    rows: dict[str, Row] = {}
    for name, (label, contrast) in settings.items():
        recipe = suite_recipe(scale, contrast, compile_model=name.endswith(COMPILED))
        build = (partial(bare_row, label, recipe, device, scale) if name == "bare"
                 else partial(harness_row, name, label, recipe, device, scale))
        print(f"  building and warming up: {label}", flush=True)
        try:
            rows[name] = warm_row(build, batches, scale, device)
        except Exception as error:  # noqa: BLE001 - one failing row must not lose the others
            rows[name] = Row(name, label, None, error=f"build/warm-up: {error_text(error)}")
            print(f"  row {name} failed: {rows[name].error}\n{traceback.format_exc()}", flush=True)
    print(f"  timing {scale.rounds} rounds x {probe.STEPS_PER_ROUND} steps per row", flush=True)
    run_rounds(list(rows.values()), batches, scale, device)
    for row in rows.values():
        if row.error is None and row.contrast_timer is not None:  # a failed row may hold a span it never closed
            row.contrast_timer.flush()
    matmul = report["sections"].get("matmul", {})
    peak, peak_source = peak_rate(device, matmul)
    one_batch = batch_bytes(batches[0])
    return {
        "flops_per_step": flops, "flops_error": flops_error, "peak_flops_per_s": peak, "peak_source": peak_source,
        "matmul_flops_per_s": matmul.get("flops_per_s"),
        "memory_kind": PeakMemory(device).kind, "batch_bytes": one_batch, "ignored_fraction": ignored,
        "classes_per_image": classes,
        "rows": {name: row_result(row, rows, scale, flops, peak, one_batch) for name, row in rows.items()},
    }


def training_table(result: dict[str, Any]) -> list[str]:
    """The training rows as markdown."""
    memory = "peak mem GB (CUDA allocated)" if result["memory_kind"] == "cuda_max_allocated" else "peak RSS GB"
    lines = [
        f"| row | s/iter | images/s | TFLOP/s | MFU | {memory} | contrast ms | vs bare | vs CE | vs eager | bank fill |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"].values():
        if "error" in row:
            lines.append(f"| {row['label']} | error: {row['error']} |")
            continue
        cells = [
            row["label"], fmt(row["s_per_iter"], ".4f"), fmt(row["images_per_s"], ".1f"),
            fmt(row["tflops_per_s"], ".3g"), fmt(row["mfu"], ".1%"),
            fmt(row["peak_memory_bytes"] / GB, ".2f"), fmt(row["contrast_ms"], ".2f"),
            spread_cell(row["ratio_to_bare"]), spread_cell(row["ratio_to_ce"]), spread_cell(row["ratio_to_eager"]),
            fmt(row["bank_fill"], ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    flops, peak, matmul = result["flops_per_step"], result["peak_flops_per_s"], result["matmul_flops_per_s"]
    ceiling = f" (the bf16 matmul reached {matmul / peak:.0%} of it)" if peak and matmul and peak != matmul else ""
    lines += [
        "",
        f"FLOPs of one forward + backward at this geometry (FlopCounterMode, bf16 autocast): "
        f"{flops / 1e12:.3g} TFLOP per step" if flops else f"FLOPs not counted: {result['flops_error']}",
        f"MFU against {peak / 1e12:.4g} TFLOP/s, {result['peak_source']}{ceiling}" if peak else "MFU: no peak",
        f"synthetic labels: {result['classes_per_image']:.1f} classes per image, "
        f"{100 * result['ignored_fraction']:.1f}% ignored; peak memory = the row's resident state + one batch "
        f"({result['batch_bytes'] / MB:.0f} MB) + the most its timed steps allocated above that",
        "ratios: the median over rounds of the two rows' steps in the round, paired in mirrored order "
        "(quartiles over the rounds, n rounds); "
        "vs eager: a run.compile row against its eager namesake",
    ]
    return lines


# ---------------------------------------------------------------- evaluation


def eval_protocols(scale: Scale) -> dict[str, tuple[str, EvalConfig]]:
    """Each evaluation row: its label and protocol; an `_unbatched` row sends one slide window per forward."""
    crop, stride = scale.eval_window
    slide = EvalConfig(mode="slide", slide_crop=crop, slide_stride=stride)
    ms_flip = slide.model_copy(update={"scales": scale.eval_scales, "flip": True})
    one = {"batch_windows": 1}
    scales = ", ".join(map(str, scale.eval_scales))
    return {
        "whole": ("whole image", EvalConfig()),
        "slide": (f"slide {crop} / {stride}, {slide.batch_windows} windows per forward", slide),
        "slide_unbatched": (f"slide {crop} / {stride}, 1 window per forward", slide.model_copy(update=one)),
        "ms_flip": (f"slide, scales {scales} + flip, {slide.batch_windows} windows (x2 flips) per forward", ms_flip),
        "ms_flip_unbatched": (f"slide, scales {scales} + flip, 1 window (x2 flips) per forward",
                              ms_flip.model_copy(update=one)),
    }


def evaluation_section(scale: Scale, device: torch.device) -> dict[str, Any]:
    """images/s of each protocol, one image at a time (as real datasets are evaluated), under a bf16 Accelerator.

    Protocols alternate within rounds, the order reversed every other round; round 0 warms up
    (cuDNN picks its kernels per shape) and is not kept. The eager model: a run.compile model
    recompiles for evaluation's shapes, which this section does not time.
    """
    recipe = suite_recipe(scale, {"kind": "none"})
    # Accelerate's prepare wraps the forward in autocast and hands back fp32 outputs, as in a run.
    model = Accelerator(mixed_precision="bf16").prepare(seeded_model(recipe, device)).eval()
    images = synthetic_batch(2, scale.image_size, torch.Generator(device).manual_seed(2))["image"]
    protocols = eval_protocols(scale)
    timers = {name: SpanTimer(device, warmup=1) for name in protocols}
    extra = dict.fromkeys(protocols, 0)
    names = list(protocols)
    with torch.no_grad():
        for round_index in range(scale.eval_rounds + 1):
            image = normalize(images[round_index % len(images)][None], torch.float32, IMAGENET)  # [1,3,H,W]
            for name in names if round_index % 2 == 0 else names[::-1]:
                sync(device)
                before = in_use(device)
                with PeakMemory(device) as memory:
                    timers[name].start()
                    predict(model, image, protocols[name][1], align_corners=recipe.model.align_corners).argmax(1)
                    timers[name].stop()
                    sync(device)
                extra[name] = max(extra[name], memory.read() - before)
    rows = {}
    for name, (label, _) in protocols.items():
        timers[name].flush()
        seconds = timers[name].seconds
        rows[name] = {"label": label, "images_per_s": 1 / statistics.median(seconds), "seconds": seconds,
                      "extra_peak_bytes": extra[name]}
    for name in ("slide", "ms_flip"):
        pairs = zip(rows[f"{name}_unbatched"]["seconds"], rows[name]["seconds"])
        rows[name]["speedup"] = spread([unbatched / batched for unbatched, batched in pairs])
    return {"image_size": list(scale.image_size), "rounds": scale.eval_rounds, "memory_kind": PeakMemory(device).kind,
            "rows": rows}


def evaluation_table(result: dict[str, Any]) -> list[str]:
    """The evaluation rows as markdown."""
    height, width = result["image_size"]
    memory = "extra peak GB (CUDA allocated)" if result["memory_kind"] == "cuda_max_allocated" else "extra peak RSS GB"
    lines = [f"{height}x{width} images, one at a time (eval batch 1), bf16 autocast, eager model; "
             f"median of {result['rounds']} rounds", "",
             f"| protocol | images/s | s/image | {memory} | batched vs 1 window per forward |", "|---|---:|---:|---:|---:|"]
    for row in result["rows"].values():
        seconds = statistics.median(row["seconds"])
        lines.append(f"| {row['label']} | {row['images_per_s']:.3g} | {seconds:.3g} | {row['extra_peak_bytes'] / GB:.2f} "
                     f"| {spread_cell(row.get('speedup'))} |")
    return lines


# ---------------------------------------------------------------- profile of one step

PROFILE_TOP = 15


def profile_section(scale: Scale, device: torch.device) -> dict[str, Any]:
    """One RegionContrast training step (full bank) under torch.profiler: the kernels that took longest.

    On a GPU, the CUDA kernels by their own device time; on a CPU, the operators by their own CPU time.
    """
    label, contrast = row_settings(scale)["region"]
    row = harness_row("region", label, suite_recipe(scale, contrast), device, scale)
    batch = synthetic_batch(scale.batch, scale.crop, torch.Generator(device).manual_seed(4))
    for iteration in range(3):  # lazy state, cuDNN autotuning
        row.step(batch, iteration)
    sync(device)
    cuda = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as profiler:
        row.step(batch, 3)
        sync(device)
    averages = profiler.key_averages()
    if cuda:
        events = [event for event in averages if event.device_type == torch.autograd.DeviceType.CUDA]
        seconds = {event.key: event.self_device_time_total / 1e6 for event in events or averages}
    else:
        seconds = {event.key: event.self_cpu_time_total / 1e6 for event in averages}
    counts = {event.key: event.count for event in averages}
    total = sum(seconds.values())
    top = sorted(seconds, key=seconds.get, reverse=True)[:PROFILE_TOP]
    return {"row": label, "clock": "device (CUDA kernels)" if cuda else "CPU (operators)", "total_s": total,
            "top": [{"name": name, "self_s": seconds[name], "share": seconds[name] / total if total else None,
                     "calls": counts[name]} for name in top]}


def profile_table(result: dict[str, Any]) -> list[str]:
    """The top kernels as markdown."""
    lines = [f"one step of {result['row']}, by self time on the {result['clock']}: "
             f"{1000 * result['total_s']:.1f} ms in all", "",
             "| kernel | self ms | share | calls |", "|---|---:|---:|---:|"]
    for entry in result["top"]:
        name = entry["name"].replace("|", "/")
        name = name if len(name) <= 90 else name[:87] + "..."
        lines.append(f"| `{name}` | {1000 * entry['self_s']:.2f} | {fmt(entry['share'], '.1%')} | {entry['calls']} |")
    return lines


# ---------------------------------------------------------------- batch sweep


def peak_reserved(device: torch.device, memory: PeakMemory) -> int:
    """The peak of the block: bytes the CUDA allocator reserved (what the card must hold), else the process RSS."""
    return torch.cuda.max_memory_reserved(device) if device.type == "cuda" else memory.read()


def sweep_point(scale: Scale, device: torch.device) -> dict[str, Any]:
    """RegionContrast (full bank) at scale.batch: median step after the warm-up, and the peak memory."""
    label, contrast = row_settings(scale)["region"]
    generator = torch.Generator(device).manual_seed(5)
    batches = [synthetic_batch(scale.batch, scale.crop, generator) for _ in range(2)]
    timer = SpanTimer(device, scale.warmup)
    with PeakMemory(device) as memory:
        row = harness_row("region", label, suite_recipe(scale, contrast), device, scale)
        for iteration in range(scale.warmup + scale.sweep_steps):
            timer.start()
            row.step(batches[iteration % len(batches)], iteration)
            timer.stop()
        sync(device)
    timer.flush()
    seconds = timer.seconds
    return {"s_per_iter": statistics.median(seconds), "images_per_s": scale.batch / statistics.median(seconds),
            "peak_bytes": peak_reserved(device, memory), "steps": seconds}


def batch_sweep_section(scale: Scale, device: torch.device) -> dict[str, Any]:
    """The RegionContrast step at each of scale.sweep_batches; a batch that does not fit records its error."""
    points = {}
    for batch in scale.sweep_batches:
        print(f"  batch {batch}", flush=True)
        try:
            points[str(batch)] = sweep_point(dataclasses.replace(scale, batch=batch), device)
        except Exception as error:  # noqa: BLE001 - out of memory at the largest batch must not lose the others
            points[str(batch)] = {"error": error_text(error)}
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()  # each batch size reserves afresh
    return {"row": row_settings(scale)["region"][0], "memory_kind": "cuda_max_reserved" if device.type == "cuda"
            else "rss", "timed_steps": scale.sweep_steps, "points": points}


def batch_sweep_table(result: dict[str, Any]) -> list[str]:
    """The batch sweep as markdown."""
    memory = "peak GB (CUDA reserved)" if result["memory_kind"] == "cuda_max_reserved" else "peak RSS GB"
    lines = [f"{result['row']}, median of {result['timed_steps']} steps after the warm-up", "",
             f"| batch | s/iter | images/s | {memory} |", "|---:|---:|---:|---:|"]
    for batch, point in result["points"].items():
        if "error" in point:
            lines.append(f"| {batch} | error: {point['error']} |")
        else:
            lines.append(f"| {batch} | {point['s_per_iter']:.4f} | {point['images_per_s']:.1f} "
                         f"| {point['peak_bytes'] / GB:.2f} |")
    return lines


# ---------------------------------------------------------------- harness/run.py with the loader in the loop


def write_cityscapes_tree(root: Path, scale: Scale, device: torch.device) -> Path:
    """A Cityscapes-layout tree (leftImg8bit/ and gtFine/ labelTrainIds PNGs) of synthetic scenes at
    scale.image_size: scale.loader_images training images and two val images."""
    generator = torch.Generator(device).manual_seed(6)
    for split, count in (("train", scale.loader_images), ("val", 2)):
        for index in range(count):
            scene = synthetic_batch(1, scale.image_size, generator)
            stem = f"suite_{index:06d}_000019"
            image = scene["image"][0].permute(1, 2, 0).cpu().numpy()  # [3,H,W] -> [H,W,3]
            label = scene["label"][0].to(torch.uint8).cpu().numpy()  # train ids, 255 ignored
            for folder, name, array in (("leftImg8bit", "leftImg8bit", image), ("gtFine", "gtFine_labelTrainIds", label)):
                path = root / folder / split / "suite" / f"{stem}_{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path, compress_level=1)  # fast to write; decoding costs the same
    return root


def loader_recipe(scale: Scale, work: Path, tree: Path) -> dict[str, Any]:
    """The training rows' CE recipe on the generated tree, fed by scale.loader_workers loader processes, eager
    (the synthetic row it is compared with is), one step logged per iteration, one image evaluated at the end."""
    recipe = suite_recipe(scale, {"kind": "none"}).model_dump(mode="json")
    recipe["run"] |= {"name": "suite_loader", "output_dir": str(work / "results"), "reports_dir": str(work / "reports"),
                      "log_interval": 1, "compile": False}
    recipe["data"] |= {"root": str(tree), "num_workers": scale.loader_workers}
    recipe["optim"] |= {"iterations": scale.loader_iterations}
    recipe["eval"] |= {"max_images": 1}
    return recipe


def loader_section(scale: Scale, out: Path, deadline: float, device: torch.device,
                   report: dict[str, Any]) -> dict[str, Any]:
    """harness/run.py under `accelerate launch` on a generated Cityscapes-layout tree, read from its prepared
    store (`harness prepare` first, as a node would): images/s with the data loader in the loop, against the
    synthetic-input CE row of the training section (same model and crop)."""
    work = out / "loader"
    shutil.rmtree(work, ignore_errors=True)
    started = time.monotonic()
    tree = write_cityscapes_tree(work / "cityscapes", scale, device)
    generated_s = time.monotonic() - started
    recipe_file = work / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(loader_recipe(scale, work, tree), sort_keys=False))
    started = time.monotonic()
    prepared = launch([sys.executable, "-m", "harness.prepare", str(recipe_file)], out / "loader_prepare.log", deadline)
    if prepared != "exit 0":
        raise RuntimeError(f"harness prepare ended with {prepared}: see loader_prepare.log")
    prepare_s = time.monotonic() - started
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", scale.launch_config,
               "harness/run.py", str(recipe_file), "--no-report"]
    ended = launch(command, out / "loader.log", deadline, env=scale.smoke_env)
    run_dir = work / "results" / "suite_loader" / "default"
    summary = read_summary(run_dir)
    if ended != "exit 0" or summary.get("status") != "ok":
        log = (out / "loader.log").read_text().strip().splitlines()
        raise RuntimeError(f"harness/run.py ended with {ended}, status {summary.get('status')}: {log[-1:]}")
    warmup = min(5, scale.loader_iterations // 2)  # as the run's own SteadyState skips
    steps = [record.numbers()["step_time"] for record in read_metrics(run_dir / METRICS_FILE)
             if record.kind == "train" and record.iter > warmup]
    synthetic = report["sections"].get("training", {}).get("rows", {}).get("ce", {}).get("images_per_s")
    loaded = summary["train_images_per_s"]
    return {
        "command": " ".join(command[1:]), "env": dict(scale.smoke_env), "workers": scale.loader_workers,
        "train_images": scale.loader_images, "image_size": list(scale.image_size), "generated_s": generated_s,
        "prepare_s": prepare_s,
        "s_per_iter": summary["s_per_iter"], "images_per_s": loaded, "steps": steps,
        "step_spread": spread(steps), "synthetic_images_per_s": synthetic,
        "loaded_over_synthetic": loaded / synthetic if synthetic else None,
    }


def loader_table(result: dict[str, Any]) -> list[str]:
    """The loader-in-the-loop run as markdown."""
    height, width = result["image_size"]
    env = "".join(f"{name}={value} " for name, value in result["env"].items())
    steps = result["step_spread"]
    ratio = result["loaded_over_synthetic"]
    return [
        f"`{env}python {result['command']}` (logs: loader_prepare.log, loader.log); {result['train_images']} "
        f"generated {height}x{width} training images ({result['generated_s']:.0f} s to write, "
        f"{result['prepare_s']:.0f} s for `harness prepare` to decode them into the prepared store), "
        f"loader workers: {result['workers']}", "",
        "| input | images/s | s/iter | s/iter quartiles (n steps) |", "|---|---:|---:|---:|",
        f"| generated Cityscapes tree, loader in the loop | {result['images_per_s']:.1f} | {result['s_per_iter']:.4f} "
        f"| {steps['q1']:.4f}-{steps['q3']:.4f} (n={steps['n']}) |",
        f"| synthetic batches on the device (training: harness, CE) | {fmt(result['synthetic_images_per_s'], '.1f')} "
        "| | |", "",
        f"loaded / synthetic images/s: {fmt(ratio, '.3f') or 'not measured (no training section)'} "
        "(two processes, one after the other, on this machine)",
    ]


# ---------------------------------------------------------------- matmul ceiling


def matmul_section(scale: Scale, device: torch.device) -> dict[str, Any]:
    """The bf16 FLOP/s of a square matrix product on random data (event-timed median)."""
    size, warmup, repeats = scale.matmul, 5, 20
    generator = torch.Generator(device).manual_seed(0)
    left, right = (torch.randn(size, size, generator=generator, device=device, dtype=torch.bfloat16) for _ in "lr")
    product = torch.empty_like(left)
    timer = SpanTimer(device, warmup)
    for _ in range(warmup + repeats):
        timer.start()
        torch.matmul(left, right, out=product)
        timer.stop()
    timer.flush()
    seconds = timer.median()
    return {"size": size, "seconds": seconds, "flops_per_s": 2 * size**3 / seconds}


def matmul_table(result: dict[str, Any]) -> list[str]:
    """The matmul ceiling as one line."""
    return [f"bf16 {result['size']}^3 matmul on random data: {result['flops_per_s'] / 1e12:.4g} TFLOP/s "
            f"(median of 20 after 5 warm-up, {1000 * result['seconds']:.2f} ms each)"]


# ---------------------------------------------------------------- Eq. 4 at ADE20K scale


def measure_loss(loss_fn: Callable[[Tensor], Tensor], queries: Tensor, scale: Scale) -> tuple[dict[str, Any], Tensor]:
    """Median forward + backward time, the extra peak bytes of one call, its loss and query gradient."""
    device = queries.device

    def call() -> tuple[Tensor, Tensor]:
        leaf = queries.detach().requires_grad_(True)
        loss = loss_fn(leaf)
        loss.backward()
        return loss, leaf.grad

    timer = SpanTimer(device, scale.eq4_warmup)
    for _ in range(scale.eq4_warmup + scale.eq4_repeats):
        timer.start()
        call()
        timer.stop()
    timer.flush()
    gc.collect()
    sync(device)
    before = in_use(device)
    with PeakMemory(device, interval_s=0.001) as memory:
        loss, grad = call()
        sync(device)
    return {"seconds": timer.median(), "extra_peak_bytes": memory.peak_bytes - before, "loss": loss.item()}, grad


def eq4_section(scale: Scale, device: torch.device) -> dict[str, Any]:
    """Streamed vs direct Eq. 4 against a full ADE20K-sized bank: time, extra memory, agreement."""
    classes, size, dim = ADE20K.num_classes, scale.ade_bank, ADE20K.dim
    bank = RegionBank(classes, size, dim).to(device)
    fill_bank(bank, classes, torch.Generator(device).manual_seed(0))
    queries, labels = (tensor.to(device) for tensor in batch_queries(classes, torch.Generator().manual_seed(0)))
    losses = {
        "streamed": lambda q: region_contrast_loss(q, labels, bank.keys, bank.valid, TAU, keys_unit=True),
        "direct": lambda q: dense_bank_loss(q, labels, bank.keys, bank.valid, TAU, torch.float32),
    }
    result: dict[str, Any] = {"queries": len(labels), "bank": f"{classes}x{size}x{dim}", "tau": TAU,
                              "bank_bytes": bank.nbytes()}
    grads = {}
    for name, loss_fn in losses.items():
        print(f"  {name}", flush=True)
        try:
            result[name], grads[name] = measure_loss(loss_fn, queries, scale)
        except Exception as error:  # noqa: BLE001 - the direct loss may not fit where the streamed one does
            result[name] = {"error": error_text(error)}
        gc.collect()
    if len(grads) == 2:
        result["loss_difference"] = abs(result["streamed"]["loss"] - result["direct"]["loss"])
        result["max_grad_difference"] = (grads["streamed"] - grads["direct"]).abs().max().item()
    return result


def eq4_table(result: dict[str, Any]) -> list[str]:
    """The Eq. 4 comparison as markdown."""
    lines = [f"Eq. 4, {result['queries']} queries against a full {result['bank']} fp32 bank "
             f"({result['bank_bytes'] / GB:.2f} GB), forward + backward", "",
             "| loss | ms (median) | extra peak MB | loss value |", "|---|---:|---:|---:|"]
    for name in ("streamed", "direct"):
        entry = result.get(name, {"error": "not run"})
        if "error" in entry:
            lines.append(f"| {name} | error: {entry['error']} |")
        else:
            lines.append(f"| {name} | {1000 * entry['seconds']:.2f} | {entry['extra_peak_bytes'] / MB:,.0f} "
                         f"| {entry['loss']:.6f} |")
    if "loss_difference" in result:
        lines.append(f"\n|streamed - direct|: loss {result['loss_difference']:.2e}, "
                     f"max query gradient {result['max_grad_difference']:.2e}")
    return lines


# ---------------------------------------------------------------- subprocesses


def subprocess_env(extra: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """This environment with the repository importable, plus `extra`."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), path])), **dict(extra)}


def launch(command: list[str], log: Path, deadline: float, stop_when: Callable[[], bool] | None = None,
           env: tuple[tuple[str, str], ...] = ()) -> str:
    """Run `command` (`env` added) in its own process group, output to `log`; 'exit N', 'stopped' or 'deadline'.

    The group is SIGKILLed once stop_when() holds or the budget runs out: `accelerate launch`
    starts the training in a child process, which a kill of the launcher alone would orphan.
    """
    with log.open("w") as sink:
        process = subprocess.Popen(command, cwd=REPO, env=subprocess_env(env), stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        while process.poll() is None:
            stop = stop_when is not None and stop_when()
            if stop or remaining(deadline) <= 0:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return "stopped" if stop else "deadline"
            time.sleep(0.2)
    return f"exit {process.returncode}"


def markdown_rows(text: str) -> list[list[str]]:
    """The cells of every markdown table row in `text` that is neither a header rule nor all text."""
    rows = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) > 1 and re.fullmatch(r"[\d.,]+", cells[-1]):
            rows.append(cells)
    return rows


def data_loading_section(tiny: bool, out: Path, deadline: float) -> dict[str, Any]:
    """benchmarks/data_loading.py's per-sample and DataLoader tables, parsed."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = [1] if tiny else sorted({1, max(1, cores // 2), cores})
    options = ["--images", "1", "--samples", "3"] if tiny else ["--images", "8", "--samples", "20"]
    command = [sys.executable, "-m", "benchmarks.data_loading", *options, "--workers", *map(str, workers)]
    log = out / "data_loading.log"
    ended = launch(command, log, min(deadline, time.monotonic() + DATA_LOADING_LIMIT_S))
    text = log.read_text()
    if ended != "exit 0":
        raise RuntimeError(f"{' '.join(command[1:])} ended with {ended}: {text.strip().splitlines()[-1:]}")
    per_sample, loader = {}, {}
    for cells in markdown_rows(text):
        if len(cells) == 4:
            per_sample[cells[0]] = dict(zip(("median_ms", "p10_ms", "p90_ms"), map(float, cells[1:])))
        elif len(cells) == 2:
            loader[cells[0]] = float(cells[1])
    return {"command": " ".join(command[1:]), "per_sample_ms": per_sample, "loader_samples_per_s": loader,
            "output": text}


def data_loading_table(result: dict[str, Any]) -> list[str]:
    """The data-loading script's own output, as it printed it."""
    return [f"`python {result['command']}` (log: data_loading.log)", "", result["output"].rstrip()]


def smoke_section(scale: Scale, out: Path, deadline: float, device: torch.device) -> dict[str, Any]:
    """Quickstart under accelerate launch, SIGKILLed once the region variant (the second) has a checkpoint, then
    resumed; the resumed region variant's final bank against an uninterrupted run's, and the summaries and report.

    The bank's pointers and fill count every center pushed since iteration 0, whatever the kernels'
    rounding, so they match only if the checkpoint's bank was restored; on a CPU the whole run is
    bitwise reproducible and the bank digests must match too.
    """
    work = out / "smoke"
    shutil.rmtree(work, ignore_errors=True)  # a stale checkpoint would trigger the kill at once
    recipe_dir = work / "results" / "quickstart"
    shared = (*scale.smoke_sets, "run.keep_checkpoint=true", f"data.root={work / 'cache'}")

    def command(results: Path, *extra: str) -> list[str]:
        sets = (*shared, f"run.output_dir={results / 'results'}", f"run.reports_dir={results / 'reports'}")
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", scale.launch_config,
                "harness/run.py", "recipes/quickstart.yaml", *[part for text in sets for part in ("--set", text)],
                *extra]

    started = time.monotonic()
    first = launch(command(work), out / "smoke_first.log", deadline,
                   lambda: (recipe_dir / "region" / "checkpoint").is_dir(), scale.smoke_env)
    killed_after = time.monotonic() - started
    resumed = launch(command(work, "--resume"), out / "smoke_resume.log", deadline, env=scale.smoke_env)
    reference = launch(command(work / "reference", "--only", "region", "--no-report"), out / "smoke_reference.log",
                       deadline, env=scale.smoke_env)
    resume_log = (out / "smoke_resume.log").read_text()
    summaries = {folder.name: read_summary(folder) for folder in sorted(recipe_dir.glob("*")) if folder.is_dir()}
    report_md = work / "reports" / "quickstart" / "report.md"
    region_resumed_at = re.findall(r"resuming \S*region at iteration (\d+)", resume_log)
    problems = [] if first == "stopped" else [f"the first run was not killed at a checkpoint ({first})"]
    problems += [] if resumed == "exit 0" else [f"the resumed run ended with {resumed}"]
    problems += [] if reference == "exit 0" else [f"the uninterrupted region run ended with {reference}"]
    total = int(dict(text.split("=", 1) for text in scale.smoke_sets)["optim.iterations"])
    if not region_resumed_at or int(region_resumed_at[0]) >= total:
        problems.append(f"the region variant did not resume mid-run (resumed at {region_resumed_at or 'none'})")
    problems += [f"{name}: status {summary.get('status')}" for name, summary in summaries.items()
                 if summary.get("status") != "ok"]
    problems += [] if len(summaries) == 2 else [f"expected the ce and region summaries, found {sorted(summaries)}"]
    problems += [] if report_md.is_file() else ["report.md was not written"]
    bank = {}
    if not problems:
        bank = compare_banks(recipe_dir / "region", work / "reference" / "results" / "quickstart" / "region")
        problems += [] if bank["counts_equal"] else ["the resumed bank's pointers or fill differ from the uninterrupted "
                                                     "run's: the checkpoint's bank was not restored"]
        if device.type == "cpu" and not bank["digests_equal"]:
            problems.append("on the CPU the resumed region run's bank digest differs from the uninterrupted run's")
    return {
        "command": " ".join(command(work)[1:]), "env": dict(scale.smoke_env), "first_run": first,
        "killed_after_s": killed_after, "resume": resumed, "reference_run": reference,
        "resumed_at": re.findall(r"resuming .* at iteration \d+", resume_log),
        "variants": {name: {key: summary.get(key) for key in ("status", "miou", "s_per_iter", "error")}
                     for name, summary in summaries.items()},
        "bank": bank, "report_md": str(report_md) if report_md.is_file() else None, "problems": problems,
    }


def checkpoint_bank(run_dir: Path) -> dict[str, Tensor]:
    """The region bank's state in a run's kept checkpoint: the saved object with a bank's keys."""
    keys = set(RegionBank(1, 1, 1).state_dict())
    for path in sorted((run_dir / "checkpoint").glob("custom_checkpoint_*.pkl")):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if set(state) == keys:
            return state
    raise FileNotFoundError(f"no region bank among {run_dir / 'checkpoint'}'s saved objects")


def compare_banks(resumed: Path, uninterrupted: Path) -> dict[str, Any]:
    """The final region banks of a resumed and an uninterrupted run: counts, keys and digests."""
    mine, theirs = checkpoint_bank(resumed), checkpoint_bank(uninterrupted)
    digests = [read_summary(folder).get("bank_digest") for folder in (resumed, uninterrupted)]
    return {
        "counts_equal": all(torch.equal(mine[key], theirs[key]) for key in ("ptr", "filled")),
        "max_key_difference": (mine["slots"].float() - theirs["slots"].float()).abs().max().item(),
        "fill": (mine["filled"].sum() / mine["slots"][:-1].shape[0]).item(),
        "digests_equal": digests[0] is not None and digests[0] == digests[1],
        "miou": [read_summary(folder).get("miou") for folder in (resumed, uninterrupted)],
    }


def read_summary(folder: Path) -> dict[str, Any]:
    """A run folder's summary.json through the results contract, as a mapping, or why there is none."""
    if not (folder / SUMMARY_FILE).is_file():
        return {"status": "no summary.json"}
    try:
        return results.read_summary(folder).model_dump()
    except results.DamagedFile as damage:
        return {"status": f"unreadable: {damage}"}


def smoke_table(result: dict[str, Any]) -> list[str]:
    """The smoke run as markdown."""
    env = "".join(f"{name}={value} " for name, value in result["env"].items())
    lines = [f"`{env}python {result['command']}` (logs: smoke_first.log, smoke_resume.log, smoke_reference.log)", "",
             f"first run: {result['first_run']} after {result['killed_after_s']:.0f} s (SIGKILL once the region "
             f"variant had a checkpoint); resumed: {result['resume']}, "
             f"{'; '.join(result['resumed_at']) or 'no resume line'}; uninterrupted region run: "
             f"{result['reference_run']}; report.md: {'written' if result['report_md'] else 'MISSING'}", "",
             "| variant | status | mIoU | s/iter |", "|---|---|---:|---:|"]
    for name, variant in result["variants"].items():
        lines.append(f"| {name} | {variant['status']} | {fmt(variant['miou'], '.4f')} "
                     f"| {fmt(variant['s_per_iter'], '.4f')} |")
    bank = result["bank"]
    if bank:
        lines += ["", f"resumed region bank against the uninterrupted run's: pointers and fill "
                      f"{'equal' if bank['counts_equal'] else 'DIFFERENT'} (fill {bank['fill']:.2f}), largest key "
                      f"difference {bank['max_key_difference']:.2e}, digests {'equal' if bank['digests_equal'] else 'differ'}, "
                      f"mIoU {' vs '.join(fmt(miou, '.4f') for miou in bank['miou'])}"]
    return lines + [f"problem: {problem}" for problem in result["problems"]]


# ---------------------------------------------------------------- host syncs on a GPU


def sync_section(scale: Scale, device: torch.device) -> dict[str, Any]:
    """Per harness row kind: the synchronizing CUDA calls of one step after a warm-up step, and their origins.

    Sync behaviour does not depend on the geometry, so a small one keeps this section to seconds.
    """
    if device.type != "cuda":
        return {"note": "CUDA only: torch.cuda.set_sync_debug_mode needs a GPU (tests/test_sync.py covers the CPU)",
                "kinds": {}}
    small = dataclasses.replace(scale, backbone="resnet18", crop=129, batch=2, head_channels=64, compiled_rows=())
    batch = synthetic_batch(small.batch, small.crop, torch.Generator(device).manual_seed(1))
    kinds = {}
    for name, (label, contrast) in row_settings(small).items():
        if name == "bare":
            continue
        row = harness_row(name, label, suite_recipe(small, contrast), device, small)
        row.step(batch, 0)  # lazy state, cuDNN autotuning
        torch.cuda.synchronize(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                row.step(batch, 1)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        syncing = [w for w in caught if "synchroniz" in str(w.message)]
        kinds[name] = {"label": label, "syncs": len(syncing),
                       "origins": sorted({f"{Path(w.filename).name}:{w.lineno}" for w in syncing})}
        del row
        gc.collect()
    return {"kinds": kinds}


def sync_table(result: dict[str, Any]) -> list[str]:
    """Syncs per step kind as markdown."""
    if not result["kinds"]:
        return [result["note"]]
    lines = ["| step | synchronizing CUDA calls | from |", "|---|---:|---|"]
    for kind in result["kinds"].values():
        lines.append(f"| {kind['label']} | {kind['syncs']} | {', '.join(kind['origins'])} |")
    return lines


# ---------------------------------------------------------------- report


TABLES = {"matmul": matmul_table, "training": training_table, "evaluation": evaluation_table,
          "profile": profile_table, "batch_sweep": batch_sweep_table, "sync": sync_table, "eq4": eq4_table,
          "loader": loader_table, "data_loading": data_loading_table, "smoke": smoke_table}


def environment(device: torch.device, scale: Scale, tiny: bool) -> dict[str, Any]:
    """What ran where: device, versions, date, command and settings."""
    return {
        "device": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "accelerate": accelerate.__version__, "timm": timm.__version__, "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "mode": "tiny" if tiny else "full",
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "settings": asdict(scale),
        "notes": "bf16 autocast, channels_last on and cudnn.benchmark on in every training row; images uint8 "
                 "normalised on the device by harness.ops.normalize in every row",
    }


def targets(report: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    """The targets this mode is held to, each with its measured value and verdict."""
    rows = report["sections"].get("training", {}).get("rows", {})

    def ratio(row: str, key: str) -> float | None:
        return (rows.get(row, {}).get(key) or {}).get("median")

    wanted = [("harness CE step / bare step", ratio("ce", "ratio_to_bare"), 1.03, "<=")]
    if device.type == "cuda":
        wanted += [("RegionContrast full bank step / CE step", ratio("region", "ratio_to_ce"), 1.02, "<="),
                   ("CE MFU", rows.get("ce", {}).get("mfu"), 0.40, ">=")]
    checks = []
    for name, value, bound, sense in wanted:
        met = None if value is None else (value <= bound if sense == "<=" else value >= bound)
        verdict = "not measured" if met is None else ("met" if met else "NOT met")
        checks.append({"target": f"{name} {sense} {bound}", "value": value, "verdict": verdict})
    return checks


def section_lines(name: str, result: dict[str, Any]) -> list[str]:
    """One section's markdown, or its error or skip note."""
    lines = [f"### {name} ({result['status']}, {result.get('wall_s', 0):.0f} s)", ""]
    if result["status"] == "skipped":
        return lines + [result["note"]]
    if result["status"] == "error":
        return lines + [f"error: {result['error']}"]
    return lines + TABLES[name](result)


def header_lines(env: dict[str, Any]) -> list[str]:
    """Device, versions, date, command and the settings every row shares."""
    return [
        f"## GPU suite ({env['mode']}): {env['device']}", "",
        f"torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, accelerate {env['accelerate']}, "
        f"timm {env['timm']}, Python {env['python']}; {env['cores']} cores, {env['torch_threads']} torch threads",
        f"date: {env['date']}", f"command: `{env['command']}`", env["notes"], "",
    ]


def report_lines(report: dict[str, Any]) -> list[str]:
    """The whole report as markdown."""
    lines = header_lines(report["environment"])
    for name, result in report["sections"].items():
        lines += section_lines(name, result) + [""]
    lines += ["### targets", ""] + [f"- {check['target']}: {fmt(check['value'], '.3f') or '-'} -> {check['verdict']}"
                                    for check in report["targets"]]
    return lines


def run_section(name: str, body: Callable[[], dict[str, Any]], report: dict[str, Any], deadline: float,
                budget_s: float, out: Path) -> None:
    """Run one section unless the budget is spent; record its result or error; print it; save the JSON."""
    if remaining(deadline) <= 0:
        result = {"status": "skipped", "note": f"skipped: the --budget-s {budget_s:.0f} s ran out before it"}
    else:
        print(f"\n[{name}] started", flush=True)
        started = time.monotonic()
        try:
            result = body()
            result["status"] = "failed" if result.get("problems") else "ok"
        except Exception as error:  # noqa: BLE001 - one failing section must not lose the others
            traceback.print_exc()
            result = {"status": "error", "error": error_text(error), "traceback": traceback.format_exc()}
        result["wall_s"] = time.monotonic() - started
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    report["sections"][name] = result
    print("\n".join(section_lines(name, result)), flush=True)
    write_json(out / "gpu_suite.json", report)


def main() -> int:
    """Run every section within the budget; print the markdown report, write gpu_suite.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a small geometry that runs on a CPU in minutes")
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_suite.json and the logs")
    parser.add_argument("--budget-s", type=float, default=1200.0, help="sections not started by then are skipped")
    parser.add_argument("--sections", default=",".join(TABLES),
                        help="comma-separated sections to run, in the suite's order")
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget_s
    scale = TINY if args.tiny else FULL
    if scale.threads is not None:
        torch.set_num_threads(scale.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True  # one crop shape: cuDNN picks its fastest kernels once, in every row
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"environment": environment(device, scale, args.tiny), "sections": {}, "targets": []}
    print("\n".join(header_lines(report["environment"])), flush=True)
    sections = {
        "matmul": lambda: matmul_section(scale, device),
        "training": lambda: training_section(scale, device, report),
        "evaluation": lambda: evaluation_section(scale, device),
        "profile": lambda: profile_section(scale, device),
        "batch_sweep": lambda: batch_sweep_section(scale, device),
        "sync": lambda: sync_section(scale, device),
        "eq4": lambda: eq4_section(scale, device),
        "loader": lambda: loader_section(scale, args.out, deadline, device, report),
        "data_loading": lambda: data_loading_section(args.tiny, args.out, deadline),
        "smoke": lambda: smoke_section(scale, args.out, deadline, device),
    }
    chosen = args.sections.split(",")
    for name, body in sections.items():
        if name in chosen:
            run_section(name, body, report, deadline, args.budget_s, args.out)
    report["targets"] = targets(report, device)
    write_json(args.out / "gpu_suite.json", report)
    print("\n\n" + "\n".join(report_lines(report)), flush=True)
    return int(any(result["status"] in ("error", "failed") for result in report["sections"].values()))


if __name__ == "__main__":
    sys.exit(main())
