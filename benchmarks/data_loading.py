"""Training data loading at Cityscapes geometry: the prepared store against decoding, per sample and per DataLoader.

It writes a small tree in the real Cityscapes layout (--images 2048x1024 RGB PNGs of smooth
coloured regions, light gradients, texture and a little sensor noise, ~2.4 MB each like the
real ones, whose decode time depends on how well they compress; gtFine labelIds PNGs of the
same regions), prepares its store (harness.data.store, one process) and reads it through
harness.data exactly as training does (crop 769, scale 0.5-2.0, flip). Files and store sit in
the page cache: this measures decoding, reading and augmentation, not disks.

- per sample, one thread: CPU milliseconds (time.process_time: what the sample costs a core,
  whatever else shares the machine; median, 10th and 90th percentile of --samples calls after
  a warm-up, the paths taking turns; the training item's mean too) of the training item from the
  store (data.prepare: auto),
  its parts (the store's read, the window's resize), the item decoded from its PNGs (off), the
  decode alone (what preparing costs per pair) and a whole uint8 val item from the store;
- preparing: CPU and wall seconds per image of building the train split's store, one process;
- per DataLoader: samples/s of make_loaders' training loader with N workers (--workers; by
  default 1 and the usable core count), after its first batch, and the CPU milliseconds per
  sample its workers spent beyond their start-up (their resource usage once they exit:
  reading, augmenting, collating, and handing batches over through shared memory).

Other processes share the CPU: the load average is printed with the figures.
Run: python -m benchmarks.data_loading [--images 8] [--samples 60] [--workers 1 16] [--root DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from PIL import Image

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.data import SegmentationDataset, build_datasets, index_files  # noqa: E402
from harness.data.store import prepared  # noqa: E402
from harness.data.transforms import TrainTransform, base_factor, random_window, resize_window  # noqa: E402
from harness.engine import make_context  # noqa: E402
from harness.engine.setup import make_loaders  # noqa: E402
from harness.ops import IMAGENET  # noqa: E402
from harness.recipe import AugmentConfig, DataConfig, Recipe  # noqa: E402

SIZE = (1024, 2048)  # Cityscapes (height, width)
CROP = 769
SCALE = AugmentConfig().scale
# Per training item on one core (issue 21): ~1,000 samples/s from a node's 16 cores, enough for its 8 GPUs.
GOAL_MS = 15
# Cityscapes labelIds the scenes use: road, sidewalk, building, wall, fence, pole, vegetation,
# terrain, sky, person, car, and 0 (unlabeled, ignored).
LABEL_IDS = np.array([7, 8, 11, 12, 13, 17, 21, 22, 23, 24, 26, 0], np.uint8)


# ---------------------------------------------------------------- a Cityscapes-like tree


def _field(rng: np.random.Generator, channels: int, cells: int, amplitude: float) -> torch.Tensor:
    """A smooth random float field [channels,H,W]: a cells x 2*cells grid upsampled bicubically."""
    grid = torch.from_numpy(rng.uniform(-amplitude, amplitude, (1, channels, cells, 2 * cells)).astype(np.float32))
    return F.interpolate(grid, size=SIZE, mode="bicubic")[0]  # [1,C,c,2c] -> [C,H,W]


def scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 image [H,W,3] of coloured regions, light and texture, and its labelIds [H,W]."""
    rng = np.random.default_rng(seed)
    regions = _field(rng, len(LABEL_IDS), 8, 1.0).argmax(0).numpy()  # [K,H,W] -> [H,W]
    colours = rng.uniform(40, 215, (len(LABEL_IDS), 3)).astype(np.float32)
    light = _field(rng, 3, 3, 30) + _field(rng, 3, 48, 10)  # a broad gradient plus finer texture
    noise = rng.normal(0, 1, (*SIZE, 3)).astype(np.float32)
    pixels = colours[regions] + light.permute(1, 2, 0).numpy() + noise  # [3,H,W] -> [H,W,3]
    return pixels.clip(0, 255).round().astype(np.uint8), LABEL_IDS[regions]


def write_tree(root: Path, images: int) -> None:
    """`images` train scenes and one val scene in the Cityscapes layout, unless already there."""
    for split, city, seeds in (("train", "aachen", range(images)), ("val", "frankfurt", [images])):
        for k, seed in enumerate(seeds):
            stem = f"{city}_{k:06d}_000019"
            image_path = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            label_path = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
            if image_path.is_file() and label_path.is_file():
                continue
            image, label = scene(seed)
            image_path.parent.mkdir(parents=True, exist_ok=True)
            label_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(image_path)
            Image.fromarray(label).save(label_path)


# ---------------------------------------------------------------- the paths timed


def window_resize(
    dataset: SegmentationDataset, index: int, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """An item's window, drawn as the training transform draws it, resized from the store's views (no tensors,
    pad or flip)."""
    image, label = dataset.decode(dataset.table[index])
    transform = dataset.transform
    base = base_factor(label.shape, transform.base_size)
    window = random_window(label.shape, transform.crop_size, transform.scale, generator, base)
    return resize_window(image, label, window)


def repeated(dataset: SegmentationDataset, count: int) -> SegmentationDataset:
    """`count` items cycling through the dataset's few files, each index its own crop."""
    table = dataset.table.select([k % len(dataset) for k in range(count)])
    return SegmentationDataset(table, dataset.decode, dataset.transform, dataset.seed)


def time_paths(paths: dict[str, Callable[[int], object]], warmup: int, samples: int) -> dict[str, list[float]]:
    """CPU milliseconds of each path's call(k) for k = warmup .. warmup + samples - 1, after call(0 .. warmup - 1).

    The paths take turns sample by sample, so that a neighbour's burst of load slows them alike.
    """
    times: dict[str, list[float]] = {name: [] for name in paths}
    for k in range(warmup + samples):
        for name, call in paths.items():
            start = time.process_time()
            call(k)
            if k >= warmup:
                times[name].append(1e3 * (time.process_time() - start))
    return times


def prepare_cost(cfg: DataConfig) -> tuple[float, float]:
    """CPU and wall seconds per image of building the train split's store in this process (one worker)."""
    table = index_files(cfg.dataset, cfg.root)["train"]
    cpu, wall = time.process_time(), time.perf_counter()
    prepared(cfg, "train", table, workers=1)
    return (time.process_time() - cpu) / len(table), (time.perf_counter() - wall) / len(table)


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def loader_epoch(dataset: SegmentationDataset, val: SegmentationDataset, workers: int, batch_size: int,
                 batches: int) -> tuple[float, float]:
    """One epoch of `batches` batches from make_loaders' training loader: samples/s after its first batch, and
    the CPU seconds its workers spent in all, read once they have exited (a whole epoch: no batch made unread)."""
    recipe = Recipe(data=DataConfig(dataset="cityscapes", crop_size=CROP, batch_size=batch_size, num_workers=workers))
    ctx = make_context(Accelerator(cpu=True), recipe)
    train_loader, _ = make_loaders(repeated(dataset, batches * batch_size), val, ctx)
    cpu = children_cpu()
    iterator = iter(train_loader)
    next(iterator)
    start = time.perf_counter()
    for _ in iterator:
        pass
    rate = (batches - 1) * batch_size / (time.perf_counter() - start) if batches > 1 else float("nan")
    del iterator, train_loader  # persistent workers exit with their iterator
    return rate, children_cpu() - cpu


def loader_figures(dataset: SegmentationDataset, val: SegmentationDataset, workers: int,
                   batch_size: int) -> tuple[float, float]:
    """Samples/s of the training loader, and its workers' CPU ms per sample beyond their start-up.

    Start-up is the difference between two epochs: one batch per worker, and seven.
    """
    _, short = loader_epoch(dataset, val, workers, batch_size, workers)
    rate, long = loader_epoch(dataset, val, workers, batch_size, 7 * workers)
    return rate, 1e3 * (long - short) / (6 * workers * batch_size)


# ---------------------------------------------------------------- report


def cpu_name() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it where it exists."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def row(name: str, times: list[float]) -> str:
    """One markdown row: median and 10th / 90th percentile milliseconds (benchmarks/gpu_suite.py parses these)."""
    deciles = statistics.quantiles(times, n=10, method="inclusive")  # "exclusive" extrapolates on few calls
    return f"| {name} | {statistics.median(times):.1f} | {deciles[0]:.1f} | {deciles[-1]:.1f} |"


def main() -> None:
    """Write the tree, prepare its store, time the per-sample paths on one thread, then the loaders; print markdown."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="train images written (one val image besides)")
    parser.add_argument("--samples", type=int, default=60, help="timed calls per per-sample path")
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({1, cores}), help="DataLoader worker counts")
    parser.add_argument("--batch-size", type=int, default=2, help="per-process batch (the Cityscapes recipes use 2)")
    parser.add_argument("--root", type=Path, help="where the tree is written and reused (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = args.root or Path(scratch)
        write_tree(root, args.images)
        mean_mb = np.mean([path.stat().st_size for path in root.glob("leftImg8bit/train/*/*.png")]) / 1e6
        cfg = DataConfig(dataset="cityscapes", root=root, crop_size=CROP, cache_dir=Path(scratch) / "prepared")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        prepare_cpu, prepare_wall = prepare_cost(cfg)
        train, val, _ = build_datasets(cfg, seed=0, pad_colour=IMAGENET.pad_colour)
        off = cfg.model_copy(update={"prepare": "off"})
        decoded, _, _ = build_datasets(off, seed=0, pad_colour=IMAGENET.pad_colour)
        assert train.transform == TrainTransform(CROP, SCALE, True, IMAGENET.pad_colour)

        # A warm-up pass over every file and image puts them all in the page cache.
        count, warmup = len(train) + args.samples, len(train)
        items, decoded_items = repeated(train, count), repeated(decoded, count)
        load_before = os.getloadavg()
        paths = {
            "train item from the prepared store (now; data.prepare: auto)": lambda k: items[k],
            "  its read: the store's views of image and label": lambda k: items.decode(items.table[k]),
            "  its window resize: source window copy, PIL bilinear, label nearest": lambda k: window_resize(
                items, k, torch.Generator().manual_seed(k)
            ),
            "train item decoded from its PNGs (data.prepare: off)": lambda k: decoded_items[k],
            "decode only: PIL, image + mapped label (what preparing costs a pair)": lambda k: decoded_items.decode(
                decoded_items.table[k]
            ),
            "val item from the store, whole uint8 image": lambda k: val[0],
        }
        timings = time_paths(paths, warmup, args.samples)
        load_after = os.getloadavg()
        torch.set_num_threads(threads)
        rates = {workers: loader_figures(train, val, workers, args.batch_size) for workers in args.workers}
        load_loaders = os.getloadavg()

    print(f"machine: {cpu_name()}, {cores} usable cores ({os.cpu_count()} logical), {platform.system()}")
    print(f"torch {torch.__version__}, Pillow {Image.__version__}, numpy {np.__version__}")
    print(f"command: python -m benchmarks.data_loading {' '.join(sys.argv[1:])}".rstrip())
    print(f"{args.images} train PNGs of {SIZE[1]}x{SIZE[0]}, {mean_mb:.2f} MB on average; "
          f"crop {CROP}, scale {SCALE}, flip\n")
    print(f"Preparing the train split's store, one process: {1e3 * prepare_cpu:.1f} ms of CPU "
          f"({1e3 * prepare_wall:.1f} ms wall) per image\n")
    print(f"Per sample on one thread, CPU ms of {args.samples} calls after warm-up; load average (1/5/15 min) "
          f"{load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f} before, {load_after[0]:.2f} after\n")
    print("| path | median ms | p10 ms | p90 ms |")
    print("|---|---:|---:|---:|")
    print("\n".join(row(name, times) for name, times in timings.items()))
    now = statistics.mean(timings["train item from the prepared store (now; data.prepare: auto)"])
    print(f"\ngoal: a training item in at most {GOAL_MS} ms of CPU on one core, on average (what throughput "
          f"follows; shrinking windows cost more): {'met' if now <= GOAL_MS else 'NOT met'}, mean {now:.1f} ms")
    print(f"\nDataLoader (make_loaders' training loader over the store, batch {args.batch_size}); "
          f"load average {load_loaders[0]:.2f} after\n")
    print("| workers | samples/s |")
    print("|---:|---:|")
    print("\n".join(f"| {workers} | {rate:.1f} |" for workers, (rate, _) in rates.items()))
    spent = ", ".join(f"{cpu:.1f} ms with {workers}" for workers, (_, cpu) in rates.items())
    print(f"\nWorkers' CPU per sample, start-up excluded (reading, augmenting, collating, handing over): {spent}")


if __name__ == "__main__":
    main()
