"""`harness run RECIPE [--set KEY=VALUE ...] [--only VARIANT ...]`: train a recipe's sweep, each run in its folder.

On several processes, `accelerate launch [--config_file CONFIG] harness/run.py RECIPE [...]` runs the same.

Every variant of the recipe's sweep is validated before anything is written; then each is
trained in turn. A variant that fails is recorded as failed and the sweep goes on. A stop
signal (SIGTERM, SIGINT, SIGUSR1, SIGUSR2) saves a checkpoint at the next step boundary and
ends the sweep; `--resume` continues it exactly.

Exit codes: 0 every run finished; 1 a run failed; 2 a bad recipe, or a recipe that differs from
the one that made a run it would continue or skip; 3 stopped on a signal (checkpoint saved);
4 a run folder is being written by another launch.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if __name__ == "__main__" and sys.path and Path(sys.path[0]).name == "harness":
    # Run as a script, Python puts harness/ itself first on sys.path, where our
    # data.py or models.py would shadow any top-level module of the same name.
    sys.path.pop(0)

from harness.process import share_the_machine  # noqa: E402

share_the_machine()  # before anything loads torch: its OpenMP reads the environment once, as it loads

from harness.command import (  # noqa: E402
    EXIT_BAD_INPUT,
    EXIT_BUSY,
    EXIT_FAILED_VARIANT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    guarded,
)
from harness.command import parser as command_parser  # noqa: E402
from harness.recipe import (  # noqa: E402
    CHANGEABLE_MID_RUN,
    DataConfig,
    RecipeError,
    Variant,
    disallowed_changes,
    load_sweep,
    with_batch_plan,
)
from harness.results import (  # noqa: E402
    RECIPE_FILE,
    SUMMARY_FILE,
    DamagedFile,
    read_summary,
    run_dir,
    run_label,
    set_aside,
    set_run_aside,
    write_recipe,
    write_summary,
    write_sweep,
)
from harness.runfolder import FolderBusy, FolderLock, history, recipe_changes  # noqa: E402

if TYPE_CHECKING:
    from accelerate import Accelerator, PartialState

# When runs end differently, the sweep's exit code is the most urgent: a stop, then a changed recipe, a busy
# folder, a failure.
URGENCY = (EXIT_INTERRUPTED, EXIT_BAD_INPUT, EXIT_BUSY, EXIT_FAILED_VARIANT, EXIT_OK)


def add_recipe_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """The recipe, its --set overrides and the --only filter: what every command that starts runs takes."""
    parser.add_argument("recipe", type=Path, help="recipe YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set optim.iterations=100 (repeatable)")
    parser.add_argument("--only", action="append", default=[], metavar="VARIANT",
                        help=f"{verb} only these sweep variants (repeatable)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = command_parser("run", __doc__)
    add_recipe_arguments(parser, "run")
    parser.add_argument("--seed", dest="seeds", action="append", default=[], type=int, metavar="K",
                        help="run only these seeds of a seeded sweep (repeatable); a scheduler job runs one")
    parser.add_argument("--resume", action="store_true",
                        help="skip finished variants and continue interrupted ones from their last checkpoint; "
                             "a run made by a different recipe stops with exit code 2, naming the keys")
    parser.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                        help="with --resume: let KEY differ from the recipe the run started with (repeatable; "
                             "fnmatch patterns); only keys that change how a run is watched, saved, fed or scored: "
                             f"{', '.join(CHANGEABLE_MID_RUN)}")
    parser.add_argument("--resume-inexact", action="store_true",
                        help="with --resume: continue from a checkpoint with a missing or damaged part "
                             "(the summary then says resume_exact: false)")
    parser.add_argument("--overwrite", action="store_true",
                        help="train runs that already finished again, setting each old run aside first "
                             "(<folder>.replaced-<time>); without it a finished run is skipped, and one made by a "
                             "different recipe stops with exit code 2, naming the keys")
    parser.add_argument("--no-report", action="store_true", help="do not build reports/<recipe>/ at the end")
    return parser.parse_args(argv)


def check_variants(variants: list[Variant]) -> None:
    """Everything that can be known wrong before training: model names and strides, contrast kinds and their
    settings blocks, data roots."""
    from harness.engine.terms import check_contrast
    from harness.engine.trackers import check_trackers
    from harness.models import validate_model_config

    # A sweep's variants mostly share one dataset and one model: list, prepare and check each once.
    indexed, validated, checked = set(), set(), set()
    for variant in variants:
        data = variant.recipe.data
        try:
            if variant.recipe.model not in validated:  # the seeds of a variant share one model
                validate_model_config(variant.recipe.model)
                validated.add(variant.recipe.model)
            check_contrast(variant.recipe.loss.contrast)
            if variant.recipe.run.trackers not in checked:  # a network check costs seconds: once per set
                check_trackers(variant.recipe.run.trackers)
                checked.add(variant.recipe.run.trackers)
            files = (data.dataset, data.root, data.prepare, data.cache_dir)
            if data.dataset != "digit_scenes" and files not in indexed:
                prepare_or_index(data)
                indexed.add(files)
        except RecipeError as error:
            raise RecipeError(error.key, f"{error.message} (sweep variant '{variant.name}')") from None


def prepare_or_index(data: DataConfig) -> None:
    """A real dataset's files listed, and with data.prepare: auto its prepared store built or found: every file
    decoded once, so a truncated image or a bad label stops the sweep here, naming the file, before any training."""
    from harness.data import DataError, index_files, prepare_splits
    from harness.data.store import usable_cores

    if data.prepare == "off":
        index_files(data.dataset, data.root)
        return
    try:
        prepare_splits(data, usable_cores())
    except DataError as error:
        raise RecipeError("data.root", str(error)) from None


def select(variants: list[Variant], names: list[str], seeds: list[int] = ()) -> list[Variant]:
    """The runs of the variants named by --only and the seeds named by --seed, in sweep order."""
    unknown = set(names) - {variant.name for variant in variants}
    if unknown:
        valid = ", ".join(dict.fromkeys(variant.name for variant in variants))
        raise RecipeError("--only", f"no variant named {sorted(unknown)}; the sweep has: {valid}")
    missing = set(seeds) - {variant.seed for variant in variants}
    if missing:
        valid = ", ".join(str(seed) for seed in dict.fromkeys(variant.seed for variant in variants))
        raise RecipeError("--seed", f"no run with seed {sorted(missing)}; the sweep's seeds: {valid}")
    return [variant for variant in variants
            if (not names or variant.name in names) and (not seeds or variant.seed in seeds)]


def report_and_answer(recipe_dir: Path, reports_dir: Path | None, reference: Path | None = None) -> None:
    """Build reports/<recipe>/ (unless `reports_dir` is None) and print the study's answer, beside a reference
    run's (run.reference) where the recipe names one; a plotting problem must not turn a finished sweep into a
    failure."""
    from harness.report.answer import answer_lines
    from harness.report.build import write_report
    from harness.report.study import load_study

    try:
        study = load_study(recipe_dir)
        report = write_report(study, reports_dir) if reports_dir is not None else None
        compared = load_study(reference) if reference is not None and reference.is_dir() else None
        print("\n".join(answer_lines(study, report, compared)))
    except Exception as error:  # noqa: BLE001 - the results are safe on disk either way
        print(f"warning: report not built ({type(error).__name__}: {error}); "
              f"retry with: python -m harness.report {recipe_dir}", file=sys.stderr)


def run_variant(
    state: PartialState, variant: Variant, out_dir: Path, args: argparse.Namespace, claimed: Callable[[], None]
) -> int:
    """Claim the run's folder, check what it holds, call `claimed` (on the main process), then train; the run's
    exit code (failures are recorded in its summary instead of ending the sweep)."""
    from accelerate.utils import broadcast_object_list

    lock = FolderLock(out_dir)
    verdict = [claim(lock, variant, out_dir, args) if state.is_main_process else None]
    broadcast_object_list(verdict)  # every rank follows the main process's reading of the folder
    code, message = verdict[0]
    if message and state.is_main_process:
        print(message, file=sys.stderr if code else sys.stdout)
    if code != EXIT_OK or message:  # refused, or nothing left to do
        return code
    if state.is_main_process:
        claimed()
    try:
        return train_claimed(variant, out_dir, args)
    finally:
        if state.is_main_process:
            lock.release()


def claim(lock: FolderLock, variant: Variant, out_dir: Path, args: argparse.Namespace) -> tuple[int, str]:
    """On the main process: lock the folder and decide from what it holds; (exit code, what to say).

    (0, "") means train; a message with code 0 means the run is finished already. A finished run is never
    replaced by a different recipe, and only --overwrite trains it again (setting the old run aside). Only a run
    that goes ahead keeps the lock, and only then is anything written: damaged files set aside, recipe.yaml.
    """
    label = run_label(variant.name, variant.seed)
    try:
        lock.acquire()
    except FolderBusy as error:
        return EXIT_BUSY, f"error: run {label}: {error}"
    past = history(out_dir)
    changed = recipe_changes(past, variant.recipe, args.allow_change) if past.finished or past.resumable else []
    overwrite = past.finished and args.overwrite
    if changed and (args.resume or past.finished) and not overwrite:
        again = "" if args.resume else " (--overwrite trains it again, setting the old run aside)"
        code, message = EXIT_BAD_INPUT, (f"error: run {label}: the recipe differs from the one that made {out_dir} "
                                         f"in {', '.join(changed)}; not touching it{again}")
    elif past.finished and not overwrite:
        code, message = EXIT_OK, f"run {label} already finished: skipped (--overwrite trains it again)"
    else:
        notes = [f"{damage}: set aside as {set_aside(damage.path).name}" for damage in past.damaged
                 if damage.path.parent == out_dir]  # a damaged checkpoint part is the resume's to judge
        if overwrite:
            notes.append(f"run {label}: the finished run was set aside in {set_run_aside(out_dir)}")
        kept = write_recipe(out_dir, variant.recipe)
        if kept is not None:
            notes.append(f"{out_dir / RECIPE_FILE}: held other bytes than this recipe's: kept as {kept.name}")
        for note in notes:
            print(note, file=sys.stderr)
        return EXIT_OK, ""
    lock.release()
    return code, message


def train_claimed(variant: Variant, out_dir: Path, args: argparse.Namespace) -> int:
    """Train one claimed run; record a failure or a stop in its summary."""
    from harness import engine
    from harness.engine.trackers import finish_trackers

    accelerator = engine.make_accelerator(variant.recipe, out_dir)
    try:
        engine.train_variant(accelerator, variant, out_dir, resume=args.resume, inexact=args.resume_inexact)
        return EXIT_OK
    except engine.Interrupted as stop:
        accelerator.print(f"run {variant.name}: {stop}; continue it with --resume")
        record_end(accelerator, out_dir, engine.interrupted_summary(accelerator, variant, stop))
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - one bad variant must not end the sweep
        if not isinstance(error, DamagedFile):  # a damaged file is said in one line; a bug needs its traceback
            accelerator.print(traceback.format_exc())
        accelerator.print(f"run {run_label(variant.name, variant.seed)} failed: {type(error).__name__}: {error}")
        record_end(accelerator, out_dir, engine.failed_summary(accelerator, variant, error))
        return EXIT_FAILED_VARIANT
    finally:
        accelerator.free_memory()
        finish_trackers(accelerator)  # whatever happened


def record_end(accelerator: Accelerator, out_dir: Path, summary: dict) -> None:
    """Write the summary of a run that did not finish; if even that fails (a full disk), say so and go on."""
    if not accelerator.is_main_process:
        return
    try:
        write_summary(out_dir, summary)
    except OSError as error:
        print(f"error: could not write {out_dir / SUMMARY_FILE} ({error}); the sweep goes on", file=sys.stderr)


def say(line: str | None) -> None:
    """Print a line where there is one (to stderr: what was wrong and what was done about it)."""
    if line:
        print(line, file=sys.stderr)


def failure(folder: Path) -> str:
    """A failed run's error as its summary records it (the first line)."""
    try:
        error = read_summary(folder).error
    except DamagedFile as damage:
        error = f"its summary is unreadable: {damage}"
    return (error or "no error recorded").splitlines()[0]


def bad_recipe(error: RecipeError, path: Path) -> int:
    """Say what is wrong with the recipe, where, and return the exit code for it."""
    print(f"error: {error.located(path) if error.source is None else error}", file=sys.stderr)
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        every_run, sweep = load_sweep(args.recipe, args.overrides)
        variants = select(every_run, args.only, args.seeds)
        check_variants(variants)
        disallowed_changes([], args.allow_change)  # every pattern must name a key that may change mid-run
    except RecipeError as error:
        return bad_recipe(error, args.recipe)

    from harness.process import process_state

    state = process_state()
    try:  # the per-process batch follows data.global_batch_size over however many processes were launched
        variants = [
            variant.model_copy(update={"recipe": with_batch_plan(variant.recipe, state.num_processes)})
            for variant in variants
        ]
    except RecipeError as error:
        return bad_recipe(error, args.recipe)
    run_cfg = variants[0].recipe.run
    recipe_dir = run_cfg.output_dir / run_cfg.name
    codes, folders = {}, {}
    for variant in variants:
        label = run_label(variant.name, variant.seed)
        folders[label] = out_dir = run_dir(recipe_dir, variant.name, variant.seed)
        codes[label] = run_variant(state, variant, out_dir, args, lambda: say(write_sweep(recipe_dir, sweep)))
        if codes[label] == EXIT_INTERRUPTED:
            break  # a stop request ends the sweep, not only the run
    refused_only = set(codes.values()) <= {EXIT_BUSY, EXIT_BAD_INPUT}  # a refused launch writes nothing at all
    if state.is_main_process and not refused_only:
        report_and_answer(recipe_dir, None if args.no_report else run_cfg.reports_dir, run_cfg.reference)
    failed = [label for label, code in codes.items() if code == EXIT_FAILED_VARIANT]
    if failed:  # the last line says which, and why (each failure was printed with its run)
        state.print(f"{len(failed)} of {len(variants)} runs failed: " + "; ".join(
            f"{label} ({failure(folders[label])})" for label in failed))
    state.wait_for_everyone()
    return next(code for code in URGENCY if code in codes.values() or code == EXIT_OK)


if __name__ == "__main__":
    sys.exit(guarded(main))
