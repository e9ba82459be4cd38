"""Statistics of a study: Student-t intervals, the paired comparison with the baseline, Holm's adjustment,
and the verdict."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
NO_DIFFERENCE = "no difference detected at 95 %"


def t_interval(values: pd.Series) -> tuple[float, float]:
    """Two-sided Student-t 95 % interval of the mean of `values` (n - 1 degrees of freedom); NaN below two."""
    if len(values) < 2:
        return np.nan, np.nan
    half = stats.t.ppf((1 + CONFIDENCE) / 2, len(values) - 1) * stats.sem(values)  # sem: ddof=1
    return values.mean() - half, values.mean() + half


def paired_stats(ok: pd.DataFrame, is_baseline: bool) -> dict[str, float]:
    """Δ mIoU over the seeds both the variant and the baseline finished (mean, CI, paired t-test),
    and the extra time and memory paired the same way."""
    pairs = ok.dropna(subset=["val_miou", "base_val_miou"])
    deltas = pairs["val_miou"] - pairs["base_val_miou"]
    count = 0 if is_baseline else len(pairs)  # the baseline paired with itself: Δ is 0, its CI degenerate
    low, high = t_interval(deltas) if count else (np.nan, np.nan)
    p_value = stats.ttest_rel(pairs["val_miou"], pairs["base_val_miou"]).pvalue if count >= 2 else np.nan
    return {
        "n_pairs": count, "delta_mean": deltas.mean(), "delta_ci95_low": low, "delta_ci95_high": high,
        "p_value": p_value, "extra_s_per_iter": (ok["s_per_iter"] - ok["base_s_per_iter"]).mean(),
        "extra_train_memory_bytes": (ok["train_peak_memory_bytes"] - ok["base_train_peak_memory_bytes"]).mean(),
    }


def verdict(row: dict[str, Any], has_baseline: bool) -> str:
    """'better' or 'worse' only when the Δ CI excludes 0, else NO_DIFFERENCE; without a CI, why there is none."""
    if row["is_baseline"] or not has_baseline:
        return "baseline" if row["is_baseline"] else ""
    if row["n_pairs"] < 2:
        return {0: "no finished seed shared with the baseline", 1: "one seed: no CI"}[row["n_pairs"]]
    if row["delta_ci95_low"] > 0:
        return "better"
    return "worse" if row["delta_ci95_high"] < 0 else NO_DIFFERENCE



def holm_adjusted(p_values: pd.Series) -> pd.Series:
    """Holm's step-down adjustment of the variants' p-values (NaN stays NaN).

    Every variant is tested against the same baseline runs, so with k variants one "better" at 5 %
    turns up by chance far more often than 5 %; Holm keeps that family-wise rate at 5 %.
    """
    tested = p_values.dropna().sort_values()
    factors = np.arange(len(tested), 0, -1)  # k for the smallest p, down to 1 for the largest
    adjusted = np.minimum(1.0, np.maximum.accumulate(tested.to_numpy() * factors))
    return pd.Series(adjusted, index=tested.index).reindex(p_values.index)

