"""The results-folder contract: what a run writes, under which names, and how it is read back.

    results/<recipe>/sweep.json           {"baseline": the CE variant named by sweep.baseline or null, "seeds": [...],
                                          "target_delta", "equivalence_margin": the study's planned Δ and margin}
    results/<recipe>/<variant>/           one run, or, in a sweep with `seeds`, one seed-<k>/ folder per seed,
                                          each laid out like this:
        recipe.yaml       the resolved recipe the variant ran with (written before training, once the folder's
                          earlier checkpoint or summary was checked to come from the same recipe)
        metrics.jsonl     one JSON record per line: {"kind": "train", "iter", "loss", "loss_<part>", "lr",
                          "step_time", "contrast_ms"} every log interval, {"kind": "eval", "iter", "miou"}
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

Each record is a pydantic model here (RunSummary, MetricsRecord, SweepRecord, StudyManifest), and this
module is the only writer and reader of those files: summary.json carries SCHEMA_VERSION; summaries
written before the models (no schema_version; the score under `val_miou`, whatever split it came
from) read unchanged, the score as `miou` beside `eval_split`. A RunSummary always holds what the
variant is, `status` ("ok", "failed", "interrupted"; a folder without a summary reads as "running" or
"missing", one whose summary is damaged as "unreadable"), `error` (and `traceback` when failed), the
recipe's `fingerprint`, the launch and `finished_at`; a finished run adds the fields marked as metrics.

Every reader raises DamagedFile, naming the file and what is wrong with it, for a file that is
unreadable, empty, not JSON / YAML, or of the wrong shape; study-level readers (`study_runs`) go on
without such a run and mark it unreadable. Nothing is deleted to recover: `set_aside` moves a file
or folder next to itself under a dated name. Plain files and no torch, so reports can be rebuilt
anywhere.
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
from typing import Any, Literal

import numpy as np
import yaml
from PIL import Image
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.recipe import ContrastConfig, Recipe, RecipeError, SweepSpec, fingerprint, fingerprinted, validate

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

SCHEMA_VERSION = 2  # 1: summaries before these models (no schema_version field; the score as `val_miou`)
SET_ASIDE_STAMP = "%Y%m%dT%H%M%S"


# ---------------------------------------------------------------- damaged files


class DamagedFile(Exception):
    """A file the harness reads is missing where it must be, unreadable, empty or malformed: its path and what
    is wrong, in one line."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path, self.problem = Path(path), problem
        super().__init__(f"{self.path}: {problem}")


def set_aside(path: Path, why: str = "damaged") -> Path:
    """Move a damaged or replaced file or folder next to itself as <name>.<why>-<time>, never deleting it; its new
    path. Run and study readers skip such names."""
    path = Path(path)
    kept = path.with_name(f"{path.name}.{why}-{time.strftime(SET_ASIDE_STAMP)}")
    while kept.exists():  # twice in one second: keep both
        kept = kept.with_name(f"{kept.name}-{uuid.uuid4().hex[:6]}")
    os.replace(path, kept)
    return kept


def set_run_aside(folder: Path) -> Path:
    """Move a run folder's files (all but the launch's lock, held while this runs) into a sibling folder set aside
    as <name>.replaced-<time>; that folder."""
    folder = Path(folder)
    kept = folder.with_name(f"{folder.name}.replaced-{time.strftime(SET_ASIDE_STAMP)}")
    kept.mkdir()
    for entry in folder.iterdir():
        if not entry.name.startswith(LOCK_FILE):
            os.replace(entry, kept / entry.name)
    return kept


def is_set_aside(name: str) -> bool:
    """Whether a file or folder name is one set_aside gave."""
    stem, dot, tail = name.rpartition(".")
    why, dash, stamp = tail.partition("-")
    return bool(stem and dot and dash and why.isalpha() and stamp[:8].isdigit())


def read_text(path: Path) -> str:
    """A file's text; DamagedFile when it is missing, unreadable, not text or empty."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise DamagedFile(path, "missing") from None
    except UnicodeDecodeError:
        raise DamagedFile(path, "not text (bytes that are not UTF-8)") from None
    except OSError as error:
        raise DamagedFile(path, f"unreadable ({error.strerror or error})") from None
    if not text.strip():
        raise DamagedFile(path, "empty")
    return text


def read_json(path: Path) -> Any:
    """A JSON file's value; DamagedFile naming the place where it stops being JSON."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise DamagedFile(path, f"not JSON ({error.msg} at line {error.lineno} column {error.colno}); "
                                "truncated or overwritten?") from None


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file holding a mapping; DamagedFile otherwise."""
    try:
        tree = yaml.safe_load(read_text(path))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise DamagedFile(path, f"not YAML ({getattr(error, 'problem', None) or error}{where})") from None
    if not isinstance(tree, dict):
        raise DamagedFile(path, f"not a mapping of keys but a {type(tree).__name__}")
    return tree


def read_recipe(path: Path) -> Recipe:
    """A run's resolved recipe.yaml; DamagedFile when it is not YAML or not a recipe today's schema reads."""
    try:
        return validate(read_yaml(path))
    except RecipeError as error:
        raise DamagedFile(path, f"not a recipe: {error}") from None


def shape_problem(error: ValidationError, what: str) -> str:
    """A pydantic error in one line: which field is wrong and how."""
    first = error.errors()[0]
    place = ".".join(str(part) for part in first["loc"]) or "the whole file"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"not a {what}: {place}: {first['msg']}{more}"


def read_model(path: Path, model: type[Record], what: str) -> Any:
    """A JSON file validated as `model`; DamagedFile naming what is wrong."""
    try:
        return model.model_validate(read_json(path))
    except ValidationError as error:
        raise DamagedFile(path, shape_problem(error, what)) from None


# ---------------------------------------------------------------- the records


class Record(BaseModel):
    """A results record: known fields typed, unknown ones kept (a newer harness, or a contrast kind, may add
    some), NaN written as null."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        """The JSON object the file holds."""
        return without_nan(self.model_dump(mode="json", by_alias=False))


def metric(**options: Any) -> Any:
    """A summary field that only a finished run has (None in any other)."""
    return Field(None, json_schema_extra={"finished_only": True}, **options)


RunStatus = Literal["ok", "failed", "interrupted", "running", "missing", "unreadable"]


class RunSummary(Record):
    """summary.json of one run (or the stand-in of a run without one): what the variant is, how it ended, the
    launch, and for a finished run its metrics."""

    schema_version: int = 1
    # what the variant is (variant_fields)
    recipe: str | None = None
    variant: str = ""  # the sweep's name, which the run's folder bears: read_summary takes it from there
    seed: int | None = None
    backbone: str | None = None
    head: str | None = None
    output_stride: int | None = None
    contrast_kind: str | None = None
    # what its contrast kind adds (its spec's summary fields; a kind of a package may add others, kept as extras)
    center_variant: str | None = None  # RegionContrast's Eq. 2 / Eq. 3 variant
    bank_size: int | None = None  # a bank's slots per class: resolved to a number in a finished run's summary
    contrast_settings: dict[str, Any] | None = None  # the kind's settings block as resolved, e.g. {"momentum": 0.99}
    paper: dict[str, Any] | None = None
    iterations: int | None = None
    eval_split: Literal["val", "test"] = "val"  # the split `miou` was scored on
    # how it ended
    status: RunStatus
    error: str | None = None
    traceback: str | None = None
    iteration: int | None = None  # an interrupted run's checkpoint
    signal: str | None = None
    collapsed: str | None = metric()  # why its predictions say it learned nothing; None when it did
    # the launch
    fingerprint: str | None = None
    world_size: int | None = None
    mixed_precision: str | None = None
    distributed_type: str | None = None
    zero_stage: int | None = None
    device: str | None = None
    versions: dict[str, str | None] | None = None
    finished_at: str | None = None
    # a finished run
    miou: float | None = metric(validation_alias=AliasChoices("miou", "val_miou"))
    per_class_iou: list[float | None] | None = metric()
    class_names: list[str] | None = metric()
    global_batch_size: int | None = metric()
    per_process_batch: int | None = metric()
    grad_accum_steps: int | None = metric()
    s_per_iter: float | None = metric()  # the median timed step: robust to stalls, the pace of a typical step
    s_per_iter_mean: float | None = metric()  # the mean timed step: what the steps cost in all
    train_images_per_s: float | None = metric()
    contrast_ms_per_iter: float | None = metric()
    train_peak_memory_bytes: int | None = metric()
    eval_peak_memory_bytes: int | None = metric()
    peak_memory_bytes: int | None = metric()
    memory_kind: str | None = metric()
    per_rank: list[dict[str, Any]] | None = metric()
    bank_fill: float | None = metric()
    params: int | None = metric()
    flops_per_image: float | None = metric()
    backbone_weights: str | None = metric()
    bank_bytes: int | None = metric()
    bank_digest: str | None = metric()
    bank_identical_across_ranks: bool | None = metric()
    model_sha256: str | None = metric()
    requeue_count: int = 0
    resume_exact: bool | None = None  # false after --resume-inexact went past a damaged checkpoint
    resume_replaced: list[str] | None = None  # the damaged checkpoint parts it replaced with a fresh state
    # the cost probe (runs with a contrast term)
    cost_ratio: float | None = metric()
    cost_ratio_ci95: tuple[float, float] | None = metric()
    cost_probe_rounds: int | None = metric()
    contrast_ms_per_step: float | None = metric()
    contrast_extra_memory_bytes: int | None = metric()
    contrast_extra_memory_kind: str | None = metric()
    cost_probe_skipped: str | None = metric()  # why a finished run has no probe: no contrast term, or switched off

    @model_validator(mode="after")
    def _finished_runs_have_a_score(self) -> "RunSummary":
        if self.status == "ok" and self.miou is None:
            raise ValueError("a finished run (status ok) without its mIoU")
        return self


def finished_only_fields(numeric: bool = False) -> tuple[str, ...]:
    """The RunSummary fields that only a finished run has (blank in a report for any other); with `numeric`, those
    holding numbers (an interval counts)."""
    numbers = (int | None, float | None, tuple[float, float] | None)
    return tuple(name for name, field in RunSummary.model_fields.items()
                 if (field.json_schema_extra or {}).get("finished_only") and (not numeric or field.annotation in numbers))


class MetricsRecord(Record):
    """One line of metrics.jsonl: a training log (losses, lr, step time) or an evaluation (mIoU)."""

    kind: Literal["train", "eval"]
    iter: int
    miou: float | None = Field(None, validation_alias=AliasChoices("miou", "val_miou"))

    def numbers(self) -> dict[str, float]:
        """Every number the record holds but its iteration: losses, lr, step time, mIoU."""
        values = {"miou": self.miou, **(self.model_extra or {})}
        return {name: float(value) for name, value in values.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)}


Design = Literal["fixed", "sequential"]


class SweepRecord(Record):
    """sweep.json: what a report must know of the sweep beyond its runs."""

    baseline: str | None = None  # the CE variant named by sweep.baseline, or null
    seeds: list[int] = []
    target_delta: float = 0.005
    equivalence_margin: float = 0.005
    design: Design = "fixed"
    max_seeds: int | None = None  # a sequential design's most seeds per variant
    looks: list[int] | None = None  # a sequential design's planned looks, in seeds


RunState = Literal["pending", "running", "requeued", "finished", "failed"]
RUN_STATES: tuple[str, ...] = RunState.__args__


class StudyRun(Record):
    """One expected run of a submitted study: its folder (relative to results/<recipe>/), its job and state."""

    variant: str
    seed: int | None = None
    folder: str
    job_id: str | None = None
    state: RunState = "pending"
    requeue_count: int = 0


class StudyManifest(Record):
    """study.json: a study submitted as scheduler jobs."""

    recipe: str
    overrides: list[str] = []
    executor: Literal["slurm", "local"]
    jobs_dir: str
    report_job_id: str | None = None
    controller_job_id: str | None = None  # a sequential study's controller (harness submit --until-decided)
    runs: list[StudyRun] = []



# ---------------------------------------------------------------- writing


def remove(path: Path) -> None:
    """Delete a file or a folder tree if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


DISK_FULL_FREE_BYTES = 2**20


def disk_full(path: Path) -> OSError:
    """The error for a write of `path` that ran out of space: one line saying where."""
    return OSError(errno.ENOSPC, f"no space left on {path}")


def out_of_space(error: BaseException, path: Path) -> bool:
    """Whether a failed write of `path` ran out of space: ENOSPC, or a library that does not say so (torch's
    "unexpected pos", numpy's short write, safetensors' "os error 28") on a filesystem with under a MiB left."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC or "os error 28" in str(error):
        return True
    existing = next((folder for folder in Path(path).absolute().parents if folder.exists()), Path("/"))
    try:
        return shutil.disk_usage(existing).free < DISK_FULL_FREE_BYTES
    except OSError:
        return False


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
        if isinstance(error, Exception) and out_of_space(error, path):
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


def write_recipe(out_dir: Path, recipe: Recipe) -> Path | None:
    """The exact recipe a variant runs with, as YAML. An earlier recipe.yaml with other bytes (damaged, or written
    by an older schema) is set aside first, never overwritten: its new path, or None."""
    path, tree = Path(out_dir) / RECIPE_FILE, recipe.model_dump(mode="json")
    text = yaml.safe_dump(tree, sort_keys=False)
    kept = set_aside(path, "replaced") if path.is_file() and not same_recipe(path, tree) else None
    write_text(path, text)
    return kept


def same_recipe(path: Path, tree: dict[str, Any]) -> bool:
    """Whether a recipe.yaml holds the recipe `tree` computes with (where a run writes may differ: a moved folder)."""
    try:
        return fingerprinted(read_yaml(path)) == fingerprinted(tree)
    except DamagedFile:
        return False


class MetricsLog:
    """metrics.jsonl of one variant, written by the main process only."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.path, self.enabled = Path(out_dir) / METRICS_FILE, enabled

    def move_aside(self) -> Path | None:
        """Keep an earlier log under metrics-<time>.jsonl instead of overwriting it; its new name, if any."""
        if not self.enabled or not self.path.exists():
            return None
        kept = self.path.with_name(f"{self.path.stem}-{time.strftime(SET_ASIDE_STAMP)}{self.path.suffix}")
        os.replace(self.path, kept)
        return kept

    def truncate_after(self, iteration: int) -> Path | None:
        """Drop records past `iteration` (all of them for a fresh start): a resumed run rewrites them. A log with
        lines that are not records is set aside first, and its readable records carried over; its new name."""
        if not self.enabled or not self.path.exists():
            return None
        try:
            records, kept = read_metrics(self.path), None
        except DamagedFile:
            records = read_metrics(self.path, lenient=True)
            kept = set_aside(self.path)
        write_text(self.path, "".join(metrics_line(record) for record in records if record.iter <= iteration))
        return kept

    def write(self, record: dict[str, Any]) -> None:
        """Append one record."""
        if not self.enabled:
            return
        try:
            with self.path.open("a") as handle:
                handle.write(metrics_line(MetricsRecord.model_validate(record)))
        except OSError as error:
            if out_of_space(error, self.path):
                raise disk_full(self.path) from error
            raise


def metrics_line(record: MetricsRecord) -> str:
    """One line of metrics.jsonl: the record's fields in the order they were given (an unset mIoU left out)."""
    return json.dumps(without_nan(record.model_dump(mode="json", exclude_unset=True))) + "\n"


def write_sweep(recipe_dir: Path, sweep: SweepSpec) -> str | None:
    """What the report must know of the sweep beyond its runs: the baseline, the seeds, the design, target Δ and
    margin. A damaged sweep.json is set aside, not overwritten: then a line saying so (None otherwise)."""
    path, said = Path(recipe_dir) / SWEEP_FILE, None
    fields = {name: getattr(sweep, name) for name in SweepRecord.model_fields if hasattr(sweep, name)}
    record = SweepRecord(**fields).to_json()
    if path.exists():
        try:
            same = read_json(path) == record
        except DamagedFile as damage:
            said, same = f"{damage}: set aside as {set_aside(path).name}, written again from the recipe", True
        if not same:  # another sweep's, or bytes a reader would take for one: kept, never overwritten
            said = f"{path}: held another sweep record: kept as {set_aside(path, 'replaced').name}"
    write_json(path, record)
    return said


def read_sweep(results_dir: Path) -> SweepRecord:
    """sweep.json, with defaults for what a study written before a field existed lacks (or without the file)."""
    path = Path(results_dir) / SWEEP_FILE
    return read_model(path, SweepRecord, "sweep record") if path.exists() else SweepRecord()


# ---------------------------------------------------------------- what a variant is


def variant_fields(name: str, recipe: Recipe, kind_fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary fields that describe what a variant is (the same for a finished or a failed run): the recipe's,
    its fingerprint (every summary's, from here), and `kind_fields`, what its contrast kind adds (the engine asks the
    kind's spec: harness.engine.terms.contrast_summary). Without them, for a run read from its recipe alone (no
    summary yet; this module cannot ask the registry), the recipe's loss.contrast.bank_size stands in."""
    return {
        "schema_version": SCHEMA_VERSION, "recipe": recipe.run.name, "variant": name, "seed": recipe.run.seed,
        "backbone": recipe.model.backbone, "head": recipe.model.head,
        "output_stride": recipe.model.output_stride,
        "contrast_kind": recipe.loss.contrast.kind,
        "paper": recipe.paper.model_dump() if recipe.paper else None,
        "iterations": recipe.optim.iterations,
        "eval_split": recipe.eval.split,  # the split `miou` was scored on
        "fingerprint": fingerprint(recipe),
        **({"bank_size": recipe.loss.contrast.bank_size} if kind_fields is None else kind_fields),
    }


def contrast_free(kind: str | None) -> bool:
    """Whether a run's contrast kind is the recipe's default, no contrast term at all (a report's baseline)."""
    return kind == ContrastConfig().kind


def write_summary(folder: Path, summary: dict[str, Any]) -> RunSummary:
    """Validate a run's summary against the contract and write summary.json; the record written."""
    record = RunSummary.model_validate({**summary, "schema_version": SCHEMA_VERSION})
    # the fields the run recorded, no more: a field a run does not have (a probe it did not run) stays absent
    write_json(Path(folder) / SUMMARY_FILE, record.model_dump(mode="json", exclude_unset=True))
    return record


# ---------------------------------------------------------------- reading


def read_metrics(path: Path, lenient: bool = False) -> list[MetricsRecord]:
    """The records of a metrics.jsonl. A torn last line (a run killed mid-write: no newline after it, not JSON) is
    skipped; any other line that is not a record raises DamagedFile naming it, unless `lenient` (which skips it)."""
    if lenient:  # what can be read of a damaged log: undecodable bytes become lines that are skipped
        text = Path(path).read_bytes().decode(errors="replace")
    else:
        text = read_text(path) if Path(path).stat().st_size else ""
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(MetricsRecord.model_validate_json(line))
        except ValidationError as error:
            torn = number == len(lines) and not text.endswith("\n") and error.errors()[0]["type"] == "json_invalid"
            if not (lenient or torn):
                raise DamagedFile(path, f"line {number}: {shape_problem(error, 'metrics record')}") from None
    return records


def seed_of(folder: Path) -> int | None:
    """The seed a seed-<k> run folder holds; None for a run without seeds."""
    tail = Path(folder).name.removeprefix(SEED_PREFIX)
    return int(tail) if Path(folder).name.startswith(SEED_PREFIX) and tail.isdigit() else None


def summary_from_recipe(folder: Path) -> RunSummary:
    """What a variant without summary.json can still tell: its configuration (when its recipe reads) and
    progress."""
    folder = Path(folder)
    status = "running" if (folder / METRICS_FILE).exists() else "missing"
    try:
        recipe = read_recipe(folder / RECIPE_FILE)
    except DamagedFile:
        return RunSummary(variant=variant_of(folder), seed=seed_of(folder), status=status)
    return RunSummary.model_validate({**variant_fields(variant_of(folder), recipe), "status": status})


def run_dir(recipe_dir: Path, variant: str, seed: int | None) -> Path:
    """Where one run writes: <recipe>/<variant>/, or <recipe>/<variant>/seed-<k>/ in a seeded sweep."""
    folder = Path(recipe_dir) / variant
    return folder if seed is None else folder / f"{SEED_PREFIX}{seed}"


def variant_of(folder: Path) -> str:
    """The sweep's name for the variant a run folder belongs to (its folder, or the one above seed-<k>)."""
    folder = Path(folder)
    return folder.parent.name if folder.name.startswith(SEED_PREFIX) else folder.name


def read_summary(folder: Path) -> RunSummary:
    """summary.json of a run, or a stand-in built from its recipe while it has none; DamagedFile when it is
    damaged."""
    path = Path(folder) / SUMMARY_FILE
    summary = read_model(path, RunSummary, "run summary") if path.exists() else summary_from_recipe(Path(folder))
    summary.variant = variant_of(folder)  # the folder name is what the sweep named it
    return summary


def unreadable(folder: Path, damage: DamagedFile) -> RunSummary:
    """The stand-in of a run whose summary is damaged: what its folder and recipe tell, and what is wrong."""
    known = summary_from_recipe(folder).model_dump(exclude={"status", "error"})
    return RunSummary.model_validate({**known, "status": "unreadable", "error": str(damage)})


def study_runs(results_dir: Path) -> list[tuple[Path, RunSummary]]:
    """Every run folder with its summary, a damaged one as an `unreadable` stand-in: a study-level reader goes on
    without it."""
    runs = []
    for folder in run_folders(results_dir):
        try:
            runs.append((folder, read_summary(folder)))
        except DamagedFile as damage:
            runs.append((folder, unreadable(folder, damage)))
    return runs


def finished(folder: Path) -> bool:
    """Whether a run has a successful summary (a resumed sweep skips it); a damaged one is no proof of it."""
    try:
        return read_summary(folder).status == "ok"
    except DamagedFile:
        return False


def _is_run(folder: Path) -> bool:
    """Whether a run has started writing into `folder`."""
    return any((folder / name).exists() for name in (RECIPE_FILE, METRICS_FILE, SUMMARY_FILE))


def run_folders(results_dir: Path) -> list[Path]:
    """Every run folder of a recipe: <variant>/ itself, or each of its seed-<k>/ sub-folders; hidden folders
    (the jobs' .submitit) and folders set aside are not runs."""
    runs = []
    variants = (path for path in Path(results_dir).iterdir()
                if path.is_dir() and not path.name.startswith(".") and not is_set_aside(path.name))
    for folder in sorted(variants):
        seeds = sorted(
            (sub for sub in folder.glob(f"{SEED_PREFIX}*") if seed_of(sub) is not None and sub.is_dir()
             and _is_run(sub)),
            key=seed_of,
        )
        runs += seeds or ([folder] if _is_run(folder) else [])
    return runs


# ---------------------------------------------------------------- the study manifest
#
#     results/<recipe>/study.json    a study submitted as scheduler jobs (harness/submit.py): StudyManifest, one
#                                    StudyRun per expected run
#
# `harness submit` and the jobs both change it: each change is a read, an edit and an atomic write under
# the study's lock, so no writer loses another's update.

STUDY_FILE = "study.json"


def study_lock(recipe_dir: Path) -> Any:
    """The lock (a filelock.FileLock, a context manager) that every writer of study.json holds."""
    from filelock import FileLock  # only a study's writers need it

    Path(recipe_dir).mkdir(parents=True, exist_ok=True)
    return FileLock(Path(recipe_dir) / f".{STUDY_FILE}.lock")


def read_study(recipe_dir: Path) -> StudyManifest | None:
    """study.json, or None for a study that was not submitted as jobs; DamagedFile when it is damaged."""
    path = Path(recipe_dir) / STUDY_FILE
    return read_model(path, StudyManifest, "study manifest") if path.exists() else None


def write_study(recipe_dir: Path, study: StudyManifest) -> None:
    """Publish study.json whole (hold study_lock around the read that `study` came from)."""
    write_json(Path(recipe_dir) / STUDY_FILE, study.to_json())


def update_study_run(recipe_dir: Path, folder: str, job_id: str, state: str, requeued: bool = False) -> bool:
    """Set a run's state (one of RUN_STATES), counting a requeue, if job `job_id` owns its entry; whether it did.

    A damaged manifest is left for the next `harness submit` to rebuild: the run itself goes on."""
    with study_lock(recipe_dir):
        try:
            study = read_study(recipe_dir)
        except DamagedFile as damage:
            print(f"warning: {damage}; the run's state is not recorded (harness submit rebuilds it)", flush=True)
            return False
        entry = next((run for run in (study.runs if study else []) if run.folder == folder), None)
        if entry is None or entry.job_id != job_id:  # a later submission took the run over
            return False
        entry.state = state
        entry.requeue_count += int(requeued)
        write_study(recipe_dir, study)
        return True


def run_label(variant: str, seed: int | None) -> str:
    """How messages name a run: `region`, or `region (seed 3)` in a seeded sweep."""
    return variant if seed is None else f"{variant} (seed {seed})"


def expected_runs(results_dir: Path, study: StudyManifest | None) -> list[tuple[str, int | None]]:
    """Every (variant, seed) a study expects: the manifest's runs, or, for a study launched otherwise (or whose
    manifest is damaged: pass None), each variant that has a folder once per seed of sweep.json."""
    if study is not None:
        return [(run.variant, run.seed) for run in study.runs]
    variants = dict.fromkeys(variant_of(folder) for folder in run_folders(results_dir))
    try:
        seeds = read_sweep(results_dir).seeds or [None]
    except DamagedFile:
        seeds = sorted({seed_of(folder) for folder in run_folders(results_dir)}, key=lambda seed: seed or 0)
    return [(variant, seed) for variant in variants for seed in seeds]


def missing_runs(results_dir: Path, study: StudyManifest | None) -> list[str]:
    """The labels of the expected runs that have not finished successfully."""
    return [run_label(variant, seed) for variant, seed in expected_runs(results_dir, study)
            if not finished(run_dir(results_dir, variant, seed))]
