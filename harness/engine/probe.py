"""The cost probe: what a run's contrast term costs per training step, measured inside the run, paired.

Separate runs' wall clocks compare nothing on a shared machine or a cluster, so every run with a
contrast term times its own: after training, with the trained model, its full bank and real
training batches, full training steps of the variant (A: CE + aux + contrast, push included)
alternate with the same steps with the contrast term off (B: CE + aux) in ABBA order on the same
batches, so drift and other load hit both alike. Each round gives one ratio, (A + A) / (B + B);
the cost is their median with a distribution-free 95 % interval. Steps are timed on the run's own
devices (CUDA events on a GPU), the slowest rank's step counting. Afterwards the run's state
(model, optimizer, bank, loop state, RNG streams) is reloaded from the final checkpoint: the
probe leaves no trace in the run's evaluation, weights or bank.

The paired step timer is this module's, and the benchmarks use it too (contrast_overhead, gpu_suite):
`alternate` steps any number of sides on one round's shared batches in mirrored order (A B ... B A,
ABBA for two), and `round_ratios` pairs a side's steps with a reference side's round by round.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from scipy import stats

from harness import measure
from harness.engine.setup import Setup
from harness.engine.step import Trainer
from harness.engine.terms import Batch

PROBE_SHARE = 0.02  # of the run's optimizer steps the probe's rounds may add, 4 steps a round ...
MIN_ROUNDS, MAX_ROUNDS = 20, 100  # ... but never fewer rounds than an interval needs, nor more than it gains from
WARMUP_ROUNDS = 2  # untimed: the CE-only path's first steps allocate and warm caches
SIDES = ("A", "B")  # A: the variant's step; B: the same step with the contrast term off
CONFIDENCE = 0.95
# One optimizer step of a side on a round's micro-batches, at an iteration.
Step = Callable[[list[Batch], int], object]


def mirrored(sides: list[str]) -> list[str]:
    """One round's order: every side, then the same in reverse (ABBA for two), so drift within a round hits every
    side alike; each side steps twice a round."""
    return [*sides, *reversed(sides)]


ORDER = "".join(mirrored(list(SIDES)))
STEPS_PER_ROUND = 2  # of each side, in mirrored order


def probe_rounds(iterations: int) -> int:
    """Timed rounds for a run of `iterations` optimizer steps."""
    return min(MAX_ROUNDS, max(MIN_ROUNDS, round(PROBE_SHARE * iterations / len(ORDER))))


@dataclass(frozen=True)
class Cost:
    """The probe's answer, as summary.json records it."""

    ratio: float  # median over rounds of the variant's step time over the CE step's
    ratio_ci95: tuple[float, float]
    rounds: int
    contrast_ms_per_step: float  # median over rounds of (variant step - CE step)
    extra_memory_bytes: int  # peak during variant steps minus peak during CE steps
    memory_kind: str  # what was measured: the CUDA allocator's peak, or the process's RSS on a CPU

    def fields(self) -> dict[str, object]:
        """The summary.json fields."""
        return {
            "cost_ratio": self.ratio, "cost_ratio_ci95": list(self.ratio_ci95), "cost_probe_rounds": self.rounds,
            "contrast_ms_per_step": self.contrast_ms_per_step,
            "contrast_extra_memory_bytes": self.extra_memory_bytes, "contrast_extra_memory_kind": self.memory_kind,
        }


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """A distribution-free interval for the median: the order statistics x_(r), x_(n+1-r) with r the largest rank
    such that a binomial(n, 1/2) falls below it with probability at most (1 - confidence) / 2."""
    ordered, count = sorted(values), len(values)
    rank = 1  # 1-based; for n < 6 no rank reaches 95 % and the interval is the whole range
    while stats.binom.cdf(rank, count, 0.5) <= (1 - confidence) / 2:
        rank += 1
    return ordered[rank - 1], ordered[count - rank]


def round_sums(seconds: list[float]) -> list[float]:
    """Per round, a side's steps summed (mirrored order: two a round)."""
    return [sum(seconds[start:start + STEPS_PER_ROUND]) for start in range(0, len(seconds), STEPS_PER_ROUND)]


def round_ratios(seconds: list[float], reference: list[float]) -> list[float]:
    """Per round, a side's steps over the reference side's."""
    return [own / base for own, base in zip(round_sums(seconds), round_sums(reference))]


def paired_cost(variant: list[float], baseline: list[float]) -> tuple[float, tuple[float, float], float]:
    """From per-step seconds in ABBA order: the median ratio, its interval and the median difference per step in ms."""
    ratios = round_ratios(variant, baseline)
    differences = [1000 * (own - base) / STEPS_PER_ROUND for own, base in zip(round_sums(variant), round_sums(baseline))]
    return statistics.median(ratios), median_interval(ratios), statistics.median(differences)


class StepClock:
    """Seconds and peak memory of whole optimizer steps, per side, with no host sync until read."""

    def __init__(self, device: torch.device, memory: measure.PeakMemory) -> None:
        self.device, self.memory = device, memory
        self.timers: dict[str, measure.SpanTimer] = {}

    def step(self, side: str, step: Step, micro_batches: list[Batch], iteration: int) -> None:
        """One step of `side` on `micro_batches`, timed and its peak memory charged to `side`."""
        timer = self.timers.setdefault(side, measure.SpanTimer(self.device))
        self.memory.mark("between")  # the step's peak starts from what is in use now
        timer.start()
        step(micro_batches, iteration)
        timer.stop()
        self.memory.mark(side)

    def seconds(self, side: str) -> list[float]:
        """Every timed step of `side`, in order (one host sync)."""
        self.timers[side].flush()
        return self.timers[side].seconds


def alternate(steps: dict[str, Step], batches: Iterator[list[Batch]], rounds: int, iteration: int,
              device: torch.device) -> tuple[StepClock, measure.PeakMemory]:
    """`rounds` rounds of every side's step, each round on one shared set of micro-batches in mirrored order."""
    order = mirrored(list(steps))
    with measure.PeakMemory(device) as memory:
        clock = StepClock(device, memory)
        for _ in range(rounds):
            micro_batches = next(batches)
            for side in order:
                clock.step(side, steps[side], micro_batches, iteration)
    return clock, memory


def trainer_step(trainer: Trainer) -> Step:
    """A Trainer's optimizer step: its micro-batches in turn."""
    def step(micro_batches: list[Batch], iteration: int) -> None:
        for batch in micro_batches:
            trainer.step(batch, iteration)
    return step


def across_ranks(setup: Setup, values: list[float]) -> list[float]:
    """Per entry, the largest value of any rank: a step ends when its slowest rank does; memory peaks per rank."""
    local = torch.tensor(values, dtype=torch.float64, device=setup.ctx.device)
    return setup.ctx.accelerator.gather(local[None]).amax(0).tolist()  # [world, n] -> [n]


def run_rounds(setup: Setup, batches: Iterator[Batch], rounds: int) -> tuple[StepClock, measure.PeakMemory]:
    """`rounds` ABBA rounds of the run's step with (A) and without (B) its contrast term, on shared batches."""
    ctx, trainer = setup.ctx, setup.trainer
    sides = {"A": Trainer(ctx, trainer.model, trainer.optimizer, trainer.contrast),
             "B": Trainer(ctx, trainer.model, trainer.optimizer, None)}
    accumulated = ctx.recipe.optim.grad_accum_steps
    shared = ([next(batches) for _ in range(accumulated)] for _ in range(rounds))
    # At the run's last iteration: past loss.contrast.warmup_iters, the contrast is on.
    return alternate({side: trainer_step(each) for side, each in sides.items()}, shared, rounds,
                     ctx.recipe.optim.iterations, ctx.device)


def measure_cost(setup: Setup, batches: Iterator[Batch], rounds: int) -> Cost:
    """The paired cost of `rounds` timed ABBA rounds, after WARMUP_ROUNDS untimed ones."""
    run_rounds(setup, batches, WARMUP_ROUNDS)
    clock, memory = run_rounds(setup, batches, rounds)
    a_seconds, b_seconds = (across_ranks(setup, clock.seconds(side)) for side in SIDES)
    ratio, interval, difference_ms = paired_cost(a_seconds, b_seconds)
    a_peak, b_peak = across_ranks(setup, [memory.phases["A"], memory.phases["B"]])
    return Cost(ratio, interval, rounds, difference_ms, int(a_peak - b_peak), memory.kind)


def cost_of(setup: Setup, batches: Iterator[Batch]) -> Cost | None:
    """The run's paired cost over CE, or None for a run without a contrast term or with run.cost_probe off."""
    if setup.trainer.contrast is None or not setup.ctx.recipe.run.cost_probe:
        return None
    return measure_cost(setup, batches, probe_rounds(setup.ctx.recipe.optim.iterations))
