"""What a study decides, and when: the fixed design (every variant at its planned seeds, its 2V claims one family
under Holm's step-down with Shaffer's restriction) and the group-sequential one (repeated confidence intervals at
a few planned looks), with their simulation and planning. Torch-free, pandas-free: the report, `harness plan` and
`harness submit --until-decided` call it alike.

Why group-sequential and not an anytime-valid confidence sequence: with at most a few dozen seeds a t confidence
sequence is far wider than a fixed-n t interval, while a group-sequential design with a few planned looks pays
little power for stopping early (Jennison & Turnbull 2000, ch. 9; Lan & DeMets 1983 for alpha spending).

The default design, O'Brien-Fleming-type spending with a look every 5 seeds, is what
`python -m benchmarks.study_design --compare` found best overall, each design planned for the same power (0.8 at
Δ = 0.5 pp) and family error (5 %) as the fixed design it is compared with. At the committed studies' effects and
SDs it takes 51 % fewer runs than the fixed design (every 3 seeds: 53 %, quarters 46 %, thirds 40 %, halves 36 %),
about as many when every Δ is 0 (2 % fewer) and 14 % fewer when every Δ is the target; its max_seeds is at most
1.07 x the fixed n. Pocock-type spending stops big effects sooner (63 % fewer at the committed studies) but needs a
max_seeds up to 1.3 x the fixed n, so it takes 14 % more runs than the fixed design when nothing differs; the
committed effects are 5-seed estimates and a study where nothing differs is no rare case, so the design that is
never much worse than the fixed one was chosen. Looks every 5 seeds rather than 3 cost 1.5 points and leave 5 runs
per variant to train in parallel between looks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
from scipy import stats

ALPHA = 0.05  # family-wise, two-sided
POWER = 0.8
SEEDS_CAP = 1000  # fixed_seeds searches up to here
MIN_LOOK = 3  # a look's t statistic needs n - 1 >= 2 degrees of freedom to have a finite variance
# Paths of the pivotal law the t boundaries come from: the Monte-Carlo error of a variant's spent alpha is
# sqrt(alpha / paths), 0.008 pp at alpha = 0.05 / 7, so at most 0.06 pp of the family's 5 %.
BOUNDARY_PATHS = 2**20
BOUNDARY_SEED = 20_231_207
PLANNING_REPLICATIONS = 40_000  # variant-studies per power estimate: its MC standard error is 0.2 %
PLANNING_SEED = 0


class Decision(IntEnum):
    """What a study says about one variant against the baseline."""

    CONTINUE = 0  # sequential: no decision yet, the next look comes
    BETTER = 1
    WORSE = 2
    EQUIVALENT = 3
    INCONCLUSIVE = 4  # fixed: no claim at its n; sequential: none at the last look
    SUGGESTIVE = 5  # fixed: the unadjusted 95 % CI excludes 0, the family's adjusted p does not
    NO_PAIR = 6
    ONE_PAIR = 7


LABELS: dict[Decision, str] = {
    Decision.CONTINUE: "continue",
    Decision.BETTER: "better",
    Decision.WORSE: "worse",
    Decision.EQUIVALENT: "equivalent",
    Decision.INCONCLUSIVE: "inconclusive",
    Decision.SUGGESTIVE: "suggestive",
    Decision.NO_PAIR: "no finished seed shared with the baseline",
    Decision.ONE_PAIR: "one seed: no CI",
}
CLAIMS = (Decision.BETTER, Decision.WORSE, Decision.EQUIVALENT)  # what can be wrong


def labels(codes: np.ndarray) -> np.ndarray:
    """The label of every decision code, in the codes' shape."""
    return np.array([LABELS[code] for code in Decision], dtype=object)[np.asarray(codes)]


def wrong_claims(codes: np.ndarray, true_deltas: np.ndarray, margin: float) -> np.ndarray:
    """Which decisions [..., V] the true Δ [V] contradicts: better with Δ <= 0, worse with Δ >= 0,
    equivalent with |Δ| >= margin."""
    true_deltas = np.asarray(true_deltas, dtype=float)
    return (
        ((codes == Decision.BETTER) & (true_deltas <= 0))
        | ((codes == Decision.WORSE) & (true_deltas >= 0))
        | ((codes == Decision.EQUIVALENT) & (np.abs(true_deltas) >= margin))
    )


# ---------------------------------------------------------------------------------------------------------------
# Fixed design


@dataclass(frozen=True)
class FixedDecisions:
    """The fixed design's reading of deltas [..., V, N]: every field is [..., V]."""

    code: np.ndarray
    pairs: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    low: np.ndarray  # the unadjusted (1 - alpha) t interval
    high: np.ndarray
    p_value: np.ndarray  # paired t, H0: Δ = 0
    p_family: np.ndarray  # p_value adjusted over the family of 2V claims
    p_tost: np.ndarray  # two one-sided t-tests, H0: |Δ| >= margin: the larger one-sided p
    p_tost_family: np.ndarray  # p_tost adjusted over the same family

    def table(self, variants: list[str]) -> dict[str, dict[str, Any]]:
        """One study's reading ([V] fields) per variant name, for a report."""
        if self.code.shape != (len(variants),):
            raise ValueError(f"a table is one study's: fields of shape {self.code.shape}, {len(variants)} names")
        return {
            name: {
                "decision": LABELS[Decision(self.code[v])], "n_pairs": int(self.pairs[v]),
                "delta_mean": float(self.mean[v]), "delta_std": float(self.sd[v]), "ci_low": float(self.low[v]),
                "ci_high": float(self.high[v]), "p_value": float(self.p_value[v]),
                "p_family": float(self.p_family[v]), "p_tost": float(self.p_tost[v]),
                "p_tost_family": float(self.p_tost_family[v]),
            }
            for v, name in enumerate(variants)
        }


def family_adjusted(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down over the 2V claims of [..., V, 2] p-values (each variant's superiority and TOST p) with
    Shaffer's logical restriction (Shaffer 1986, method S1); a variant with NaN p-values is no member.

    A variant cannot both equal the baseline (superiority null true) and lie a margin from it (TOST null true), so
    of the 2T claims of T tested variants at most T nulls hold at once, and once j - 1 claims are rejected at most
    min(T, 2T - j + 1) remain true: the j-th smallest p is multiplied by T for the first T + 1 steps, then by
    T - 1, ..., 1. Bonferroni over the true nulls at the first wrong rejection bounds the family error by alpha.
    """
    shape = p_values.shape
    flat = p_values.reshape(*shape[:-2], -1)  # [..., 2V]: variant v's claims at 2v, 2v + 1
    order = np.argsort(flat, axis=-1)  # NaN sorts last, so the cumulative maximum never reaches it early
    ranked = np.take_along_axis(flat, order, axis=-1)
    tested = (~np.isnan(p_values[..., 0])).sum(axis=-1, keepdims=True)
    divisors = np.minimum(tested, 2 * tested - np.arange(flat.shape[-1]))  # T, ..., T (T + 1 times), T - 1, ..., 1
    adjusted = np.minimum(1.0, np.maximum.accumulate(ranked * divisors, axis=-1))
    unsorted = np.empty_like(adjusted)
    np.put_along_axis(unsorted, order, adjusted, axis=-1)
    return unsorted.reshape(shape)


def fixed_decisions(deltas: np.ndarray, margin: float, alpha: float = ALPHA) -> FixedDecisions:
    """Read a fixed design: per variant over its non-NaN pairs of deltas [..., V, N], better / worse where the
    family's adjusted superiority p < alpha, else equivalent where its adjusted TOST p < alpha, else suggestive
    where the unadjusted (1 - alpha) CI excludes 0, else inconclusive; fewer than two pairs have no CI and are
    no member of the family.

    One family holds every tested variant's two claims (family_adjusted), so better, worse and equivalent claims
    together err in at most alpha of studies, also where variants at Δ = 0 and at |Δ| = margin mix (Holm over the
    superiority tests beside a separate Bonferroni TOST erred in 7-8 % of such studies).
    """
    deltas = np.asarray(deltas, dtype=float)
    present = ~np.isnan(deltas)
    pairs = present.sum(axis=-1)
    df = np.where(pairs >= 2, pairs - 1, np.nan)  # NaN degrees of freedom carry NaN through every t function
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(present, deltas, 0.0).sum(axis=-1) / np.where(pairs >= 1, pairs, np.nan)
        squares = np.where(present, deltas - mean[..., None], 0.0) ** 2
        sd = np.sqrt(squares.sum(axis=-1) / df)
        se = sd / np.sqrt(pairs)
        p_value = 2 * stats.t.sf(np.abs(mean / se), df)
        # H0: Δ <= -margin is rejected by a large T above it, H0: Δ >= margin by a small T below it
        p_tost = np.maximum(stats.t.sf((mean + margin) / se, df), stats.t.cdf((mean - margin) / se, df))
    p_family, p_tost_family = np.moveaxis(family_adjusted(np.stack([p_value, p_tost], axis=-1)), -1, 0)
    half = stats.t.ppf(1 - alpha / 2, df) * se
    low, high = mean - half, mean + half
    code = np.select(
        [pairs == 0, pairs == 1, (p_family < alpha) & (mean > 0), (p_family < alpha) & (mean < 0),
         p_tost_family < alpha, (low > 0) | (high < 0)],
        [Decision.NO_PAIR, Decision.ONE_PAIR, Decision.BETTER, Decision.WORSE, Decision.EQUIVALENT,
         Decision.SUGGESTIVE],
        Decision.INCONCLUSIVE,
    )
    return FixedDecisions(code, pairs, mean, sd, low, high, p_value, p_family, p_tost, p_tost_family)


# ---------------------------------------------------------------------------------------------------------------
# Sequential design


def obrien_fleming(fraction: float, alpha: float) -> float:
    """Lan-DeMets O'Brien-Fleming-type spending: alpha spent by information fraction t, 2 - 2 Phi(z / sqrt(t))."""
    return 2 * stats.norm.sf(stats.norm.isf(alpha / 2) / math.sqrt(fraction))


def pocock(fraction: float, alpha: float) -> float:
    """Lan-DeMets Pocock-type spending: alpha ln(1 + (e - 1) t)."""
    return alpha * math.log(1 + (math.e - 1) * fraction)


SPENDING: dict[str, Callable[[float, float], float]] = {"obrien_fleming": obrien_fleming, "pocock": pocock}
SPENDING_NAMES = {"obrien_fleming": "O'Brien-Fleming-type", "pocock": "Pocock-type"}  # in a report's words
DEFAULT_SPENDING = "obrien_fleming"


def every(step: int) -> Callable[[int], tuple[int, ...]]:
    """A look rule: a look every `step` seeds, and one at max_seeds."""
    return lambda max_seeds: (*range(step, max_seeds, step), max_seeds)


def parts(count: int) -> Callable[[int], tuple[int, ...]]:
    """A look rule: looks at 1/count, 2/count, ... of max_seeds (rounded up)."""
    return lambda max_seeds: tuple(math.ceil(max_seeds * k / count) for k in range(1, count + 1))


LOOK_RULES: dict[str, Callable[[int], tuple[int, ...]]] = {
    "every_3": every(3), "every_5": every(5), "halves": parts(2), "thirds": parts(3), "quarters": parts(4),
}
DEFAULT_LOOKS = "every_5"


def default_looks(max_seeds: int, rule: str = DEFAULT_LOOKS) -> tuple[int, ...]:
    """The looks of a design of max_seeds by a rule of LOOK_RULES; none before MIN_LOOK seeds."""
    if rule not in LOOK_RULES:
        raise KeyError(f"no look rule {rule!r}; valid: {sorted(LOOK_RULES)}")
    if max_seeds < MIN_LOOK:
        raise ValueError(f"a sequential design needs at least {MIN_LOOK} seeds, not {max_seeds}")
    return tuple(sorted({max(MIN_LOOK, n) for n in LOOK_RULES[rule](max_seeds)}))


@dataclass(frozen=True)
class SequentialDesign:
    """A group-sequential study: looks at increasing seed counts ending at max_seeds; each of `variants` variants
    gets alpha / variants (Bonferroni), spent over its looks by `spending`."""

    max_seeds: int
    looks: tuple[int, ...]
    variants: int
    alpha: float = ALPHA
    spending: str = DEFAULT_SPENDING

    def __post_init__(self) -> None:
        """Refuse looks a t statistic cannot use or that do not end the design."""
        if self.spending not in SPENDING:
            raise KeyError(f"no spending function {self.spending!r}; valid: {sorted(SPENDING)}")
        if not self.looks or self.looks[-1] != self.max_seeds or self.looks[0] < MIN_LOOK \
                or any(b <= a for a, b in zip(self.looks, self.looks[1:])):
            raise ValueError(f"looks must increase from at least {MIN_LOOK} to max_seeds {self.max_seeds}: "
                             f"{self.looks}")
        if self.variants < 1 or not 0 < self.alpha < 1:
            raise ValueError(f"need variants >= 1 and 0 < alpha < 1, not {self.variants}, {self.alpha}")

    @property
    def variant_alpha(self) -> float:
        """Each variant's share of the family's alpha."""
        return self.alpha / self.variants

    @property
    def boundaries(self) -> np.ndarray:
        """The critical values c_k of |T_k| at the looks."""
        return t_boundaries(self.looks, self.variant_alpha, self.spending)


def sequential_design(max_seeds: int, variants: int, alpha: float = ALPHA, spending: str = DEFAULT_SPENDING,
                      looks: str = DEFAULT_LOOKS) -> SequentialDesign:
    """A design of max_seeds with the looks of a rule."""
    return SequentialDesign(max_seeds, default_looks(max_seeds, looks), variants, alpha, spending)


@functools.lru_cache(maxsize=256)
def t_boundaries(looks: tuple[int, ...], alpha: float, spending: str) -> np.ndarray:
    """Two-sided boundaries c_k for T_k = mean_k / (sd_k / sqrt(n_k)) at the looks: P(first |T_j| >= c_j at look k)
    = A(t_k) - A(t_{k-1}) under Δ = 0, by Monte Carlo of the statistics' joint law, which no SD enters.

    Only sufficient statistics are drawn: between looks, m new normal pairs add a mean ~ N(0, 1/m) and a sum of
    squares about it ~ chi2(m - 1), independent, merged with the running ones (Chan et al.'s pairwise update).
    """
    spend = SPENDING[spending]
    rng = np.random.default_rng(BOUNDARY_SEED)
    mean, squares = np.zeros(BOUNDARY_PATHS), np.zeros(BOUNDARY_PATHS)
    alive = np.ones(BOUNDARY_PATHS, dtype=bool)
    critical, seen, spent = [], 0, 0.0
    for n in looks:
        new = n - seen
        new_mean = rng.standard_normal(BOUNDARY_PATHS) / math.sqrt(new)
        new_squares = rng.chisquare(new - 1, BOUNDARY_PATHS) if new > 1 else 0.0
        gap = new_mean - mean
        squares += new_squares + gap**2 * seen * new / n
        mean += gap * new / n
        statistic = np.abs(mean) / np.sqrt(squares / (n - 1) / n)
        to_spend = spend(n / looks[-1], alpha) - spent
        crossing = round(to_spend * BOUNDARY_PATHS)  # paths still alive that may cross here
        candidates = statistic[alive]
        # the crossing-th largest |T| among the paths alive: exactly that many reach it (a continuous law)
        bound = np.partition(candidates, len(candidates) - crossing)[len(candidates) - crossing] if crossing \
            else np.inf
        critical.append(bound)
        alive &= statistic < bound
        seen, spent = n, spent + to_spend
    boundaries = np.array(critical)
    boundaries.flags.writeable = False  # the cache hands every caller this one array
    return boundaries


@dataclass(frozen=True)
class SequentialDecisions:
    """The sequential design's reading of deltas [..., V, N]: every field is [..., V]."""

    code: np.ndarray  # BETTER / WORSE / EQUIVALENT at the deciding look, INCONCLUSIVE after the last, or CONTINUE
    seeds: np.ndarray  # the deciding look's n, else the last look reached's (0 before the first look)
    look: np.ndarray  # 1-based index of that look (0 before the first)
    mean: np.ndarray  # Δ over that look's pairs
    low: np.ndarray  # its repeated confidence interval
    high: np.ndarray
    next_look: np.ndarray  # seeds at the next look where the code is CONTINUE, else 0

    def table(self, variants: list[str]) -> dict[str, dict[str, Any]]:
        """One study's reading ([V] fields) per variant name, for a report."""
        if self.code.shape != (len(variants),):
            raise ValueError(f"a table is one study's: fields of shape {self.code.shape}, {len(variants)} names")
        return {
            name: {
                "decision": LABELS[Decision(self.code[v])], "seeds": int(self.seeds[v]), "look": int(self.look[v]),
                "delta_mean": float(self.mean[v]), "rci_low": float(self.low[v]), "rci_high": float(self.high[v]),
                "next_look": int(self.next_look[v]),
            }
            for v, name in enumerate(variants)
        }


def sequential_decisions(deltas: np.ndarray, design: SequentialDesign, margin: float) -> SequentialDecisions:
    """Read a sequential design from deltas [..., V, N] in seed order (NaN = not finished): at each look whose
    first n_k pairs all exist, RCI_k = mean_k +- c_k sd_k / sqrt(n_k); better if it lies above 0, worse if below,
    equivalent if inside (-margin, margin); the first decisive look decides and later pairs change nothing.

    The RCIs cover the true Δ at every look at once with probability 1 - alpha / variants, so the family's
    chance of any wrong claim stays under alpha. Nothing is decided between looks: reading after every finished
    pair decides exactly what reading at the looks does.
    """
    deltas = np.asarray(deltas, dtype=float)[..., :design.max_seeds]
    shape = deltas.shape[:-1]
    code = np.full(shape, Decision.CONTINUE, dtype=int)
    seeds, look = np.zeros(shape, dtype=int), np.zeros(shape, dtype=int)
    mean, low, high = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    open_ = np.ones(shape, dtype=bool)  # no decision yet, nor the last look
    for index, (n, bound) in enumerate(zip(design.looks, design.boundaries), start=1):
        if n > deltas.shape[-1]:
            break
        first = deltas[..., :n]
        reached = open_ & ~np.isnan(first).any(axis=-1)  # looks are nested prefixes: an earlier one came first
        look_mean = first.mean(axis=-1)
        half = bound * first.std(axis=-1, ddof=1) / math.sqrt(n)
        look_low, look_high = look_mean - half, look_mean + half
        outcome = np.select(
            [look_low > 0, look_high < 0, (-margin < look_low) & (look_high < margin)],
            [Decision.BETTER, Decision.WORSE, Decision.EQUIVALENT],
            Decision.INCONCLUSIVE if n == design.max_seeds else Decision.CONTINUE,
        )
        code = np.where(reached, outcome, code)
        seeds, look = np.where(reached, n, seeds), np.where(reached, index, look)
        mean, low, high = (np.where(reached, new, old) for new, old in
                           ((look_mean, mean), (look_low, low), (look_high, high)))
        open_ &= ~reached | (outcome == Decision.CONTINUE)
    upcoming = np.array([*design.looks, 0])[look]  # the look after the last one reached
    next_look = np.where(code == Decision.CONTINUE, upcoming, 0)
    return SequentialDecisions(code, seeds, look, mean, low, high, next_look)


def readings_at_looks(deltas: np.ndarray, design: SequentialDesign, margin: float) -> list[SequentialDecisions]:
    """The reading as it stood at each look of the design: look k's sees only the first n_k pairs, and a variant
    decided earlier keeps its deciding look's reading (its `look` field says which)."""
    deltas = np.asarray(deltas, dtype=float)
    return [sequential_decisions(deltas[..., :n], design, margin) for n in design.looks]


# ---------------------------------------------------------------------------------------------------------------
# Simulation


@dataclass(frozen=True)
class FixedDesign:
    """Every variant trained on its planned seeds (one count for all, or one per variant), read by fixed_decisions."""

    seeds: int | tuple[int, ...]
    alpha: float = ALPHA

    def seeds_of(self, variants: int) -> np.ndarray:
        """The seeds of each of `variants` variants."""
        seeds = np.broadcast_to(np.asarray(self.seeds, dtype=int), (variants,))
        if seeds.min() < 2:
            raise ValueError(f"a fixed design needs at least 2 seeds per variant, not {self.seeds}")
        return seeds


@dataclass(frozen=True)
class SimulatedStudies:
    """Replicated studies of one design: decisions and runs [R, V], baseline runs [R]."""

    code: np.ndarray
    variant_runs: np.ndarray
    baseline_runs: np.ndarray  # the baseline trains while any variant needs it

    @property
    def runs(self) -> np.ndarray:
        """Every run of each study, baseline included: [R]."""
        return self.variant_runs.sum(axis=-1) + self.baseline_runs


def simulate(design: FixedDesign | SequentialDesign, true_deltas: np.ndarray, sds: np.ndarray, replications: int,
             rng: np.random.Generator, margin: float, shared_baseline: bool = False) -> SimulatedStudies:
    """Replicate a study: normal paired differences with means true_deltas [V] and SDs sds [V], read by the design.

    Independent differences across variants are the worst case for Bonferroni and Holm; `shared_baseline` draws
    d_vs = sd_v (e_vs - b_s) / sqrt(2), the baseline's seed noise shared (correlation 0.5 between variants).
    Seeds are drawn seed-major, so one rng seed gives the same first pairs to designs of different lengths.
    """
    true_deltas, sds = np.asarray(true_deltas, dtype=float), np.asarray(sds, dtype=float)
    variants = len(true_deltas)
    planned = design.seeds_of(variants) if isinstance(design, FixedDesign) else None
    seeds = design.max_seeds if planned is None else int(planned.max())
    noise = rng.standard_normal((seeds, replications, variants))
    if shared_baseline:
        noise = (noise - rng.standard_normal((seeds, replications, 1))) / math.sqrt(2)
    deltas = np.moveaxis(true_deltas + sds * noise, 0, -1)  # [N, R, V] -> [R, V, N]
    if planned is None:
        read = sequential_decisions(deltas, design, margin)
        code, variant_runs = read.code, read.seeds
    else:
        deltas[:, np.arange(seeds) >= planned[:, None]] = np.nan  # [V, N] mask: a variant's seeds past its plan
        code = fixed_decisions(deltas, margin, design.alpha).code
        variant_runs = np.broadcast_to(planned, code.shape)
    return SimulatedStudies(code, variant_runs, variant_runs.max(axis=-1))


# ---------------------------------------------------------------------------------------------------------------
# Planning


def t_power(effect: float, pairs: int | np.ndarray, alpha: float = ALPHA) -> float | np.ndarray:
    """Power of the two-sided paired t-test at `alpha` against a true Δ of `effect` SDs of the differences."""
    critical = stats.t.ppf(1 - alpha / 2, pairs - 1)
    shift = effect * np.sqrt(pairs)  # the noncentrality of T = mean / (sd / sqrt(n))
    # P(T < -c) as P(T' > c) with T' ~ nct(-shift): nct.cdf's far left tail turns NaN for few degrees of freedom
    return stats.nct.sf(critical, pairs - 1, shift) + stats.nct.sf(critical, pairs - 1, -shift)


def fixed_seeds(target: float, sd: float, variants: int, alpha: float = ALPHA, power: float = POWER) -> int:
    """The fewest seeds per variant whose paired t-test at alpha / variants detects Δ = target with `power`."""
    counts = np.arange(2, SEEDS_CAP + 1)
    enough = counts[t_power(target / sd, counts, alpha / variants) >= power]
    if not len(enough):
        raise ValueError(f"Δ = {target} at SD {sd} needs more than {SEEDS_CAP} seeds")
    return int(enough[0])


def sequential_power(design: SequentialDesign, target: float, sd: float, margin: float,
                     replications: int = PLANNING_REPLICATIONS, seed: int = PLANNING_SEED) -> float:
    """Simulated share of variants at true Δ = target that the design calls better."""
    per_variant = math.ceil(replications / design.variants)
    studies = simulate(design, np.full(design.variants, target), np.full(design.variants, sd), per_variant,
                       np.random.default_rng(seed), margin)
    return float(np.mean(studies.code == Decision.BETTER))


def sequential_max_seeds(target: float, sd: float, variants: int, margin: float = 0.0, alpha: float = ALPHA,
                         power: float = POWER, spending: str = DEFAULT_SPENDING, looks: str = DEFAULT_LOOKS,
                         replications: int = PLANNING_REPLICATIONS, seed: int = PLANNING_SEED) -> int:
    """The smallest max_seeds whose design (looks by the rule) reaches `power` at true Δ = target, simulated.

    The search starts at the fixed design's n: spending the same alpha over several looks needs at least as many
    seeds for the same power (Jennison & Turnbull's inflation factor is at least 1)."""
    for max_seeds in range(max(MIN_LOOK, fixed_seeds(target, sd, variants, alpha, power)), SEEDS_CAP + 1):
        design = sequential_design(max_seeds, variants, alpha, spending, looks)
        if sequential_power(design, target, sd, margin, replications, seed) >= power:
            return max_seeds
    raise ValueError(f"Δ = {target} at SD {sd} needs more than {SEEDS_CAP} seeds")


@dataclass(frozen=True)
class RunsComparison:
    """Runs of a study whose variants all have true Δ = true_delta: the fixed design's, the sequential's mean."""

    true_delta: float
    fixed_runs: int
    sequential_runs: float
    sequential_runs_se: float  # Monte-Carlo standard error of the mean
    decided_early: float  # share of variants decided before the last look
    variant_seeds: float  # mean seeds one variant took to its sequential decision

    @property
    def fewer(self) -> float:
        """The sequential design's saving, a fraction of the fixed design's runs."""
        return 1 - self.sequential_runs / self.fixed_runs


@dataclass(frozen=True)
class SequentialPlan:
    """A sequential design next to the fixed design of the same power, and the runs each takes."""

    fixed_seeds: int
    design: SequentialDesign
    runs: tuple[RunsComparison, ...]


def compare_runs(fixed: FixedDesign, design: SequentialDesign, true_deltas: np.ndarray, sds: np.ndarray,
                 margin: float, replications: int, rng: np.random.Generator,
                 shared_baseline: bool = False) -> tuple[SimulatedStudies, SimulatedStudies]:
    """The same studies under both designs: (fixed, sequential) simulations."""
    return (simulate(fixed, true_deltas, sds, replications, rng, margin, shared_baseline),
            simulate(design, true_deltas, sds, replications, rng, margin, shared_baseline))


def runs_comparison(true_delta: float, fixed: SimulatedStudies, sequential: SimulatedStudies,
                    design: SequentialDesign) -> RunsComparison:
    """Summarise a pair of simulations of the same studies."""
    runs = sequential.runs
    return RunsComparison(true_delta, int(fixed.runs.mean()), float(runs.mean()),
                          float(runs.std(ddof=1) / math.sqrt(len(runs))),
                          float(np.mean(sequential.variant_runs < design.max_seeds)),
                          float(sequential.variant_runs.mean()))


def plan_sequential(target: float, sd: float, variants: int, margin: float, alpha: float = ALPHA,
                    power: float = POWER, spending: str = DEFAULT_SPENDING, looks: str = DEFAULT_LOOKS,
                    replications: int = 4000, seed: int = PLANNING_SEED) -> SequentialPlan:
    """Plan both designs for `power` at Δ = target with a pilot SD, and their runs at Δ = 0, target, 2 x target."""
    fixed_n = fixed_seeds(target, sd, variants, alpha, power)
    design = sequential_design(sequential_max_seeds(target, sd, variants, margin, alpha, power, spending, looks),
                               variants, alpha, spending, looks)
    rng = np.random.default_rng(seed)
    rows = []
    for true_delta in (0.0, target, 2 * target):
        fixed, sequential = compare_runs(FixedDesign(fixed_n, alpha), design, np.full(variants, true_delta),
                                         np.full(variants, sd), margin, replications, rng)
        rows.append(runs_comparison(true_delta, fixed, sequential, design))
    return SequentialPlan(fixed_n, design, tuple(rows))
