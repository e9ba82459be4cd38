"""Statistics of a study that decide nothing: Student-t intervals, what a comparison can detect (MDE, seeds for a
target Δ, the SD's upper confidence limit), the exact sign-flip p, and the contrast's cost. Every decision is
harness.report.design's."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from harness.report.design import ALPHA, POWER, fixed_seeds, t_power

CONFIDENCE = 1 - ALPHA  # two-sided
# TOST at ALPHA alone: both one-sided tests reject exactly when the (1 - 2 ALPHA) interval lies inside the margin.
TOST_CONFIDENCE = 1 - 2 * ALPHA
# A pilot's SD of Δ is itself uncertain: planning beside it at its 80 % upper confidence limit (chi-square).
SD_UPPER_CONFIDENCE = 0.8
SIGN_FLIP_MAX_PAIRS = 32  # two halves of 2^16 sign patterns each: exact, and a few MB
# A signed sum that equals the observed one in exact arithmetic can differ from it by rounding, at most a few
# machine epsilons of the sum of |Δ|; 100 of them (scipy's permutation_test allows as many) count it as a tie.
TIE_TOLERANCE = 100 * np.finfo(float).eps
# Where a variant's cost over CE comes from (aggregate.csv's cost_source).
PROBE, WALL_CLOCK, REFERENCE = "probe", "wall_clock", "reference"


def t_interval(values: pd.Series, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Two-sided Student-t interval of the mean of `values` (n - 1 degrees of freedom); NaN below two."""
    if len(values) < 2:
        return np.nan, np.nan
    half = stats.t.ppf((1 + confidence) / 2, len(values) - 1) * stats.sem(values)  # sem: ddof=1
    return values.mean() - half, values.mean() + half


def mde(sd_diff: float, pairs: int, variants: int = 1, power: float = POWER) -> float:
    """The smallest true Δ the paired t-test at ALPHA / variants (the family's level, as design.fixed_seeds plans)
    detects with `power` over `pairs` pairs, in sd_diff's units."""
    if pairs < 2 or not sd_diff > 0:
        return np.nan
    alpha = ALPHA / variants
    high = 1.0
    while t_power(high, pairs, alpha) < power:  # power grows with the effect towards 1: find a bracket
        high *= 2
    return optimize.brentq(lambda effect: t_power(effect, pairs, alpha) - power, 0.0, high, xtol=1e-10) * sd_diff


def seeds_for(target: float, sd_diff: float, variants: int = 1) -> float:
    """design.fixed_seeds for a report's table: NaN without a spread or past SEEDS_CAP."""
    if not sd_diff > 0:
        return np.nan
    try:
        return float(fixed_seeds(target, sd_diff, variants))
    except ValueError:  # more than SEEDS_CAP seeds
        return np.nan


def sd_upper_limit(sd: float, pairs: int, confidence: float = SD_UPPER_CONFIDENCE) -> float:
    """The one-sided upper confidence limit of an SD seen over `pairs` normal pairs: sd sqrt((n - 1) / chi2_{1 - c})."""
    if pairs < 2:
        return np.nan
    return sd * np.sqrt((pairs - 1) / stats.chi2.ppf(1 - confidence, pairs - 1))


def signed_sums(values: np.ndarray) -> np.ndarray:
    """The sums of `values` under all 2^k sign patterns, sorted."""
    signs = 1 - 2 * ((np.arange(2 ** len(values))[:, None] >> np.arange(len(values))) & 1)  # [2^k, k] of +-1
    return np.sort(signs @ values)


def p_sign_flip(deltas: np.ndarray) -> float:
    """Exact two-sided paired permutation p: the share of the 2^n sign patterns of `deltas` whose mean is at
    least as far from 0 as the observed one (observed included); NaN below two pairs or past SIGN_FLIP_MAX_PAIRS."""
    if not 2 <= len(deltas) <= SIGN_FLIP_MAX_PAIRS:
        return np.nan
    # the same n for every pattern: sums rank as means do
    threshold = abs(deltas.sum()) - TIE_TOLERANCE * np.abs(deltas).sum()
    if threshold <= 0:  # a mean of 0: every pattern is at least as far from it
        return 1.0
    half = len(deltas) // 2  # meet in the middle: 2 x 2^(n/2) sums instead of 2^n
    left, right = signed_sums(deltas[:half]), signed_sums(deltas[half:])
    above = len(right) - np.searchsorted(right, threshold - left)  # right + left >= threshold
    below = np.searchsorted(right, -threshold - left, side="right")  # right + left <= -threshold
    return float((above + below).sum() / 2 ** len(deltas))


def sign_flip_floor(pairs: int) -> float:
    """The smallest p_sign_flip n pairs allow: the observed pattern and its mirror, 2 / 2^n."""
    return 2 / 2**pairs


def paired_costs(ok: pd.DataFrame) -> dict[str, float]:
    """The extra median s/iter and training peak of a variant's finished runs over the baseline's run of the same
    seed, averaged over the seeds."""
    return {
        "extra_s_per_iter": (ok["s_per_iter"] - ok["base_s_per_iter"]).mean(),
        "extra_train_memory_bytes": (ok["train_peak_memory_bytes"] - ok["base_train_peak_memory_bytes"]).mean(),
    }


def cost_stats(ok: pd.DataFrame, is_baseline: bool) -> dict[str, Any]:
    """The variant's cost over CE as a ratio of step times, mean over seeds with a 95 % CI: from the in-run probe of
    the seeds that ran it, else (runs without one) from each seed's median s/iter over the baseline's run of that
    seed; beside it always the latter as a share, the wall clock's extra time.

    Several seeds: a Student-t interval over their ratios; one probed seed: that run's own interval of its median;
    one seed by the wall clock: none, as two separate runs have no interval.
    """
    probed = ok.dropna(subset=["cost_ratio"])
    clock = pd.Series(dtype=float) if is_baseline else (ok["s_per_iter"] / ok["base_s_per_iter"]).dropna()
    if len(probed) and not is_baseline:
        ratios, source = probed["cost_ratio"], PROBE
        own = (probed["cost_ratio_ci95_low"].iloc[0], probed["cost_ratio_ci95_high"].iloc[0])
        memory, kinds = probed["contrast_extra_memory_bytes"].mean(), probed["contrast_extra_memory_kind"]
    else:
        ratios = clock
        source = REFERENCE if is_baseline else WALL_CLOCK if len(ratios) else ""
        own, kinds = (np.nan, np.nan), ok["memory_kind"]
        memory = (ok["train_peak_memory_bytes"] - ok["base_train_peak_memory_bytes"]).mean() if len(ratios) else np.nan
    low, high = t_interval(ratios) if len(ratios) > 1 else own
    return {
        "cost_source": source, "cost_seeds": len(ratios), "cost_ratio_mean": ratios.mean(),
        "cost_ratio_ci95_low": low, "cost_ratio_ci95_high": high, "extra_cost_pct": (ratios.mean() - 1) * 100,
        "extra_cost_pct_ci95_low": (low - 1) * 100, "extra_cost_pct_ci95_high": (high - 1) * 100,
        "wall_clock_extra_pct": (clock.mean() - 1) * 100,
        "contrast_ms_per_step_mean": probed["contrast_ms_per_step"].mean(), "extra_memory_bytes": memory,
        "extra_memory_kind": " / ".join(kinds.dropna().unique()) if len(ratios) else "",
    }
