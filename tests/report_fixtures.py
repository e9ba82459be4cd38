"""Fake results folders in the engine's format (notes: results_format.md) and readers of the reports built from them,
for the report tests."""

from __future__ import annotations

import json
from itertools import dropwhile, takewhile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from harness.recipe import Recipe, SweepSpec
from harness.results import run_dir, write_sweep

RECIPE = "quick"
CLASS_NAMES = ["background", "zero", "one", "two", "three"]
PALETTE = np.array([[170, 170, 170], [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48]], np.uint8)
OOM_ERROR = (
    "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.11 GiB total capacity) | see log"
)
PAPER_ROW = {"table": "Table 3", "row": "RegionContrast w/MB 1000", "miou": 78.5}
SEEDED_RECIPE = "seeded"
# variant -> (contrast kind, val mIoU per seed 0, 1, 2; None: that seed failed). Against `ce`:
# `gain` is clearly better (its seed 0 failed), `loss` clearly worse, `overlap`'s CI straddles 0,
# and `single` finished one seed only.
SEEDED_MIOU = {
    "ce": ("none", [0.50, 0.52, 0.51]),
    "gain": ("region", [None, 0.60, 0.595]),
    "loss": ("pixel", [0.40, 0.43, 0.41]),
    "overlap": ("region", [0.53, 0.49, 0.52]),
    "single": ("all_pixel", [None, None, 0.55]),
}
# contrast kind -> (s/iter, contrast ms/iter, training peak MiB, bank fill) of a seed-0 run; later seeds shift
# them a little, so that pairing by seed matters.
SEEDED_COST = {
    "none": (0.16, 0.0, 300, None),
    "region": (0.19, 4.0, 340, 0.8),
    "pixel": (0.24, 9.5, 420, 1.0),
    "all_pixel": (0.40, 30.0, 600, None),
}
# A study whose newer runs carry the cost probe: variant -> (contrast kind, val mIoU per seed 0, 1, 2), as
# SEEDED_MIOU, and PROBES: the probe's (cost ratio, its 95 % interval) per seed, None where a run has none.
# `costly` costs clearly more than CE; `free`'s ratios straddle 1; `single` and `single_free` finished one seed,
# whose own interval excludes 1 and contains it; `partly` was probed on two of its three seeds; `legacy` predates
# the probe (its cost falls back to the wall clock).
PROBED_MIOU = {
    "ce": ("none", [0.50, 0.52, 0.51]),
    "costly": ("region", [0.55, 0.56, 0.555]),
    "free": ("region", [0.51, 0.53, 0.50]),
    "single": ("region", [None, None, 0.54]),
    "single_free": ("pixel", [None, None, 0.52]),
    "partly": ("pixel", [0.52, 0.53, 0.515]),
    "legacy": ("region", [0.53, 0.54, 0.52]),
}
PROBES = {
    "costly": [(1.20, (1.17, 1.23)), (1.24, (1.20, 1.27)), (1.22, (1.19, 1.26))],
    "free": [(0.97, (0.94, 1.00)), (1.02, (0.99, 1.05)), (0.99, (0.96, 1.03))],
    "single": [None, None, (1.10, (1.05, 1.16))],
    "single_free": [None, None, (0.96, (0.92, 1.01))],
    "partly": [(1.30, (1.26, 1.35)), None, (1.34, (1.29, 1.38))],
}
PROBE_ROUNDS = 20
PROBE_MEMORY_KIND = "cuda_max_allocated"
# A complete fixed study of five seeds (none failed), its mIoU = CE's + Δ per seed, one variant per verdict of the
# fixed design's family of 2 x 5 claims at a margin of 0.5 pp: `gain` better and `loss` worse (adjusted p 4e-5),
# `near` equivalent (adjusted TOST p 4e-4), `hint` suggestive (p 0.023 alone, 0.115 in the family) and `overlap`
# inconclusive.
FAMILY_BASE = [0.50, 0.52, 0.51, 0.53, 0.50]
FAMILY_DELTAS = {
    "gain": ("region", [0.05, 0.06, 0.055, 0.052, 0.058]),
    "loss": ("pixel", [-0.05, -0.06, -0.055, -0.052, -0.058]),
    "near": ("region", [0.001, -0.001, 0.0005, -0.0005, 0.0]),
    "hint": ("region", [0.01, 0.002, 0.012, 0.008, 0.003]),
    "overlap": ("region", [0.03, -0.03, 0.01, -0.02, 0.015]),
}
FAMILY_MIOU = {"ce": ("none", FAMILY_BASE)} | {
    variant: (kind, [base + delta for base, delta in zip(FAMILY_BASE, deltas)])
    for variant, (kind, deltas) in FAMILY_DELTAS.items()
}
COLLAPSE = "'background' predicted on 99.2% of the labelled pixels (it covers 61.0%)"
# A sequential study: seeds 0-9 in order, looks after 5 and 10 (max_seeds 10), three variants against CE, as Δ per
# seed over CE's runs (fewer values: fewer runs so far). `early` is better at the first look (its repeated CI
# [+4.56, +5.52] pp) and stopped there; `waiting` is undecided at 5 seeds with 7 of its 10 in; `undecided` reached
# max_seeds with its CI across 0 and the margin: inconclusive.
SEQUENTIAL_SWEEP = {"design": "sequential", "max_seeds": 10, "looks": [5, 10]}
SEQUENTIAL_BASE = [0.50, 0.52, 0.51, 0.53, 0.50, 0.51, 0.52, 0.50, 0.51, 0.52]
SEQUENTIAL_DELTAS = {
    "early": ("region", [0.05, 0.052, 0.049, 0.051, 0.05]),
    "waiting": ("region", [0.02, -0.01, 0.015, -0.02, 0.01, 0.005, -0.015]),
    "undecided": ("pixel", [0.03, -0.03, 0.02, -0.025, 0.01, -0.02, 0.03, -0.01, 0.02, -0.03]),
}
SEQUENTIAL_MIOU = {"ce": ("none", SEQUENTIAL_BASE)} | {
    variant: (kind, [base + delta for base, delta in zip(SEQUENTIAL_BASE, deltas)])
    for variant, (kind, deltas) in SEQUENTIAL_DELTAS.items()
}
# The quickstart's shape: CE and one contrast variant, one seed each, from random weights.
ONE_SEED_MIOU = {"ce": ("none", [0.5163]), "region": ("region", [0.4392])}


def summary(
    variant: str, kind: str, bank_size: int | None, val_miou: float | None, **fields: Any
) -> dict[str, Any]:
    """A finished variant's summary.json content; `fields` override any entry."""
    return {
        "recipe": RECIPE, "variant": variant, "seed": 0, "status": "ok", "error": None, "iterations": 40,
        "miou": val_miou, "per_class_iou": [0.9, None, val_miou, 0.4, 0.3], "class_names": CLASS_NAMES,
        "train_images_per_s": 50.0 if kind == "none" else 42.5, "s_per_iter": 0.16,
        "peak_memory_bytes": 300 * 2**20, "memory_kind": "rss", "params": 123456, "flops_per_image": 1.5e9,
        "world_size": 1, "mixed_precision": "no",
        "distributed_type": "NO", "zero_stage": None, "device": "cpu",
        "versions": {"torch": "2.14.1", "timm": "1.0.31", "accelerate": "1.15.0", "python": "3.12"},
        "backbone": "resnet18", "head": "deeplabv3", "output_stride": 8, "contrast_kind": kind,
        "center_variant": "weighted", "bank_size": bank_size, "bank_bytes": 0 if not bank_size else 5 * 2**20,
        "paper": None, "finished_at": "2026-11-25T10:00:00Z", **fields,
    }


def recipe_yaml(kind: str, bank_size: int | None) -> str:
    """A resolved recipe, dumped the way the engine dumps it."""
    recipe = Recipe.model_validate({
        "run": {"name": RECIPE},
        "model": {"backbone": "resnet18"},
        "loss": {"contrast": {"kind": kind, "bank_size": bank_size}},
    })
    return yaml.safe_dump(recipe.model_dump(mode="json"))


def metrics_lines(kind: str, scale: float, evals: bool = True) -> list[str]:
    """Training lines every 10 iterations (contrast loss only with contrast) and two evals."""
    lines = []
    for it in (10, 20, 30, 40):
        record = {"kind": "train", "iter": it, "loss": 2.0 * scale / it, "loss_ce": 1.5 * scale / it,
                  "loss_aux": 0.3 * scale / it, "lr": 0.01 * (1 - it / 50) ** 0.9, "step_time": 0.16}
        if kind != "none":
            record["loss_contrast"] = 0.2 * scale / it
        lines.append(json.dumps(record))
    if evals:
        lines += [json.dumps({"kind": "eval", "iter": it, "miou": it / 100 / scale}) for it in (20, 40)]
    return lines


def centers(separation: float, seed: int) -> dict[str, np.ndarray]:
    """40 region centers [40, 8] in 5 classes; larger `separation` = better separated clusters."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(5), 8)
    means = rng.normal(size=(5, 8)) * separation
    points = means[labels] + rng.normal(size=(40, 8))
    return {"centers": points.astype(np.float32), "labels": labels.astype(np.int64)}


def samples(seed: int) -> dict[str, np.ndarray]:
    """Two 16x16 val images with labels (a 255 border), predictions, palette and names."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((2, 16, 16), np.uint8)
    labels[:, 4:12, 4:12] = np.array([1, 3])[:, None, None]
    labels[:, 0, :] = 255
    noise = rng.random((2, 16, 16)) < 0.15  # predictions: the labels (ignore -> 0) with 15% random pixels
    preds = np.where(noise, rng.integers(0, 5, (2, 16, 16)), labels % 255).astype(np.uint8)
    return {
        "images": rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8), "labels": labels, "preds": preds,
        "palette": PALETTE, "class_names": np.array(CLASS_NAMES), "indices": np.array([0, 1], np.int64),
    }


def write_variant(results_dir: Path, name: str, kind: str, bank_size: int | None,
                  content: dict[str, Any] | None, arrays: bool, seed: int | None = None) -> None:
    """One run folder (<name>/, or <name>/seed-<k>/ with a seed); `content` None leaves out summary.json
    (a run still going or killed)."""
    folder = run_dir(results_dir, name, seed)
    folder.mkdir(parents=True)
    (folder / "recipe.yaml").write_text(recipe_yaml(kind, bank_size))
    lines = metrics_lines(kind, scale=1 + len(name) / 20, evals=content is not None)
    torn = '{"kind": "train", "it' if content is None else ""  # a killed run can stop mid-line
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n" + torn)
    if content is not None:
        (folder / "summary.json").write_text(json.dumps(content))
    if arrays:
        rng_seed = len(name) + (seed or 0)
        np.savez(folder / "val_centers.npz", **centers(0.5 if kind == "none" else 4.0, rng_seed))
        np.savez(folder / "val_samples.npz", **samples(rng_seed))


def build_results(
    root: Path, bank_sizes: tuple[int, int] = (0, 1000), arrays: bool = True, baseline: bool = True
) -> Path:
    """results/quick/ with a CE baseline, two region variants (the second reproducing a paper row),
    a failed variant and one without summary; returns results/quick."""
    results_dir = root / "results" / RECIPE
    if baseline:
        write_variant(results_dir, "ce", "none", None, summary("ce", "none", None, 0.50), arrays)
    for bank, miou, paper in zip(bank_sizes, (0.53, 0.56), (None, PAPER_ROW)):
        name = f"region_bank-{bank}" if bank_sizes[0] != bank_sizes[1] else f"region_{miou}"
        content = summary(name, "region", bank, miou, paper=paper)
        write_variant(results_dir, name, "region", bank, content, arrays)
    failed = summary("broken", "pixel", None, None, status="failed", error=OOM_ERROR,
                     train_images_per_s=None, s_per_iter=None, peak_memory_bytes=None, per_class_iou=None)
    write_variant(results_dir, "broken", "pixel", None, failed, arrays=False)
    write_variant(results_dir, "pending", "region", 500, None, arrays=False)
    return results_dir


def seeded_summary(variant: str, kind: str, seed: int, val_miou: float | None) -> dict[str, Any]:
    """A seed's summary.json with the newer cost fields; a failed run where `val_miou` is None."""
    s_per_iter, contrast_ms, train_mib, bank_fill = SEEDED_COST[kind]
    content = summary(
        variant, kind, None if kind == "none" else 0, val_miou, recipe=SEEDED_RECIPE, seed=seed,
        s_per_iter=s_per_iter + 0.003 * seed, contrast_ms_per_iter=contrast_ms * (1 + seed / 10),
        train_peak_memory_bytes=(train_mib + 2 * seed) * 2**20, eval_peak_memory_bytes=200 * 2**20,
        peak_memory_bytes=(train_mib + 2 * seed) * 2**20, bank_fill=bank_fill,
    )
    if val_miou is None:
        content.update(status="failed", error=OOM_ERROR, traceback="Traceback (most recent call last): ...")
    return content


def probe_fields(ratio: float, interval: tuple[float, float], seed: int) -> dict[str, Any]:
    """The cost probe's summary.json fields of a run whose median ratio is `ratio` with 95 % `interval`."""
    return {
        "cost_ratio": ratio, "cost_ratio_ci95": list(interval), "cost_probe_rounds": PROBE_ROUNDS,
        "contrast_ms_per_step": (ratio - 1) * 160.0, "contrast_extra_memory_bytes": (6 + seed) * 2**20,
        "contrast_extra_memory_kind": PROBE_MEMORY_KIND,
    }


def build_seeded_results(
    root: Path, runs: dict[str, tuple[str, list[float | None]]] = SEEDED_MIOU, baseline: str | None = None,
    arrays: tuple[str, ...] = (), probes: dict[str, list[tuple[float, tuple[float, float]] | None]] | None = None,
    fields: dict[str, dict[str, Any]] | None = None, collapsed: dict[tuple[str, int], str] | None = None,
    sweep: dict[str, Any] | None = None,
) -> Path:
    """results/seeded/<variant>/seed-<k>/ for every variant and seed in `runs` (mIoUs per seed; a shorter list: the
    later seeds not run), with sweep.json naming `baseline` and the seeds (`sweep` adds to it); finished runs of the
    variants in `arrays` save centers and samples, those `probes` gives a (ratio, interval) carry the cost probe's
    fields, `fields` adds to every summary of a variant, and `collapsed` marks (variant, seed) runs collapsed."""
    results_dir = root / "results" / SEEDED_RECIPE
    seeds = range(max(len(mious) for _, mious in runs.values()))
    for variant, (kind, mious) in runs.items():
        for seed, miou in zip(seeds, mious):
            content = seeded_summary(variant, kind, seed, miou) | (fields or {}).get(variant, {})
            probe = (probes or {}).get(variant, [None] * len(mious))[seed]
            if probe is not None:
                content.update(probe_fields(*probe, seed))
            if (variant, seed) in (collapsed or {}):
                content["collapsed"] = collapsed[variant, seed]
            write_variant(results_dir, variant, kind, content["bank_size"], content,
                          arrays=variant in arrays and miou is not None, seed=seed)
    write_sweep(results_dir, SweepSpec(baseline=baseline, seeds=list(seeds), **(sweep or {})))
    return results_dir


def read_results(report: Path) -> pd.DataFrame:
    """results.csv next to a report.md, indexed by variant."""
    return pd.read_csv(report.parent / "results.csv").set_index("variant")


def read_aggregate(report: Path) -> pd.DataFrame:
    """aggregate.csv next to a report.md, indexed by variant."""
    return pd.read_csv(report.parent / "aggregate.csv").set_index("variant")


def table_under(report: Path, heading: str) -> pd.DataFrame:
    """The first markdown table after `heading` in report.md, as string cells under its header."""
    section = report.read_text().split(f"\n{heading}\n", 1)[1].splitlines()
    lines = list(takewhile(lambda line: line.startswith("| "), dropwhile(lambda line: not line.startswith("| "),
                                                                        section)))
    rows = [[cell.strip() for cell in line.strip()[1:-1].split("|")] for line in lines]
    return pd.DataFrame(rows[2:], columns=rows[0])
