"""`harness prepare RECIPE [--set key=value ...]`: decode a recipe's real dataset once into its prepared stores.

Each distinct data section of the recipe's sweep gets its train and val splits decoded, with a
progress bar, into memory-mapped uint8 images and train ids under data.cache_dir (see
harness/data/store.py); a store that is already there for the same files is kept. Training finds
the stores itself (data.prepare: auto builds a missing one on first use); preparing first keeps
that work out of a launch, where the other ranks wait for it. A file that cannot be used stops it
with the file's name and exit code 2, as does a bad recipe.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.command import EXIT_BAD_INPUT, guarded
from harness.command import parser as command_parser
from harness.data import DataError, prepare_splits
from harness.data.store import usable_cores
from harness.recipe import RecipeError, load


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser("prepare", __doc__)
    parser.add_argument("recipe", type=Path, help="recipe YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key (repeatable), e.g. --set data.root=/data/cityscapes")
    parser.add_argument("--workers", type=int, default=usable_cores(),
                        help="decoding processes (default: the usable cores)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Prepare every real dataset the recipe's runs read; 0, or 2 with a one-line error."""
    args = parse_args(argv)
    try:
        configs = [variant.recipe.data for variant in load(args.recipe, args.overrides)]
        # Variants differing in anything but these share their stores.
        real = {(cfg.dataset, cfg.root, cfg.cache_dir): cfg for cfg in configs if cfg.dataset != "digit_scenes"}
        for cfg in real.values():
            for split, folder in prepare_splits(cfg, args.workers).items():
                print(f"{cfg.dataset} {split}: {folder}")
    except RecipeError as error:
        print(f"error: {error if error.source is not None else error.located(args.recipe)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not real:
        print("nothing to prepare: the digit scenes are generated and cached by training itself")
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))
