"""What a contrastive loss costs per training step at steady state, on the quickstart model.

Times the harness's own training step (forward, CE + aux [+ contrast], backward, optimizer
step, bank push) for CE only and for each contrast kind, with every bank filled to the brim
before timing (a long run's steady state; an empty bank makes the loss look cheaper).
Steps alternate between the kinds with the cost probe's paired timer
(harness.engine.probe.alternate: each round on one shared batch, in mirrored order, CE first:
CE A B B A CE), so a load change on a shared machine hits all of them alike, and each round
gives one ratio per kind: its steps over that round's CE steps. The figure is the median of
those ratios. Prints a markdown table:

    python -m benchmarks.contrast_overhead [--rounds 100] [--repeats 3] [--kinds region in_batch] [--set key=value ...]

--repeats runs the whole measurement again (fresh models and banks) to show how far
repeated runs land apart.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import fill_bank  # noqa: E402
from harness import engine  # noqa: E402
from harness.engine import probe  # noqa: E402
from harness.engine.terms import Batch  # noqa: E402
from harness.recipe import expand, parse_override  # noqa: E402

WARMUP_ROUNDS = 5
KINDS = {
    "ce": ("CE only", ["loss.contrast.kind=none"]),
    "region": ("RegionContrast (bank = train set)", ["loss.contrast.kind=region"]),
    "in_batch": ("RegionContrast in-batch (bank 0)", ["loss.contrast.kind=region", "loss.contrast.bank_size=0"]),
    "pixel": ("pixel + segment queues", ["loss.contrast.kind=pixel", "loss.contrast.tau=0.07"]),
    "all_pixel": ("all-pixel bank", ["loss.contrast.kind=all_pixel", "loss.contrast.tau=0.07"]),
}


def set_up_kind(recipe_path: Path, overrides: list[str]) -> engine.Setup:
    """The recipe's prepared run for one contrast kind (its sweep ignored), its bank full."""
    tree = yaml.safe_load(recipe_path.read_text())
    tree.pop("sweep", None)
    (variant,) = expand(tree, [parse_override(text) for text in overrides])
    accelerator = engine.make_accelerator(variant.recipe)
    setup = engine.set_up(accelerator, variant.recipe)
    bank = setup.trainer.bank
    if bank is not None:
        generator = torch.Generator(accelerator.device).manual_seed(0)
        fill_bank(bank, setup.info.num_classes, generator)
        assert float(bank.fill()) == 1.0, "the bank must be full before timing"
    return setup


def shared_batches(setup: engine.Setup) -> Iterator[list[Batch]]:
    """One batch a round, from the first kind's loader, that every kind steps on."""
    batches = engine.endless(setup.train_loader, setup.train_set, 0)
    while True:
        yield [next(batches)]


def measure(recipe_path: Path, overrides: list[str], kinds: list[str], rounds: int) -> dict[str, list[float]]:
    """Per kind, its steps over CE's in each timed round (CE itself included, all 1.0), and CE's step seconds."""
    setups = {kind: set_up_kind(recipe_path, overrides + KINDS[kind][1]) for kind in ["ce", *kinds]}
    steps = {kind: probe.trainer_step(setup.trainer) for kind, setup in setups.items()}
    batches = shared_batches(setups["ce"])
    device = setups["ce"].ctx.device
    probe.alternate(steps, batches, WARMUP_ROUNDS, 0, device)
    clock, _ = probe.alternate(steps, batches, rounds, 0, device)
    ce = clock.seconds("ce")
    return {kind: probe.round_ratios(clock.seconds(kind), ce) for kind in steps} | {"ce_seconds": ce}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=Path("recipes/quickstart.yaml"))
    parser.add_argument("--rounds", type=int, default=100, help="timed rounds (two steps of each kind per round)")
    parser.add_argument("--repeats", type=int, default=3, help="independent measurements, fresh models and banks")
    parser.add_argument("--kinds", nargs="+", choices=[kind for kind in KINDS if kind != "ce"],
                        default=["region", "in_batch", "pixel"])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    runs = [measure(args.recipe, args.overrides, args.kinds, args.rounds) for _ in range(args.repeats)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds after "
          f"{WARMUP_ROUNDS} warm-up rounds, banks full; ratio = median over rounds of (kind's steps / CE's steps), "
          "paired in mirrored order (harness.engine.probe.alternate)")
    ce_ms = [1000 * statistics.median(run["ce_seconds"]) for run in runs]
    print(f"CE step: median {', '.join(f'{ms:.1f}' for ms in ce_ms)} ms in the {args.repeats} repeats\n")
    print("| loss | step / CE step, per repeat | median of repeats |")
    print("|---|---|--:|")
    for kind in args.kinds:
        ratios = [statistics.median(run[kind]) for run in runs]
        print(f"| {KINDS[kind][0]} | {', '.join(f'{ratio:.3f}' for ratio in ratios)} | "
              f"{statistics.median(ratios):.3f} |")


if __name__ == "__main__":
    main()
