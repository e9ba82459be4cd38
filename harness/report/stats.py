"""Statistics of a study: Student-t intervals, the paired comparison with the baseline, Holm's adjustment,
what the comparison can detect (noncentral-t power, exact sign-flip p), the verdict, and the contrast's cost."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE  # two-sided
# TOST at ALPHA: both one-sided tests reject exactly when the (1 - 2 ALPHA) interval lies inside the margin.
TOST_CONFIDENCE = 1 - 2 * ALPHA
POWER = 0.8
SEEDS_CAP = 1000  # seeds_for_target searches up to here; NaN beyond
SIGN_FLIP_MAX_PAIRS = 32  # two halves of 2^16 sign patterns each: exact, and a few MB
# A signed sum that equals the observed one in exact arithmetic can differ from it by rounding, at most a few
# machine epsilons of the sum of |Δ|; 100 of them (scipy's permutation_test allows as many) count it as a tie.
TIE_TOLERANCE = 100 * np.finfo(float).eps
INCONCLUSIVE = "inconclusive"
# Where a variant's cost over CE comes from (aggregate.csv's cost_source).
PROBE, WALL_CLOCK, REFERENCE = "probe", "wall_clock", "reference"


def t_interval(values: pd.Series, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Two-sided Student-t interval of the mean of `values` (n - 1 degrees of freedom); NaN below two."""
    if len(values) < 2:
        return np.nan, np.nan
    half = stats.t.ppf((1 + confidence) / 2, len(values) - 1) * stats.sem(values)  # sem: ddof=1
    return values.mean() - half, values.mean() + half


def t_power(effect: float, pairs: int | np.ndarray) -> float | np.ndarray:
    """Power of the two-sided paired t-test at ALPHA against a true Δ of `effect` SDs of the differences."""
    critical = stats.t.ppf(1 - ALPHA / 2, pairs - 1)
    shift = effect * np.sqrt(pairs)  # the noncentrality of T = mean / (sd / sqrt(n))
    # P(T < -c) as P(T' > c) with T' ~ nct(-shift): nct.cdf's far left tail turns NaN for few degrees of freedom
    return stats.nct.sf(critical, pairs - 1, shift) + stats.nct.sf(critical, pairs - 1, -shift)


def mde(sd_diff: float, pairs: int, power: float = POWER) -> float:
    """The smallest true Δ the paired t-test detects with `power` over `pairs` pairs, in sd_diff's units."""
    if pairs < 2 or not sd_diff > 0:
        return np.nan
    high = 1.0
    while t_power(high, pairs) < power:  # power grows with the effect towards 1: find a bracket
        high *= 2
    return optimize.brentq(lambda effect: t_power(effect, pairs) - power, 0.0, high, xtol=1e-10) * sd_diff


def seeds_for(target: float, sd_diff: float, power: float = POWER) -> float:
    """The fewest pairs whose paired t-test detects a true Δ of `target` with `power`; NaN past SEEDS_CAP."""
    if not sd_diff > 0:
        return np.nan
    counts = np.arange(2, SEEDS_CAP + 1)
    enough = counts[t_power(target / sd_diff, counts) >= power]
    return float(enough[0]) if len(enough) else np.nan


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


def paired_stats(ok: pd.DataFrame, is_baseline: bool, target_delta: float) -> dict[str, float]:
    """Δ mIoU over the seeds both the variant and the baseline finished (mean, SD, CIs, tests, what it can
    detect), and the extra time and memory paired the same way."""
    pairs = ok.dropna(subset=["miou", "base_miou"])
    deltas = pairs["miou"] - pairs["base_miou"]
    count = 0 if is_baseline else len(pairs)  # the baseline paired with itself: Δ is 0, its CI degenerate
    tested = deltas.iloc[:count]
    low, high = t_interval(tested)
    low90, high90 = t_interval(tested, TOST_CONFIDENCE)
    sd = tested.std(ddof=1)
    p_value = stats.ttest_rel(pairs["miou"], pairs["base_miou"]).pvalue if count >= 2 else np.nan
    return {
        "n_pairs": count, "delta_mean": deltas.mean(), "delta_std": sd, "delta_ci95_low": low,
        "delta_ci95_high": high, "delta_ci90_low": low90, "delta_ci90_high": high90, "p_value": p_value,
        "p_sign_flip": p_sign_flip(tested.to_numpy()), "mde_80": mde(sd, count),
        "seeds_for_target": seeds_for(target_delta, sd),
        "extra_s_per_iter": (ok["s_per_iter"] - ok["base_s_per_iter"]).mean(),
        "extra_train_memory_bytes": (ok["train_peak_memory_bytes"] - ok["base_train_peak_memory_bytes"]).mean(),
    }


def cost_stats(ok: pd.DataFrame, is_baseline: bool) -> dict[str, Any]:
    """The variant's cost over CE as a ratio of step times, mean over seeds with a 95 % CI: from the in-run probe of
    the seeds that ran it, else (older runs) from each seed's wall-clock s/iter over the baseline's run of that seed.

    Several seeds: a Student-t interval over their ratios; one probed seed: that run's own interval of its median;
    one seed by the wall clock: none, as two separate runs have no interval.
    """
    probed = ok.dropna(subset=["cost_ratio"])
    if len(probed) and not is_baseline:
        ratios, source = probed["cost_ratio"], PROBE
        own = (probed["cost_ratio_ci95_low"].iloc[0], probed["cost_ratio_ci95_high"].iloc[0])
        memory, kinds = probed["contrast_extra_memory_bytes"].mean(), probed["contrast_extra_memory_kind"]
    else:
        ratios = pd.Series(dtype=float) if is_baseline else (ok["s_per_iter"] / ok["base_s_per_iter"]).dropna()
        source = REFERENCE if is_baseline else WALL_CLOCK if len(ratios) else ""
        own, kinds = (np.nan, np.nan), ok["memory_kind"]
        memory = (ok["train_peak_memory_bytes"] - ok["base_train_peak_memory_bytes"]).mean() if len(ratios) else np.nan
    low, high = t_interval(ratios) if len(ratios) > 1 else own
    return {
        "cost_source": source, "cost_seeds": len(ratios), "cost_ratio_mean": ratios.mean(),
        "cost_ratio_ci95_low": low, "cost_ratio_ci95_high": high, "extra_cost_pct": (ratios.mean() - 1) * 100,
        "extra_cost_pct_ci95_low": (low - 1) * 100, "extra_cost_pct_ci95_high": (high - 1) * 100,
        "contrast_ms_per_step_mean": probed["contrast_ms_per_step"].mean(), "extra_memory_bytes": memory,
        "extra_memory_kind": " / ".join(kinds.dropna().unique()) if len(ratios) else "",
    }


def verdict(row: dict[str, Any], has_baseline: bool, margin: float) -> str:
    """better / worse when the 95 % CI excludes 0, equivalent when the 90 % CI lies inside ±margin (TOST),
    else INCONCLUSIVE; without a CI, why there is none."""
    if row["is_baseline"] or not has_baseline:
        return "baseline" if row["is_baseline"] else ""
    if row["n_pairs"] < 2:
        return {0: "no finished seed shared with the baseline", 1: "one seed: no CI"}[row["n_pairs"]]
    if row["delta_ci95_low"] > 0:
        return "better"
    if row["delta_ci95_high"] < 0:
        return "worse"
    return "equivalent" if -margin < row["delta_ci90_low"] and row["delta_ci90_high"] < margin else INCONCLUSIVE


def holm_adjusted(p_values: pd.Series) -> pd.Series:
    """Holm's step-down adjustment of the variants' p-values (NaN stays NaN).

    Every variant is tested against the same baseline runs, so with k variants one "better" at 5 %
    turns up by chance far more often than 5 %; Holm keeps that family-wise rate at 5 %.
    """
    tested = p_values.dropna().sort_values()
    factors = np.arange(len(tested), 0, -1)  # k for the smallest p, down to 1 for the largest
    adjusted = np.minimum(1.0, np.maximum.accumulate(tested.to_numpy() * factors))
    return pd.Series(adjusted, index=tested.index).reindex(p_values.index)
