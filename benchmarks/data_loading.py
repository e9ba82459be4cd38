"""Training data loading at Cityscapes geometry: per-sample decode + augmentation, and DataLoader throughput.

It writes a small tree in the real Cityscapes layout (--images 2048x1024 RGB PNGs of smooth
coloured regions, light gradients, texture and a little sensor noise, ~2.4 MB each like the
real ones, whose decode time depends on how well they compress; gtFine labelIds PNGs of the
same regions) and reads it through harness.data exactly as training does (crop 769, scale
0.5-2.0, flip). Files sit in the page cache: this measures decoding and augmentation, not disks.

- per sample, one thread: the median (and 10th / 90th percentiles) of --samples calls after
  a warm-up, for the training item (crop-window resize), the item as commit 7bc5b65 built it
  (the whole float image resized, then cropped; kept here as the baseline), the decoders alone
  (PIL, which harness.data uses, and torchvision.io) and a whole uint8 val item;
- per DataLoader: samples/s of make_loaders' training loader with N workers (--workers; by
  default 1 and the usable core count), after its first batch (worker start-up not counted).

Other processes share the CPU: the load average is printed with the figures.
Run: python -m benchmarks.data_loading [--images 8] [--samples 20] [--workers 1 16] [--root DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.io
from accelerate import Accelerator
from PIL import Image

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.data import SegmentationDataset, build_datasets  # noqa: E402
from harness.data.transforms import TrainTransform  # noqa: E402
from harness.engine import make_context  # noqa: E402
from harness.engine.setup import make_loaders  # noqa: E402
from harness.ops import IMAGENET  # noqa: E402
from harness.recipe import AugmentConfig, DataConfig, Recipe  # noqa: E402

SIZE = (1024, 2048)  # Cityscapes (height, width)
CROP = 769
SCALE = AugmentConfig().scale
GOAL_MS = 100  # per training item on one core: several hundred samples/s for 8 GPUs from a few dozen cores
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


def whole_image_item(dataset: SegmentationDataset, index: int, generator: torch.Generator) -> torch.Tensor:
    """A training crop as commit 7bc5b65 made it: normalise the whole image, resize it all, pad, crop, flip."""
    image, label = dataset.decode(dataset.table[index])
    mean, std = torch.tensor(IMAGENET.mean).view(3, 1, 1), torch.tensor(IMAGENET.std).view(3, 1, 1)  # [3] -> [3,1,1]
    pixels = (torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255 - mean) / std  # [H,W,3] -> [3,H,W]
    labels = torch.from_numpy(label.astype(np.int64))
    low, high = SCALE
    factor = low + (high - low) * torch.rand((), generator=generator).item()
    size = [max(1, round(side * factor)) for side in labels.shape]
    pixels = F.interpolate(pixels[None], size=size, mode="bilinear", antialias=True)[0]  # [3,H,W] -> [3,h,w]
    labels = F.interpolate(labels[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
    extra = (0, max(CROP - size[1], 0), 0, max(CROP - size[0], 0))
    pixels, labels = F.pad(pixels, extra, value=0.0), F.pad(labels, extra, value=255)
    top = int(torch.randint(labels.shape[0] - CROP + 1, (), generator=generator))
    left = int(torch.randint(labels.shape[1] - CROP + 1, (), generator=generator))
    pixels, labels = pixels[:, top : top + CROP, left : left + CROP], labels[top : top + CROP, left : left + CROP]
    if torch.rand((), generator=generator) < 0.5:
        pixels, labels = pixels.flip(-1), labels.flip(-1)
    return pixels


def decode_torchvision(dataset: SegmentationDataset, index: int) -> torch.Tensor:
    """The image and label PNGs decoded by torchvision.io (libpng), the alternative to PIL."""
    row = dataset.table[index]
    torchvision.io.decode_png(torchvision.io.read_file(row["label"]))
    return torchvision.io.decode_png(torchvision.io.read_file(row["image"]))


def repeated(dataset: SegmentationDataset, count: int) -> SegmentationDataset:
    """`count` items cycling through the dataset's few files, each index its own crop."""
    table = dataset.table.select([k % len(dataset) for k in range(count)])
    return SegmentationDataset(table, dataset.decode, dataset.transform, dataset.seed)


def time_paths(paths: dict[str, Callable[[int], object]], warmup: int, samples: int) -> dict[str, list[float]]:
    """Milliseconds of each path's call(k) for k = warmup .. warmup + samples - 1, after call(0 .. warmup - 1).

    The paths take turns sample by sample, so that a neighbour's burst of load slows them alike.
    """
    times: dict[str, list[float]] = {name: [] for name in paths}
    for k in range(warmup + samples):
        for name, call in paths.items():
            start = time.perf_counter()
            call(k)
            if k >= warmup:
                times[name].append(1e3 * (time.perf_counter() - start))
    return times


def loader_rate(dataset: SegmentationDataset, val: SegmentationDataset, workers: int, batch_size: int) -> float:
    """Samples/s of make_loaders' training loader, after its first batch."""
    batches = max(10, 3 * workers)
    recipe = Recipe(data=DataConfig(dataset="cityscapes", crop_size=CROP, batch_size=batch_size, num_workers=workers))
    ctx = make_context(Accelerator(cpu=True), recipe)
    train_loader, _ = make_loaders(repeated(dataset, (batches + 1) * batch_size), val, ctx)
    iterator = iter(train_loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


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
    """One markdown row: median and 10th / 90th percentile milliseconds."""
    deciles = statistics.quantiles(times, n=10, method="inclusive")  # "exclusive" extrapolates on few calls
    return f"| {name} | {statistics.median(times):.1f} | {deciles[0]:.1f} | {deciles[-1]:.1f} |"


def main() -> None:
    """Write the tree, time the per-sample paths on one thread, then the loaders; print markdown tables."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="train images written (one val image besides)")
    parser.add_argument("--samples", type=int, default=20, help="timed calls per per-sample path")
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({1, cores}), help="DataLoader worker counts")
    parser.add_argument("--batch-size", type=int, default=2, help="per-process batch (the Cityscapes recipes use 2)")
    parser.add_argument("--root", type=Path, help="where the tree is written and reused (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = args.root or Path(scratch)
        write_tree(root, args.images)
        mean_mb = np.mean([path.stat().st_size for path in root.glob("leftImg8bit/train/*/*.png")]) / 1e6
        cfg = DataConfig(dataset="cityscapes", root=root, crop_size=CROP)
        train, val, _ = build_datasets(cfg, seed=0, pad_colour=IMAGENET.pad_colour)
        assert train.transform == TrainTransform(CROP, SCALE, True, IMAGENET.pad_colour)

        # A warm-up pass over every file puts them all in the page cache.
        items, warmup, threads = repeated(train, len(train) + args.samples), len(train), torch.get_num_threads()
        torch.set_num_threads(1)
        load_before = os.getloadavg()
        paths = {
            "train item, crop-window resize (now)": lambda k: items[k],
            "train item, whole-image resize (7bc5b65)": lambda k: whole_image_item(
                items, k, torch.Generator().manual_seed(k)
            ),
            "decode only: PIL (image + label, mapped)": lambda k: items.decode(items.table[k]),
            "decode only: torchvision.io (deprecated since 0.29)": lambda k: decode_torchvision(items, k),
            "val item, whole uint8 image": lambda k: val[0],
        }
        timings = time_paths(paths, warmup, args.samples)
        load_after = os.getloadavg()
        torch.set_num_threads(threads)
        rates = {workers: loader_rate(train, val, workers, args.batch_size) for workers in args.workers}
        load_loaders = os.getloadavg()

    print(f"machine: {cpu_name()}, {cores} usable cores ({os.cpu_count()} logical), {platform.system()}")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {Image.__version__}")
    print(f"command: python -m benchmarks.data_loading {' '.join(sys.argv[1:])}".rstrip())
    print(f"{args.images} train PNGs of {SIZE[1]}x{SIZE[0]}, {mean_mb:.2f} MB on average; "
          f"crop {CROP}, scale {SCALE}, flip\n")
    print(f"Per sample on one thread, {args.samples} calls after warm-up; load average (1/5/15 min) "
          f"{load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f} before, {load_after[0]:.2f} after\n")
    print("| path | median ms | p10 ms | p90 ms |")
    print("|---|---:|---:|---:|")
    print("\n".join(row(name, times) for name, times in timings.items()))
    now = statistics.median(timings["train item, crop-window resize (now)"])
    print(f"\ngoal: a training item in at most {GOAL_MS} ms on one core: {'met' if now <= GOAL_MS else 'NOT met'}")
    print(f"\nDataLoader (make_loaders' training loader, batch {args.batch_size}, after its first batch); "
          f"load average {load_loaders[0]:.2f} after\n")
    print("| workers | samples/s |")
    print("|---:|---:|")
    print("\n".join(f"| {workers} | {rate:.1f} |" for workers, rate in rates.items()))


if __name__ == "__main__":
    main()
