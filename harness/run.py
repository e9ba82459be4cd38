"""CLI: `accelerate launch harness/run.py recipes/x.yaml [--set key=value ...]`.

Every variant of the recipe's sweep is validated before anything is written;
then each is trained in turn. A variant that fails is recorded as failed and
the sweep goes on; the exit code is 1 if any failed, 2 for a bad recipe.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

if __name__ == "__main__" and sys.path and Path(sys.path[0]).name == "harness":
    # Run as a script, Python puts harness/ itself first on sys.path, where our
    # data.py or models.py would shadow any top-level module of the same name.
    sys.path.pop(0)

from harness.recipe import RecipeError, Variant, load_sweep, with_batch_plan  # noqa: E402
from harness.results import (  # noqa: E402
    SUMMARY_FILE,
    finished,
    run_dir,
    write_json,
    write_recipe,
    write_sweep,
)

EXIT_FAILED_VARIANT, EXIT_BAD_RECIPE = 1, 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path, help="recipe YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set optim.iterations=100 (repeatable)")
    parser.add_argument("--only", action="append", default=[], metavar="VARIANT",
                        help="run only these sweep variants (repeatable)")
    parser.add_argument("--seed", dest="seeds", action="append", default=[], type=int, metavar="K",
                        help="run only these seeds of a seeded sweep (repeatable); a scheduler job runs one")
    parser.add_argument("--resume", action="store_true",
                        help="skip finished variants and continue interrupted ones from their last checkpoint")
    parser.add_argument("--no-report", action="store_true", help="do not build reports/<recipe>/ at the end")
    return parser.parse_args(argv)


def check_variants(variants: list[Variant]) -> None:
    """Everything that can be known wrong before training: model names and strides, contrast kinds, data roots."""
    from harness.data import index_files
    from harness.engine.terms import check_contrast_kind
    from harness.engine.trackers import check_trackers
    from harness.models import validate_model_config

    indexed, validated, checked = set(), set(), set()  # a sweep's variants mostly share one dataset: glob its files once
    for variant in variants:
        data = variant.recipe.data
        try:
            if variant.recipe.model not in validated:  # the seeds of a variant share one model
                validate_model_config(variant.recipe.model)
                validated.add(variant.recipe.model)
            check_contrast_kind(variant.recipe.loss.contrast.kind)
            if variant.recipe.run.trackers not in checked:  # a network check costs seconds: once per set
                check_trackers(variant.recipe.run.trackers)
                checked.add(variant.recipe.run.trackers)
            if data.dataset != "digit_scenes" and (data.dataset, data.root) not in indexed:
                index_files(data.dataset, data.root)
                indexed.add((data.dataset, data.root))
        except RecipeError as error:
            raise RecipeError(error.key, f"{error.message} (sweep variant '{variant.name}')") from None


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


def write_report(recipe_dir: Path, reports_dir: Path) -> None:
    """Build reports/<recipe>/; a plotting problem must not turn a finished sweep into a failure."""
    from harness.report import build_report

    try:
        print(f"report: {build_report(recipe_dir, reports_dir)}")
    except Exception as error:  # noqa: BLE001 - the results are safe on disk either way
        print(f"warning: report not built ({type(error).__name__}: {error}); "
              f"retry with: python -m harness.report {recipe_dir}", file=sys.stderr)


def run_variant(variant: Variant, out_dir: Path, resume: bool) -> bool:
    """Train one variant; a failure is recorded in its summary instead of ending the sweep."""
    from harness import engine
    from harness.engine.trackers import finish_trackers

    accelerator = engine.make_accelerator(variant.recipe, out_dir)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_recipe(out_dir, variant.recipe)
    accelerator.wait_for_everyone()
    try:
        engine.train_variant(accelerator, variant, out_dir, resume=resume)
        return True
    except Exception as error:  # noqa: BLE001 - one bad variant must not end the sweep
        accelerator.print(traceback.format_exc())
        accelerator.print(f"variant {variant.name} failed: {type(error).__name__}: {error}")
        if accelerator.is_main_process:
            write_json(out_dir / SUMMARY_FILE, engine.failed_summary(accelerator, variant, error))
        accelerator.free_memory()
        return False
    finally:
        finish_trackers(accelerator)  # whatever happened


def bad_recipe(error: RecipeError, path: Path) -> int:
    """Say what is wrong with the recipe, where, and return the exit code for it."""
    print(f"error: {error.located(path) if error.source is None else error}", file=sys.stderr)
    return EXIT_BAD_RECIPE


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        every_run, sweep = load_sweep(args.recipe, args.overrides)
        variants = select(every_run, args.only, args.seeds)
        check_variants(variants)
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
    if state.is_main_process:
        write_sweep(recipe_dir, sweep)
    failed = []
    for variant in variants:
        out_dir = run_dir(recipe_dir, variant.name, variant.seed)
        label = variant.name if variant.seed is None else f"{variant.name} (seed {variant.seed})"
        if args.resume and finished(out_dir):
            state.print(f"variant {label} already finished: skipped")
            continue
        if not run_variant(variant, out_dir, args.resume):
            failed.append(label)
    if state.is_main_process and not args.no_report:
        write_report(recipe_dir, run_cfg.reports_dir)
    if failed:
        state.print(f"{len(failed)} of {len(variants)} runs failed: {', '.join(failed)}")
    state.wait_for_everyone()
    return EXIT_FAILED_VARIANT if failed else 0


if __name__ == "__main__":
    sys.exit(main())
