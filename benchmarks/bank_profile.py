"""`harness banks [--out reports/banks] [--max-bytes N] [--datasets a,b] [--device cpu|cuda]`: the banks' memory
profile, predicted and measured. Bytes, update and loss time of the contrastive banks.

`python -m benchmarks.bank_profile` runs the same; it writes banks.md, banks.csv and bank_memory.png. Predictions come only from the cost
functions in harness.contrast.banks, the ones whose constructors size the banks at run time.
A bank is built and measured only when its prediction fits under --max-bytes.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # profiles are written on headless servers
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import psutil
import seaborn as sns
import torch
from matplotlib.lines import Line2D
from torch import Tensor, nn

from benchmarks.common import GEOMETRIES, GEOMETRY_NOTES, TAU, Geometry, fill_queues
from harness import contrast
from harness.command import parser as command_parser
from harness.measure import PeakMemory, SpanTimer
from harness.recipe import ContrastConfig
from harness.report import markdown_table, save

MB = 10**6  # decimal units throughout, as GPU vendors count "80 GB"
GB = 10**9
GPU_BYTES = 80 * GB
CPU_MAX_BYTES = 8 * GB
CUDA_FREE_FRACTION = 0.75  # the rest absorbs allocator rounding and the loss's misestimate
BATCH_IMAGES = 8  # the paper's Cityscapes batch
REGIONS_PER_IMAGE = 10  # classes present per synthetic image: 8 x 10 = ~80 region queries
TIMED_CALLS = 3
LONG_CALL_S = 1.0  # a first call this long is timed alone: warm-up costs vanish next to it
# Besides the streamed chunks (contrast.CHUNK_BUDGET_BYTES), the loss holds per key at most
# one copy of it (PixelBank.entries() concatenates) plus an int64 label and a valid flag.
LOSS_BYTES_PER_KEY_LABEL = torch.int64.itemsize + torch.bool.itemsize
SWEEP_IMAGES = np.unique(np.logspace(2, 6, 41).astype(int))
DATASET_MARKERS = ("o", "s", "D", "^")
NEVER = 10**13  # a bank still under the limit at this many images never crosses it
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
# The recipe defaults: the profile measures what a default run would build.
VARIANT, PIXEL = ContrastConfig().variant, ContrastConfig().pixel


# ---------------------------------------------------------------- geometries


# ---------------------------------------------------------------- synthetic batch


@dataclass
class Batch:
    """One training batch at the feature resolution, as the contrastive losses see it."""

    features: Tensor  # [B,C,h,w]
    logits: Tensor  # [B,N,h,w]
    labels: Tensor  # [B,h,w]
    image_ids: Tensor  # [B]
    centers: Tensor  # [M,C] every (image, class) slot's region center, detached: what a region bank update pushes
    center_labels: Tensor  # [M]
    center_valid: Tensor  # [M]: False where the class is absent from the image (fixed-shape padding)
    generator: torch.Generator


def synthetic_labels(geometry: Geometry, generator: torch.Generator) -> Tensor:
    """Label maps [B,h,w], each image drawing its pixels from REGIONS_PER_IMAGE random classes."""
    side, regions = geometry.side, min(REGIONS_PER_IMAGE, geometry.num_classes)
    shape = (BATCH_IMAGES, geometry.num_classes)
    present = torch.rand(shape, generator=generator, device=generator.device).argsort(1)[:, :regions]
    picks = torch.randint(regions, (BATCH_IMAGES, side * side), generator=generator, device=generator.device)
    return present.gather(1, picks).view(BATCH_IMAGES, side, side)  # [B,P] -> [B,h,w]


def synthetic_batch(geometry: Geometry, device: torch.device, seed: int = 0) -> Batch:
    """Random features and logits with plausible label maps, on `device`."""
    generator = torch.Generator(device).manual_seed(seed)
    side = geometry.side
    features = torch.randn(BATCH_IMAGES, geometry.dim, side, side, generator=generator, device=device)
    logits = torch.randn(BATCH_IMAGES, geometry.num_classes, side, side, generator=generator, device=device)
    labels = synthetic_labels(geometry, generator)
    centers, valid = contrast.region_centers(features, logits, labels, geometry.num_classes, VARIANT)
    image_ids = torch.arange(BATCH_IMAGES, device=device)
    # Gradients reach the features as in training, so the loss timing includes the backward.
    features.requires_grad_()
    return Batch(features, logits, labels, image_ids, *contrast.region_entries(centers, valid), generator)


# ---------------------------------------------------------------- bank kinds


@dataclass(frozen=True)
class BankKind:
    """How to predict, build, fill, update and query one kind of bank."""

    name: str
    title: str
    predicted_bytes: Callable[[Geometry], int]
    entries: Callable[[Geometry], int]
    build: Callable[[Geometry], nn.Module]
    fill: Callable[[nn.Module, Batch], None]
    update: Callable[[nn.Module, Batch], None]
    loss: Callable[[nn.Module, Batch], Tensor]
    queries: Callable[[Batch], int]




def _region_loss(bank: contrast.RegionBank, batch: Batch) -> Tensor:
    """The batch's region centers (Eq. 3), then Eq. 4 for them against the whole bank."""
    centers, valid = contrast.region_centers(batch.features, batch.logits, batch.labels, bank.num_classes, VARIANT)
    queries, query_labels, query_valid = contrast.region_entries(centers, valid)
    return contrast.region_contrast_loss(
        queries, query_labels, bank.keys, bank.valid, TAU, query_valid=query_valid, keys_unit=True
    )


def _pixel_loss(bank: contrast.PixelBank | contrast.AllPixelBank, batch: Batch) -> Tensor:
    """ContrastiveSeg's sampled-anchor loss against the bank's entries."""
    predictions = batch.logits.argmax(1)
    return contrast.pixel_contrast_loss(
        batch.features, batch.labels, predictions, bank, TAU, PIXEL.max_samples, PIXEL.max_views, batch.generator
    )


def _anchor_count(batch: Batch) -> int:
    """How many anchors the pixel loss samples from the batch (the quotas do not depend on the draw)."""
    anchors, _ = contrast.sample_anchors(
        batch.features, batch.labels, batch.logits.argmax(1), PIXEL.max_samples, PIXEL.max_views, batch.generator
    )
    return len(anchors)


def _fill_pixel_bank(bank: contrast.PixelBank, batch: Batch) -> None:
    """Fill the pixel and the segment queue."""
    fill_queues(bank.pixels, batch.generator)
    fill_queues(bank.segments, batch.generator)


def _fill_all_pixels(bank: contrast.AllPixelBank, batch: Batch) -> None:
    """Store the batch's features in every image's slot, BATCH_IMAGES slots at a time."""
    slots = torch.arange(bank.labels.shape[0], device=bank.labels.device)
    for ids in slots.split(BATCH_IMAGES):
        bank.push(batch.features[: len(ids)], batch.labels[: len(ids)], ids)


REGION = BankKind(
    name="region",
    title="region bank",
    predicted_bytes=lambda g: contrast.region_bank_bytes(g.num_classes, g.train_images, g.dim, g.dtype),
    entries=lambda g: g.num_classes * g.train_images,
    build=lambda g: contrast.RegionBank(g.num_classes, g.train_images, g.dim, g.dtype),
    fill=lambda bank, batch: fill_queues(bank, batch.generator),
    update=lambda bank, batch: bank.push(batch.centers, batch.center_labels, batch.center_valid),
    loss=_region_loss,
    queries=lambda batch: int(batch.center_valid.sum()),
)
PIXEL_QUEUES = BankKind(
    name="pixel",
    title="pixel + segment queues",
    predicted_bytes=lambda g: contrast.pixel_bank_bytes(g.num_classes, PIXEL.memory_size, g.dim, g.dtype),
    entries=lambda g: 2 * g.num_classes * PIXEL.memory_size,
    build=lambda g: contrast.PixelBank(g.num_classes, PIXEL.memory_size, g.dim, PIXEL.pixel_update_freq, g.dtype),
    fill=_fill_pixel_bank,
    update=lambda bank, batch: bank.push(batch.features, batch.labels, batch.generator),
    loss=_pixel_loss,
    queries=_anchor_count,
)
ALL_PIXELS = BankKind(
    name="all_pixel",
    title="all-pixel bank",
    predicted_bytes=lambda g: contrast.all_pixel_bank_bytes(g.train_images, g.side, g.side, g.dim, g.dtype),
    entries=lambda g: g.train_images * g.side * g.side,
    build=lambda g: contrast.AllPixelBank(g.train_images, g.side, g.side, g.dim, g.dtype),
    fill=_fill_all_pixels,
    update=lambda bank, batch: bank.push(batch.features, batch.labels, batch.image_ids),
    loss=_pixel_loss,
    queries=_anchor_count,
)
KINDS: tuple[BankKind, ...] = (REGION, PIXEL_QUEUES, ALL_PIXELS)


def crossing_images(kind: BankKind, geometry: Geometry, limit: int = GPU_BYTES) -> int | None:
    """The fewest training images whose bank needs more than `limit` bytes; None if none does."""
    def fits(images: int) -> bool:
        return kind.predicted_bytes(geometry.with_images(images)) <= limit

    high = 1
    while fits(high):
        if high > NEVER:
            return None
        high *= 2
    low = high // 2  # fits(low), or low = 0
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return high


# ---------------------------------------------------------------- measuring


@dataclass
class ProfileRow:
    """One bank kind on one dataset: the prediction and, where it fitted, the measurements."""

    dataset: str
    kind: str
    entries: int
    predicted_bytes: int
    fits_80gb_gpu: bool
    buffer_bytes: int | None = None
    peak_bytes: int | None = None
    update_ms: float | None = None
    loss_queries: int | None = None
    loss_ms: float | None = None
    loss_peak_bytes: int | None = None


def pin_mmap_threshold() -> None:
    """Make glibc serve every allocation over 1 MiB with a fresh mmap, returned on free.

    glibc raises its mmap threshold after a large free, so a later bank of that size can
    reuse heap pages that are already resident and RSS would not grow at all. Setting the
    threshold explicitly turns that adaptation off. No-op without glibc.
    """
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name and sys.platform.startswith("linux") else None
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, 2**20)


def current_bytes(device: torch.device) -> int:
    """Memory in use now: the CUDA allocator's allocated bytes, else the process RSS."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return psutil.Process().memory_info().rss


def state_bytes(bank: nn.Module) -> int:
    """Bytes of every tensor in the bank's state_dict."""
    return sum(tensor.nbytes for tensor in bank.state_dict().values())


def build_measured(kind: BankKind, geometry: Geometry, device: torch.device) -> tuple[nn.Module, int]:
    """Build the bank on `device`; return it and the process's peak memory growth while building."""
    baseline = current_bytes(device)
    with PeakMemory(device) as peak, torch.device(device):
        bank = kind.build(geometry)
        # A page the kernel has not backed yet is not resident: write every byte so RSS counts it
        # (adding 0 keeps the contents, e.g. AllPixelBank's empty labels).
        for buffer in bank.buffers():
            buffer.add_(0)
    return bank, peak.peak_bytes - baseline


def timed_call(step: Callable[[], object], timer: SpanTimer) -> float:
    """Run `step` once under `timer`; its wall time in seconds."""
    timer.start()
    step()
    timer.stop()
    return timer.flush()[-1]


def median_ms(step: Callable[[], object], device: torch.device) -> float:
    """Wall time of `step` in ms: median of TIMED_CALLS after a warm-up call, or that call alone if slow."""
    timer = SpanTimer(device, warmup=1)
    first = timed_call(step, timer)
    if first >= LONG_CALL_S:
        return 1000 * first
    for _ in range(TIMED_CALLS):
        timed_call(step, timer)
    return 1000 * timer.median()


def loss_bytes_bound(kind: BankKind, geometry: Geometry) -> int:
    """An upper bound on the streamed loss's memory beyond the bank and the batch."""
    per_key = geometry.dim * geometry.dtype.itemsize + LOSS_BYTES_PER_KEY_LABEL
    return kind.entries(geometry) * per_key + contrast.CHUNK_BUDGET_BYTES


def time_loss(kind: BankKind, bank: nn.Module, batch: Batch, device: torch.device) -> tuple[float, int]:
    """Median ms of one loss forward and backward, and the peak memory growth over the calls."""
    baseline = current_bytes(device)
    with PeakMemory(device) as peak:
        elapsed = median_ms(lambda: kind.loss(bank, batch).backward(), device)
    return elapsed, peak.peak_bytes - baseline


def profile_row(kind: BankKind, geometry: Geometry, device: torch.device, max_bytes: int) -> ProfileRow:
    """Predict one bank; if it fits under `max_bytes`, build it and measure memory and time."""
    predicted = kind.predicted_bytes(geometry)
    row = ProfileRow(geometry.name, kind.name, kind.entries(geometry), predicted, predicted <= GPU_BYTES)
    if predicted > max_bytes:
        return row
    bank, row.peak_bytes = build_measured(kind, geometry, device)
    row.buffer_bytes = state_bytes(bank)
    batch = synthetic_batch(geometry, device)
    kind.fill(bank, batch)
    row.update_ms = median_ms(lambda: kind.update(bank, batch), device)
    if predicted + loss_bytes_bound(kind, geometry) <= max_bytes:
        row.loss_queries = kind.queries(batch)
        row.loss_ms, row.loss_peak_bytes = time_loss(kind, bank, batch, device)
    return row


def warm_up(device: torch.device) -> None:
    """Run the lazy first-use setup (thread pools, allocator caches) before anything is measured."""
    probe = synthetic_batch(GEOMETRIES["digit_scenes"], device)
    bank, _ = build_measured(REGION, GEOMETRIES["digit_scenes"], device)
    REGION.update(bank, probe)


def profile(geometries: list[Geometry], device: torch.device, max_bytes: int) -> list[ProfileRow]:
    """Every bank kind on every geometry, printing each row as it is done."""
    if device.type == "cpu":
        pin_mmap_threshold()
    warm_up(device)
    rows = []
    for geometry in geometries:
        for kind in KINDS:
            rows.append(profile_row(kind, geometry, device, max_bytes))
            print(format_row(rows[-1]), flush=True)
    return rows


# ---------------------------------------------------------------- outputs


def human_bytes(count: int | None) -> str:
    """57.9 MB / 28.7 GB, decimal units; blank for None."""
    if count is None:
        return ""
    return f"{count / GB:.1f} GB" if count >= GB else f"{count / MB:.1f} MB"


def format_row(row: ProfileRow) -> str:
    """A one-line progress message."""
    measured = f"peak {human_bytes(row.peak_bytes)}" if row.peak_bytes is not None else "not measured"
    return f"{row.dataset:>13} {row.kind:>9}: predicted {human_bytes(row.predicted_bytes)}, {measured}"


def ratio(measured: int | None, predicted: int) -> str:
    """measured / predicted to four places; blank when not measured."""
    return "" if measured is None else f"{measured / predicted:.4f}"


def timing(value: float | None) -> str:
    """Milliseconds, or why there is no number."""
    return "not measured (does not fit)" if value is None else f"{value:.1f}"


def table_cells(rows: list[ProfileRow]) -> pd.DataFrame:
    """The markdown table's string cells, one row per dataset and bank kind."""
    titles = {kind.name: kind.title for kind in KINDS}
    return pd.DataFrame({
        "dataset": [row.dataset for row in rows],
        "bank": [titles[row.kind] for row in rows],
        "entries": [f"{row.entries:,}" for row in rows],
        "predicted": [human_bytes(row.predicted_bytes) for row in rows],
        "measured buffers": [human_bytes(row.buffer_bytes) or "not measured (does not fit)" for row in rows],
        "measured peak": [human_bytes(row.peak_bytes) for row in rows],
        "buffers / predicted": [ratio(row.buffer_bytes, row.predicted_bytes) for row in rows],
        "peak / predicted": [ratio(row.peak_bytes, row.predicted_bytes) for row in rows],
        "update ms": [timing(row.update_ms) for row in rows],
        "loss ms (fwd+bwd)": [timing(row.loss_ms) for row in rows],
        "loss queries": ["" if row.loss_queries is None else str(row.loss_queries) for row in rows],
        "loss peak": [human_bytes(row.loss_peak_bytes) for row in rows],
        "fits 80 GB GPU": ["yes" if row.fits_80gb_gpu else "no" for row in rows],
    })


def geometry_lines(geometries: list[Geometry]) -> list[str]:
    """One markdown bullet per dataset geometry."""
    lines = []
    for g in geometries:
        note = f"; {GEOMETRY_NOTES[g.name]}" if g.name in GEOMETRY_NOTES else ""
        lines.append(
            f"- {g.name}: {g.num_classes} classes, {g.train_images:,} training images, crop {g.crop}, "
            f"stride {g.stride} -> {g.side}x{g.side} features, {g.dim}-d {str(g.dtype).removeprefix('torch.')}{note}"
        )
    return lines


def crossing_lines(geometry: Geometry) -> list[str]:
    """Where each kind outgrows an 80 GB GPU as the training set grows."""
    lines = []
    for kind in KINDS:
        images = crossing_images(kind, geometry)
        where = "never (its size does not grow with the dataset)" if images is None else f"{images:,} images"
        lines.append(f"- {kind.title}: {where}")
    return lines


def markdown_report(rows: list[ProfileRow], geometries: list[Geometry], device: torch.device, max_bytes: int) -> str:
    """banks.md: the table, the geometries, how it was measured, and the 80 GB crossings."""
    right = {"entries", "predicted", "measured buffers", "measured peak", "buffers / predicted",
             "peak / predicted", "update ms", "loss ms (fwd+bwd)", "loss queries", "loss peak"}
    peak_kind = "CUDA max_memory_allocated growth" if device.type == "cuda" else "process RSS growth (psutil)"
    sweep = GEOMETRIES["cityscapes"]
    return "\n".join([
        "# Contrastive bank memory profile",
        "",
        markdown_table(table_cells(rows), right),
        "",
        f"Device: {device}. Banks were built only when predicted under --max-bytes = {human_bytes(max_bytes)}.",
        "Predicted: harness.contrast's cost functions. Measured buffers: bytes of the bank's state_dict tensors.",
        f"Measured peak: {peak_kind} while building the bank and writing every byte.",
        f"Update: one push of a {BATCH_IMAGES}-image synthetic batch ({REGIONS_PER_IMAGE} classes per image).",
        "Loss: forward + backward against a full bank, computing the batch's region centers or sampling",
        f"ContrastiveSeg's anchors as queries. Times: median of {TIMED_CALLS} calls after a warm-up call, or that call alone",
        f"when it took over {LONG_CALL_S:g} s.",
        "Loss peak: the same memory measure's growth over those calls (run only when a bound on it fits too).",
        "MB and GB are decimal (10^6, 10^9 bytes); fits = predicted bank <= 80 GB.",
        "",
        "## Geometries",
        "",
        *geometry_lines(geometries),
        "",
        f"## Training images at which a bank exceeds 80 GB ({sweep.name} geometry)",
        "",
        *crossing_lines(sweep),
        "",
        "![bank memory](bank_memory.png)",
        "",
    ])


def csv_frame(rows: list[ProfileRow]) -> pd.DataFrame:
    """The raw numbers: bytes and milliseconds, empty where not measured."""
    return pd.DataFrame([dataclasses.asdict(row) for row in rows]).convert_dtypes()


def sweep_frame(geometry: Geometry) -> pd.DataFrame:
    """Predicted bytes of each kind over SWEEP_IMAGES training images."""
    return pd.DataFrame([
        {"images": int(images), "bank": kind.name, "bytes": kind.predicted_bytes(geometry.with_images(int(images)))}
        for kind in KINDS
        for images in SWEEP_IMAGES
    ])


def plot_memory(path: Path) -> None:
    """Log-log predicted memory against training images, all four datasets as points, an 80 GB line."""
    sweep, geometries = GEOMETRIES["cityscapes"], list(GEOMETRIES.values())
    colours = dict(zip([kind.name for kind in KINDS], sns.color_palette("deep", len(KINDS))))
    markers = dict(zip(GEOMETRIES, DATASET_MARKERS))
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(10, 6.5))
        frame = sweep_frame(sweep)
        for kind in KINDS:
            line = frame[frame["bank"] == kind.name]
            ax.plot(line["images"], line["bytes"] / GB, color=colours[kind.name], linewidth=2.5)
        mark_datasets(ax, geometries, colours, markers)
        mark_gpu_limit(ax, sweep, colours)
        ax.set(xscale="log", yscale="log", xlabel="training images", ylabel="predicted bank memory (GB)")
        ax.set_title(
            f"Lines: {sweep.name}-like geometry ({sweep.num_classes} classes, {sweep.side}x{sweep.side} features, "
            f"{sweep.dim}-d fp32); points: each dataset's own geometry",
            fontsize=10,
        )
        ax.legend(handles=legend_handles(geometries, colours, markers), loc="upper left", fontsize=9)
        save(fig, path)


def legend_handles(geometries: list[Geometry], colours: dict[str, object], markers: dict[str, str]) -> list[Line2D]:
    """One line per bank kind, then one grey marker per dataset."""
    kinds = [Line2D([], [], color=colours[kind.name], linewidth=2.5, label=kind.title) for kind in KINDS]
    datasets = [
        Line2D([], [], color="grey", marker=markers[g.name], linestyle="", markeredgecolor="black",
               label=f"{g.name} ({g.train_images:,} images)")
        for g in geometries
    ]
    return kinds + datasets


def mark_datasets(ax: plt.Axes, geometries: list[Geometry], colours: dict[str, object],
                  markers: dict[str, str]) -> None:
    """Each dataset's banks at its own size: its marker, coloured by bank kind."""
    for geometry in geometries:
        for kind in KINDS:
            ax.scatter(geometry.train_images, kind.predicted_bytes(geometry) / GB, color=colours[kind.name],
                       marker=markers[geometry.name], edgecolor="black", s=70, zorder=3)


def mark_gpu_limit(ax: plt.Axes, sweep: Geometry, colours: dict[str, object]) -> None:
    """The 80 GB line, and where each kind of the sweep crosses it."""
    ax.axhline(GPU_BYTES / GB, color="firebrick", linestyle="--", linewidth=1.5)
    ax.annotate("80 GB GPU", (SWEEP_IMAGES[-1], GPU_BYTES / GB), xytext=(0, 5), textcoords="offset points",
                ha="right", color="firebrick", fontsize=10, fontweight="bold")
    for row, kind in enumerate(KINDS):
        images = crossing_images(kind, sweep)
        if images is None:
            text = f"{kind.title}: never crosses 80 GB (fixed size)"
        elif images > SWEEP_IMAGES[-1]:
            text = f"{kind.title}: crosses 80 GB at {images:,} images (off the plot)"
        else:
            ax.scatter(images, GPU_BYTES / GB, color=colours[kind.name], marker="*", s=250, edgecolor="black",
                       zorder=4)
            ax.annotate(f"{images:,} images", (images, GPU_BYTES / GB), xytext=(-12, 10), ha="right",
                        textcoords="offset points", color=colours[kind.name], fontsize=10, fontweight="bold")
            text = f"{kind.title}: crosses 80 GB at {images:,} images"
        ax.annotate(text, (0.99, 0.03 + 0.05 * row), xycoords="axes fraction", ha="right",
                    color=colours[kind.name], fontsize=9, fontweight="bold")


def write_outputs(rows: list[ProfileRow], geometries: list[Geometry], out: Path, device: torch.device,
                  max_bytes: int) -> None:
    """banks.md, banks.csv and bank_memory.png under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "banks.md").write_text(markdown_report(rows, geometries, device, max_bytes))
    csv_frame(rows).to_csv(out / "banks.csv", index=False)
    plot_memory(out / "bank_memory.png")


# ---------------------------------------------------------------- CLI


def default_max_bytes(device: torch.device) -> int:
    """A share of the device's free memory: room for the bank, its fill and the loss."""
    if device.type == "cuda":
        return int(CUDA_FREE_FRACTION * torch.cuda.mem_get_info(device)[0])
    return min(CPU_MAX_BYTES, psutil.virtual_memory().available // 2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = command_parser("banks", __doc__)
    parser.add_argument("--out", type=Path, default=Path("reports/banks"),
                        help="where banks.md, banks.csv and bank_memory.png go (default: reports/banks)")
    # argparse %-formats help texts: a percentage needs %%.
    parser.add_argument("--max-bytes", type=int, default=None,
                        help="build only banks predicted under this (default: 8 GB or half the free RAM; "
                             f"{CUDA_FREE_FRACTION:.0%}% of free GPU memory on CUDA)")
    parser.add_argument("--datasets", default=",".join(GEOMETRIES), help="comma-separated: " + ", ".join(GEOMETRIES))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the banks are built and timed (default: cuda where there is one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[ProfileRow]:
    """CLI: profile the chosen datasets' banks and write the report."""
    args = parse_args(argv)
    unknown = sorted(set(args.datasets.split(",")) - set(GEOMETRIES))
    if unknown:
        raise SystemExit(f"unknown datasets {unknown}; choose from {list(GEOMETRIES)}")
    geometries = [GEOMETRIES[name] for name in args.datasets.split(",")]
    device = torch.device(args.device)
    max_bytes = default_max_bytes(device) if args.max_bytes is None else args.max_bytes
    rows = profile(geometries, device, max_bytes)
    write_outputs(rows, geometries, args.out, device, max_bytes)
    print(markdown_table(table_cells(rows), set()))
    return rows


if __name__ == "__main__":
    main()
