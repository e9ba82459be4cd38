"""`harness evaluate RUN_DIR [--set eval.KEY=VALUE ...] [--name NAME] [--export DIR [--split FOLDER]]`: evaluate a
finished run's model again, or export its predictions. On several processes: `accelerate launch -m harness.evaluate`.

Rebuilds one finished run's model from the folder's recipe.yaml and model.safetensors, evaluates it on
the split its recipe scores (eval.split) with the run's own protocol, or with the one `--set eval.*` gives (whole or slide,
scales, flip), and writes eval-<name>.json beside the run's summary, which it never touches. With the
run's own protocol it reproduces the run's final mIoU. Exit code 2 for a bad folder or override.

With --export DIR it evaluates nothing: it writes the model's predictions on a split (default: val;
e.g. --split test, which has no labels) into DIR in the benchmark's submission format: Cityscapes
labelIds PNGs named after each *_leftImg8bit.png, ADE20K PNGs with labels 1..150, COCO-Stuff PNGs
in the dataset's own ids.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harness.process import share_the_machine

share_the_machine()  # before anything loads torch: its OpenMP reads the environment once, as it loads

from harness.command import EXIT_BAD_INPUT, EXIT_DAMAGED, guarded  # noqa: E402
from harness.command import parser as command_parser  # noqa: E402
from harness.recipe import EvalConfig, Recipe, RecipeError, parse_override, set_dotted, validate  # noqa: E402
from harness.results import (  # noqa: E402
    EVAL_PREFIX,
    MODEL_FILE,
    RECIPE_FILE,
    SUMMARY_FILE,
    DamagedFile,
    file_sha256,
    read_recipe,
    read_summary,
    write_json,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = command_parser("evaluate", __doc__)
    parser.add_argument("results_dir", type=Path, help="one run's folder: results/<recipe>/<variant>[/seed-<k>]")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="eval.KEY=VALUE",
                        help="change the protocol, e.g. --set eval.scales=[0.75,1.0,1.25] --set eval.flip=true")
    parser.add_argument("--name", help="the evaluation's name in eval-<name>.json (default: from the protocol)")
    parser.add_argument("--export", type=Path, metavar="DIR", help="write test-server predictions into DIR instead")
    parser.add_argument("--split", metavar="FOLDER", help="with --export: the split's folder name (default: val)")
    parser.add_argument("--trust-weights", action="store_true",
                        help="use model.safetensors although no summary.json records its SHA-256 to check it against")
    return parser.parse_args(argv)


def protocol_name(cfg: EvalConfig) -> str:
    """A file-name-safe name of a protocol, e.g. 'whole_1.0' or 'slide_0.75-1.0-1.25_flip'."""
    scales = "-".join(str(scale) for scale in cfg.scales)
    return f"{cfg.mode}_{scales}" + ("_flip" if cfg.flip else "")


def load_run(folder: Path, overrides: list[str], trust_weights: bool = False) -> Recipe:
    """The run's resolved recipe with the `eval.*` overrides applied; its weights must match its summary's SHA-256,
    or be trusted explicitly where no summary records one."""
    if not (folder / RECIPE_FILE).is_file():
        raise RecipeError(RECIPE_FILE, f"{folder} holds no run's recipe; expected a results/<recipe>/<variant> folder")
    tree = read_recipe(folder / RECIPE_FILE).model_dump(mode="json")
    for key, value in map(parse_override, overrides):
        if not key.startswith("eval."):
            raise RecipeError(key, "only eval.* keys change an evaluation; the model and data are the run's")
        set_dotted(tree, key, value)
    weights = folder / MODEL_FILE
    if not weights.is_file():
        raise RecipeError(MODEL_FILE, f"{weights} is missing: only a finished run leaves its weights")
    recorded = read_summary(folder).model_sha256 if (folder / SUMMARY_FILE).is_file() else None
    if recorded is None and not trust_weights:
        raise RecipeError(MODEL_FILE, f"no {SUMMARY_FILE} in {folder} records the SHA-256 of {weights}, so nothing "
                          "shows it is the file the run wrote; use --trust-weights to evaluate it anyway")
    if recorded not in (None, file_sha256(weights)):
        raise DamagedFile(weights, "not the file the run wrote: its SHA-256 differs from the summary's")
    return validate(tree)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        recipe = load_run(args.results_dir, args.overrides, args.trust_weights)
    except RecipeError as error:
        print(f"error: {error.located(args.results_dir)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except DamagedFile as damage:
        print(f"error: {damage}", file=sys.stderr)
        return EXIT_DAMAGED

    from harness.engine import make_accelerator
    from harness.engine.summary import finished_at
    from harness.process import process_state
    from harness.saved import evaluate_saved, export_saved

    process_state()
    accelerator = make_accelerator(recipe)
    if args.export is not None:
        try:
            count = export_saved(accelerator, recipe, args.results_dir / MODEL_FILE, args.split, args.export)
        except RecipeError as error:
            print(f"error: {error.located(args.results_dir / RECIPE_FILE)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        accelerator.print(f"{args.export}: {count} {recipe.data.dataset} predictions")
        return 0
    started = time.perf_counter()
    result, info = evaluate_saved(accelerator, recipe, args.results_dir / MODEL_FILE)
    name = args.name or protocol_name(recipe.eval)
    path = args.results_dir / f"{EVAL_PREFIX}{name}.json"
    if accelerator.is_main_process:
        write_json(path, {
            "name": name, "miou": result.miou, "eval_split": recipe.eval.split, "per_class_iou": result.per_class.tolist(),
            "class_names": list(info.class_names), "protocol": recipe.eval.model_dump(mode="json"),
            "seconds": time.perf_counter() - started, "world_size": accelerator.num_processes,
            "model_sha256": file_sha256(args.results_dir / MODEL_FILE), "finished_at": finished_at(),
        })
        print(f"{path}: {recipe.eval.split} mIoU {result.miou:.4f}")
    accelerator.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))
