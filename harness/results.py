"""The results-folder contract: what a run writes, under which names, and how it is read back.

    results/<recipe>/sweep.json           {"baseline": the CE variant named by sweep.baseline or null, "seeds": [...],
                                          "target_delta", "equivalence_margin": the study's planned Δ and margin}
    results/<recipe>/<variant>/           one run, or, in a sweep with `seeds`, one seed-<k>/ folder per seed,
                                          each laid out like this:
        recipe.yaml       the resolved recipe the variant ran with (written before training, once the folder's
                          earlier checkpoint or summary was checked to come from the same recipe)
        metrics.jsonl     one JSON record per line: {"kind": "train", "iter", "loss", "loss_<part>", "lr",
                          "step_time", "contrast_ms"} every log interval, {"kind": "eval", "iter", "val_miou"}
                          per evaluation; the same numbers go to run.trackers, tagged <kind>/<name>
        metrics-<time>.jsonl  an earlier log, moved aside when --resume found no checkpoint to continue
        trackers/         the local files of run.trackers (TensorBoard events in trackers/<variant>/)
        summary.json      written when the run ends; `status` is "ok", "failed" or "interrupted" (see below)
        .lock             held by the launch that writes the folder; .lock.json says who that is
        val_centers.npz   centers [M,C] float32, labels [M]: ground-truth region centers of the val set
        val_samples.npz   images [Q,H,W,3], labels / preds [Q,H,W] uint8, palette, class_names, indices
        model.safetensors the trained model's weights (no aux head unless run.save_aux_head); with recipe.yaml
                          enough to rebuild it (harness.evaluate)
        eval-<name>.json  one evaluation by harness.evaluate: mIoU, per-class IoU, protocol, seconds
        checkpoint/       the latest resumable state (checkpoint.old/ during a swap), with manifest.json: every
                          file's size (and SHA-256 up to 64 MiB), the recipe's fingerprint, the iteration and why
                          it was saved; removed when done unless run.keep_checkpoint, which keeps the final state

summary.json always holds the VARIANT_FIELDS (what the variant is), `status`, `error` (and
`traceback` when failed), the recipe's `fingerprint`, the launch (world size, precision,
distributed type, device, versions) and `finished_at`. A finished run adds the METRIC_FIELDS,
per-class IoU, `model_sha256` (the SHA-256 of model.safetensors), `requeue_count` (how often it
stopped on a signal and resumed) and `resume_exact` (false only after --resume-inexact). An
interrupted run adds the `iteration` its checkpoint holds.
Everything here is plain files and no torch, so reports can be rebuilt anywhere.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from harness.recipe import Recipe, RecipeError, SweepSpec, validate

SWEEP_FILE = "sweep.json"
SEED_PREFIX = "seed-"
RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
VAL_CENTERS_FILE = "val_centers.npz"
VAL_SAMPLES_FILE = "val_samples.npz"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_OLD_DIR = f"{CHECKPOINT_DIR}.old"  # the previous checkpoint, while a new one is swapped in
CHECKPOINT_MANIFEST = "manifest.json"
LOCK_FILE = ".lock"
MODEL_FILE = "model.safetensors"
EVAL_PREFIX = "eval-"
TRACKERS_DIR = "trackers"

# Fields that only mean something for a finished run.
METRIC_FIELDS = (
    "val_miou", "train_images_per_s", "s_per_iter", "peak_memory_bytes", "bank_bytes",
    "params", "flops_per_image",
)


# ---------------------------------------------------------------- writing


def remove(path: Path) -> None:
    """Delete a file or a folder tree if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def disk_full(path: Path) -> OSError:
    """The error for a write of `path` that hit ENOSPC: one line saying where."""
    return OSError(errno.ENOSPC, f"no space left on {path}")


def publish(path: Path, write: Callable[[Path], None]) -> None:
    """Create `path` (a file or a folder) by writing a private sibling and renaming it into place.

    Readers see the old version or the new one, never half of one; a failed write leaves no scratch
    behind. A folder that another process published first (the same content, e.g. a dataset cache
    built by every rank) wins.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(scratch)
    except BaseException as error:
        remove(scratch)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise disk_full(path) from error
        raise
    try:
        os.replace(scratch, path)
    except OSError:  # a folder cannot replace a non-empty folder
        shutil.rmtree(scratch)


def write_text(path: Path, text: str) -> None:
    """Atomic text file."""
    publish(path, lambda scratch: scratch.write_text(text))


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def without_nan(value: Any) -> Any:
    """NaN floats as None, recursively: strict JSON readers reject NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nan(item) for item in value]
    return value


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Atomic JSON; NaN becomes null so every JSON reader accepts the file."""
    write_text(path, json.dumps(without_nan(payload), indent=2) + "\n")


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Atomic compressed .npz."""
    def write(scratch: Path) -> None:
        with scratch.open("wb") as handle:
            np.savez_compressed(handle, **arrays)

    publish(path, write)


def write_png(path: Path, array: np.ndarray) -> None:
    """Atomic PNG of a uint8 [H,W] label image."""
    publish(path, lambda scratch: Image.fromarray(array).save(scratch, format="PNG"))


def write_recipe(out_dir: Path, recipe: Recipe) -> None:
    """The exact recipe a variant runs with, as YAML."""
    write_text(out_dir / RECIPE_FILE, yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))


class MetricsLog:
    """metrics.jsonl of one variant, written by the main process only."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.path, self.enabled = Path(out_dir) / METRICS_FILE, enabled

    def move_aside(self) -> Path | None:
        """Keep an earlier log under metrics-<time>.jsonl instead of overwriting it; its new name, if any."""
        if not self.enabled or not self.path.exists():
            return None
        kept = self.path.with_name(f"{self.path.stem}-{time.strftime('%Y%m%dT%H%M%S')}{self.path.suffix}")
        os.replace(self.path, kept)
        return kept

    def truncate_after(self, iteration: int) -> None:
        """Drop records past `iteration` (all of them for a fresh start): a resumed run rewrites them."""
        if not self.enabled or not self.path.exists():
            return
        kept = [record for record in read_metrics(self.path) if record.get("iter", iteration + 1) <= iteration]
        write_text(self.path, "".join(json.dumps(record) + "\n" for record in kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append one record."""
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(without_nan(record)) + "\n")


SWEEP_DEFAULTS = {"baseline": None, "seeds": [], "target_delta": 0.005, "equivalence_margin": 0.005}


def write_sweep(recipe_dir: Path, sweep: SweepSpec) -> None:
    """What the report must know of the sweep beyond its runs: the baseline, the seeds, the target Δ and margin."""
    write_json(Path(recipe_dir) / SWEEP_FILE, {key: getattr(sweep, key) for key in SWEEP_DEFAULTS})


def read_sweep(results_dir: Path) -> dict[str, Any]:
    """sweep.json, with defaults for what a study written before a field existed lacks."""
    path = Path(results_dir) / SWEEP_FILE
    return {**SWEEP_DEFAULTS, **(json.loads(path.read_text()) if path.exists() else {})}


# ---------------------------------------------------------------- what a variant is


def variant_fields(name: str, recipe: Recipe) -> dict[str, Any]:
    """The summary fields that describe what a variant is (the same for a finished or a failed run)."""
    contrast = recipe.loss.contrast
    return {
        "recipe": recipe.run.name, "variant": name, "seed": recipe.run.seed,
        "backbone": recipe.model.backbone, "head": recipe.model.head,
        "output_stride": recipe.model.output_stride,
        "contrast_kind": contrast.kind,
        "center_variant": contrast.variant if contrast.kind == "region" else None,
        "bank_size": contrast.bank_size if contrast.kind != "none" else None,
        "paper": recipe.paper.model_dump() if recipe.paper else None,
        "iterations": recipe.optim.iterations,
        "eval_split": recipe.eval.split,  # the split val_miou was scored on
    }


# ---------------------------------------------------------------- reading


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a torn line (a run killed mid-write) is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def summary_from_recipe(folder: Path) -> dict[str, Any]:
    """What a variant without summary.json can still tell: its configuration and progress."""
    status = "running" if (folder / METRICS_FILE).exists() else "missing"
    try:
        recipe = validate(yaml.safe_load((folder / RECIPE_FILE).read_text()) or {})
    except (OSError, yaml.YAMLError, RecipeError):
        return {"status": status, "variant": folder.name}
    return {**variant_fields(variant_of(folder), recipe), "status": status}


def run_dir(recipe_dir: Path, variant: str, seed: int | None) -> Path:
    """Where one run writes: <recipe>/<variant>/, or <recipe>/<variant>/seed-<k>/ in a seeded sweep."""
    folder = Path(recipe_dir) / variant
    return folder if seed is None else folder / f"{SEED_PREFIX}{seed}"


def variant_of(folder: Path) -> str:
    """The sweep's name for the variant a run folder belongs to (its folder, or the one above seed-<k>)."""
    folder = Path(folder)
    return folder.parent.name if folder.name.startswith(SEED_PREFIX) else folder.name


def read_summary(folder: Path) -> dict[str, Any]:
    """summary.json of a run, or a stand-in built from its recipe while it has none."""
    path = Path(folder) / SUMMARY_FILE
    summary = json.loads(path.read_text()) if path.exists() else summary_from_recipe(Path(folder))
    return {**summary, "variant": variant_of(folder)}  # the folder name is what the sweep named it


def finished(folder: Path) -> bool:
    """Whether a variant already has a successful summary (a resumed sweep skips it)."""
    path = Path(folder) / SUMMARY_FILE
    return path.exists() and json.loads(path.read_text()).get("status") == "ok"


def _is_run(folder: Path) -> bool:
    """Whether a run has started writing into `folder`."""
    return any((folder / name).exists() for name in (RECIPE_FILE, METRICS_FILE, SUMMARY_FILE))


def run_folders(results_dir: Path) -> list[Path]:
    """Every run folder of a recipe: <variant>/ itself, or each of its seed-<k>/ sub-folders."""
    runs = []
    for folder in sorted(path for path in Path(results_dir).iterdir() if path.is_dir()):
        seeds = sorted(
            (sub for sub in folder.glob(f"{SEED_PREFIX}*") if sub.name.removeprefix(SEED_PREFIX).isdigit()
             and sub.is_dir() and _is_run(sub)),
            key=lambda sub: int(sub.name.removeprefix(SEED_PREFIX)),
        )
        runs += seeds or ([folder] if _is_run(folder) else [])
    return runs


# ---------------------------------------------------------------- the study manifest
#
#     results/<recipe>/study.json    a study submitted as scheduler jobs (harness/submit.py): {"recipe",
#                                    "overrides", "executor", "jobs_dir", "report_job_id", "runs": [{"variant",
#                                    "seed", "folder" (relative to results/<recipe>/), "job_id", "state",
#                                    "requeue_count"}, ...]}, one entry per expected run
#
# `harness submit` and the jobs both change it: each change is a read, an edit and an atomic write under
# the study's lock, so no writer loses another's update.

STUDY_FILE = "study.json"
RUN_STATES = ("pending", "running", "requeued", "finished", "failed")


def study_lock(recipe_dir: Path) -> Any:
    """The lock (a filelock.FileLock, a context manager) that every writer of study.json holds."""
    from filelock import FileLock  # only a study's writers need it

    Path(recipe_dir).mkdir(parents=True, exist_ok=True)
    return FileLock(Path(recipe_dir) / f".{STUDY_FILE}.lock")


def read_study(recipe_dir: Path) -> dict[str, Any] | None:
    """study.json, or None for a study that was not submitted as jobs."""
    path = Path(recipe_dir) / STUDY_FILE
    return json.loads(path.read_text()) if path.exists() else None


def write_study(recipe_dir: Path, study: dict[str, Any]) -> None:
    """Publish study.json whole (hold study_lock around the read that `study` came from)."""
    write_json(Path(recipe_dir) / STUDY_FILE, study)


def update_study_run(recipe_dir: Path, folder: str, job_id: str, state: str, requeued: bool = False) -> bool:
    """Set a run's state (one of RUN_STATES), counting a requeue, if job `job_id` owns its entry; whether it did."""
    with study_lock(recipe_dir):
        study = read_study(recipe_dir)
        entry = next((run for run in (study or {}).get("runs", []) if run["folder"] == folder), None)
        if entry is None or entry["job_id"] != job_id:  # a later submission took the run over
            return False
        entry["state"] = state
        entry["requeue_count"] += int(requeued)
        write_study(recipe_dir, study)
        return True


def run_label(variant: str, seed: int | None) -> str:
    """How messages name a run: `region`, or `region (seed 3)` in a seeded sweep."""
    return variant if seed is None else f"{variant} (seed {seed})"


def expected_runs(results_dir: Path) -> list[tuple[str, int | None]]:
    """Every (variant, seed) a study expects: study.json's runs, or, for a study launched otherwise,
    each variant that has a folder once per seed of sweep.json."""
    study = read_study(results_dir)
    if study is not None:
        return [(run["variant"], run["seed"]) for run in study["runs"]]
    variants = dict.fromkeys(variant_of(folder) for folder in run_folders(results_dir))
    seeds = read_sweep(results_dir)["seeds"] or [None]
    return [(variant, seed) for variant in variants for seed in seeds]


def missing_runs(results_dir: Path) -> list[str]:
    """The labels of the expected runs that have not finished successfully."""
    return [run_label(variant, seed) for variant, seed in expected_runs(results_dir)
            if not finished(run_dir(results_dir, variant, seed))]
