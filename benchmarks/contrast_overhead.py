"""What a contrastive loss costs per training step, on the quickstart model.

Times the harness's own training step (forward, CE + aux [+ contrast], backward, SGD/AdamW
step, bank push) for CE only, RegionContrast with the paper's bank (one slot per training
image), the in-batch variant, ContrastiveSeg's pixel + segment queues and the all-pixel bank.
Steps alternate between the kinds in rounds, so a load change on a shared machine hits all
of them alike. Prints a markdown table:

    python benchmarks/contrast_overhead.py [--steps 40] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Iterator

import torch
import yaml

from harness import engine
from harness.recipe import expand, parse_override

KINDS = {
    "CE only": ["loss.contrast.kind=none"],
    "RegionContrast (bank = train set)": ["loss.contrast.kind=region"],
    "RegionContrast in-batch (bank 0)": ["loss.contrast.kind=region", "loss.contrast.bank_size=0"],
    "pixel + segment queues": ["loss.contrast.kind=pixel", "loss.contrast.tau=0.07"],
    "all-pixel bank": ["loss.contrast.kind=all_pixel", "loss.contrast.tau=0.07"],
}


def trainer_for(recipe_path: Path, overrides: list[str]) -> tuple[engine.Trainer, Iterator]:
    """The recipe's trainer (its sweep ignored) and an endless batch iterator for one contrast kind."""
    tree = yaml.safe_load(recipe_path.read_text())
    tree.pop("sweep", None)
    (variant,) = expand(tree, [parse_override(text) for text in overrides])
    accelerator = engine.make_accelerator(variant.recipe)
    setup = engine.set_up(accelerator, variant.recipe)
    return setup.trainer, engine.endless(setup.train_loader, setup.train_set, 0)


def time_step(trainer: engine.Trainer, batches: Iterator, iteration: int) -> float:
    """Seconds for one training step (the batch is fetched before the clock starts)."""
    batch = next(batches)
    start = time.perf_counter()
    trainer.step(batch, iteration)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=Path("recipes/quickstart.yaml"))
    parser.add_argument("--steps", type=int, default=40, help="timed steps per kind (after 5 warm-up steps)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    trainers = {name: trainer_for(args.recipe, args.overrides + extra) for name, extra in KINDS.items()}
    times: dict[str, list[float]] = {name: [] for name in KINDS}
    for iteration in range(args.steps + 5):
        for name, (trainer, batches) in trainers.items():
            elapsed = time_step(trainer, batches, iteration)
            if iteration >= 5:
                times[name].append(elapsed)
    baseline = statistics.median(times["CE only"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps per kind, median step time")
    print("| loss | s/step | vs CE | bank MB |")
    print("|---|--:|--:|--:|")
    for name, (trainer, _) in trainers.items():
        median = statistics.median(times[name])
        bank_mb = trainer.bank.nbytes() / 1e6 if trainer.bank is not None else 0.0
        print(f"| {name} | {median:.4f} | {median / baseline:.3f} | {bank_mb:.2f} |")


if __name__ == "__main__":
    main()
