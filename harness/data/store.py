"""The prepared store: a real dataset's split decoded once into memory-mapped numpy arrays.

    <cache_dir>/<dataset>-<split>-<key>/
        images.npy     uint8 [P,3]: every image's pixels, row-major, one image after another
        labels.npy     uint8 [P]: their train ids
        index.npy      int64 [N,3]: each image's first pixel in those arrays, its height and its width
        manifest.json  what it was decoded from: each file's path under data.root, size and mtime

`key` digests the store's version, the label maps and that file list, so a dataset whose files
change (added, removed, rewritten, relabelled) gets a new store, never a stale one. Decoding is
harness.data.real.decode_files, the per-item path of data.prepare: off: a store holds exactly what
that path decodes, and a broken file stops the build with its name, before any training. An
item is a view of the arrays; the training transform copies only the source pixels its window
reads. One process builds a store at a time (a file lock beside it) and publishes it by renaming
a finished folder into place, so no reader sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

import datasets
import filelock
import numpy as np

from harness.data.info import keyed_table
from harness.data.real import LABEL_MAPS, decode_files, image_size
from harness.process import usable_cores  # noqa: F401 - its one home; data, prepare and run import it from here
from harness.progress import bar
from harness.recipe import DataConfig
from harness.results import DamagedFile, publish, set_aside

Row = dict[str, Any]

# Bump whenever a store would hold something else for the same files (its layout, the decoding).
_VERSION = 1
IMAGES, LABELS, INDEX, MANIFEST = "images.npy", "labels.npy", "index.npy", "manifest.json"
# A spawned decoding process costs about as much CPU as decoding 70 Cityscapes pairs (importing torch
# and datasets, ~4 s), so a build starts one per this many images, up to the workers it is given.
_IMAGES_PER_WORKER = 64


def cache_dir(cfg: DataConfig) -> Path:
    """data.cache_dir; unset, beside the dataset (<root>.prepared/), or the user cache where that cannot be written."""
    if cfg.cache_dir is not None:
        return Path(cfg.cache_dir)
    root = Path(cfg.root).resolve()
    if os.access(root.parent, os.W_OK):
        return root.parent / f"{root.name}.prepared"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "harness" / "prepared"


def file_list(table: datasets.Dataset, root: Path) -> list[list[Any]]:
    """Each row's [image path under root, size, mtime_ns, label path under root, size, mtime_ns, label map]."""
    listing = []
    for image, label, label_map in zip(table["image"], table["label"], table["label_map"]):
        entry: list[Any] = []
        for path in (Path(image), Path(label)):
            stat = path.stat()
            entry += [str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns]
        listing.append(entry + [label_map])
    return listing


def store_key(files: list[list[Any]]) -> str:
    """A digest of all a store's contents follow from: the version, the file list and the label maps it uses."""
    digest = hashlib.sha256(json.dumps([_VERSION, files]).encode())
    for name in sorted({entry[-1] for entry in files}):
        label_map = LABEL_MAPS[name]
        digest.update(f"{name}:{label_map.classes}:".encode() + label_map.table.tobytes())
    return digest.hexdigest()[:20]


class PreparedSplit:
    """A prepared split's decode: a row's (offset, height, width) -> read-only views, image [H,W,3] and label [H,W].

    Each process maps the arrays once, on its first item (a fresh map per item costs about 1 ms of
    an item's 10); a pickled copy (a spawned DataLoader worker) maps them itself rather than carry their bytes.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "_arrays": None}

    def __call__(self, row: Row) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = np.load(self.folder / IMAGES, mmap_mode="r"), np.load(self.folder / LABELS, mmap_mode="r")
        images, labels = self._arrays
        start, height, width = row["offset"], row["height"], row["width"]
        end = start + height * width
        image = images[start:end].reshape(height, width, 3)  # [h*w,3] -> [h,w,3]
        return image, labels[start:end].reshape(height, width)  # [h*w] -> [h,w]


def _decode_into(folder: Path, row: Row, offset: int, size: tuple[int, int]) -> None:
    """Decode one pair into its slot in the store being built at `folder`: `size` from pixel `offset` (a task)."""
    image, label = decode_files(row)
    end = offset + size[0] * size[1]
    images = np.load(folder / IMAGES, mmap_mode="r+")
    labels = np.load(folder / LABELS, mmap_mode="r+")
    images[offset:end] = image.reshape(-1, 3)  # [H,W,3] -> [H*W,3]
    labels[offset:end] = label.reshape(-1)  # [H,W] -> [H*W]


def _decode_all(folder: Path, rows: list[Row], offsets: list[int], sizes: list[tuple[int, int]], workers: int,
                description: str) -> None:
    """Decode every row into `folder` with a progress bar; the first broken file stops it, named."""
    tasks = list(zip(rows, offsets, sizes))
    workers = min(workers, math.ceil(len(tasks) / _IMAGES_PER_WORKER))
    print(f"{description}: decoding {len(tasks)} images", file=sys.stderr, flush=True)
    with bar(total=len(tasks), desc=description, unit="image") as progress:
        if workers <= 1:
            for task in tasks:
                _decode_into(folder, *task)
                progress.update()
            return
        # spawn: the caller may hold CUDA and threads, which forked children must not inherit
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_decode_into, folder, *task) for task in tasks]
            try:
                for future in as_completed(futures):
                    future.result()
                    progress.update()
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise


def _build(folder: Path, table: datasets.Dataset, files: list[list[Any]], workers: int, description: str) -> None:
    """Write a complete store into the new folder `folder`; nothing is left of it if that fails (a broken file, ^C)."""
    rows = table.to_list()
    try:
        sizes = [image_size(Path(row["image"])) for row in rows]  # headers only: allocate before decoding
        pixels = [height * width for height, width in sizes]
        offsets = np.cumsum([0, *pixels[:-1]]).tolist()
        folder.mkdir()
        np.lib.format.open_memmap(folder / IMAGES, "w+", np.uint8, (sum(pixels), 3))  # sparse until written
        np.lib.format.open_memmap(folder / LABELS, "w+", np.uint8, (sum(pixels),))
        _decode_all(folder, rows, offsets, sizes, workers, description)
        for name in (IMAGES, LABELS):  # on disk before the store is published
            with (folder / name).open("rb+") as handle:
                os.fsync(handle.fileno())
        np.save(folder / INDEX, np.array([[offset, *size] for offset, size in zip(offsets, sizes)], np.int64))
        manifest = {"version": _VERSION, "images": len(rows), "files": files,
                    "columns": ["image", "size", "mtime_ns", "label", "size", "mtime_ns", "label_map"]}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _build_once(folder: Path, build: Callable[[Path], None]) -> None:
    """Publish the store at `folder` unless another process (a rank) built it first."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(folder.with_name(f"{folder.name}.lock")):  # other ranks wait, then find it built
        if not folder.is_dir():
            publish(folder, build)


def store_index(folder: Path, images: int) -> np.ndarray:
    """A built store's index.npy [N,3] (offset, height, width), checked to tile its arrays' pixels; DamagedFile
    naming it otherwise."""
    path = folder / INDEX
    try:
        index = np.load(path)
        pixels = [np.load(folder / name, mmap_mode="r").shape[0] for name in (IMAGES, LABELS)]
    except FileNotFoundError as error:
        raise DamagedFile(Path(error.filename or path), "missing") from None
    except (ValueError, OSError, EOFError) as error:
        raise DamagedFile(path, f"not a readable store array ({error})") from None
    if index.shape != (images, 3) or index.dtype != np.int64:
        raise DamagedFile(path, f"not this store's index: {index.dtype} {list(index.shape)}, expected int64 "
                                f"[{images}, 3]")
    offsets, heights, widths = index.T
    ends = offsets + heights * widths
    if (heights <= 0).any() or (widths <= 0).any() or offsets[0] != 0 or (offsets[1:] != ends[:-1]).any() \
            or pixels != [ends[-1]] * 2:
        raise DamagedFile(path, "its offsets and sizes do not tile the store's pixels")
    return index


def prepared(
    cfg: DataConfig, split: str, table: datasets.Dataset, workers: int
) -> tuple[datasets.Dataset, PreparedSplit]:
    """A real split's (table, decode) from its prepared store, built first (by `workers` processes) when missing.

    The table is the split's index with each image's place in the store: offset, height, width.
    """
    files = file_list(table, Path(cfg.root))
    key = store_key(files)
    folder = cache_dir(cfg) / f"{cfg.dataset}-{split}-{key}"
    description = f"prepare {cfg.dataset} {split}"
    if not folder.is_dir():  # a built store needs no lock: it may lie where this process cannot write
        _build_once(folder, lambda scratch: _build(scratch, table, files, workers, description))
    try:
        index = store_index(folder, len(files))
    except DamagedFile as damage:  # derived data: set the damaged store aside, never delete it, and build it again
        with filelock.FileLock(folder.with_name(f"{folder.name}.lock")):
            if folder.is_dir():
                print(f"{damage}: the store is set aside as {set_aside(folder).name} and built again", file=sys.stderr)
        _build_once(folder, lambda scratch: _build(scratch, table, files, workers, description))
        index = store_index(folder, len(files))
    columns = {**table.to_dict(), "offset": index[:, 0].tolist(), "height": index[:, 1].tolist(),
               "width": index[:, 2].tolist()}
    return keyed_table(columns, f"{cfg.dataset}-{split}-prepared-{key}"), PreparedSplit(folder)
