"""What a study says about each variant, decided through harness.report.design only: the paired Δ per seed, the
design's reading (fixed: one family of every variant's claims at its end; sequential: repeated CIs at its looks),
and the verdict the report writes, withheld where the design allows none."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from harness.report import design
from harness.report.design import Decision
from harness.report.stats import TOST_CONFIDENCE, mde, p_sign_flip, seeds_for, t_interval
from harness.results import SweepRecord

COLLAPSED = "collapsed runs: no verdict"
BASELINE_COLLAPSED = "collapsed baseline runs: no verdict"
# Why a sequential variant stopped, by its decision.
STOPPED = {
    Decision.BETTER: "interval above 0",
    Decision.WORSE: "interval below 0",
    Decision.EQUIVALENT: "interval inside ±margin",
    Decision.INCONCLUSIVE: "max_seeds reached",
}
# aggregate.csv's columns of Δ and of what a fixed design of its pairs can detect.
DESCRIPTIVE_COLUMNS = ("n_pairs", "delta_mean", "delta_std", "delta_ci95_low", "delta_ci95_high", "delta_ci90_low",
                       "delta_ci90_high", "p_value", "p_sign_flip", "mde_80", "seeds_for_target")
# aggregate.csv's columns of the design's reading, blank where it gives none.
FIXED_COLUMNS = ("p_family", "p_tost", "p_tost_family")
SEQUENTIAL_COLUMNS = ("rci_low", "rci_high", "look_ci95_low", "look_ci95_high", "seeds_used", "look", "next_look",
                      "stopped")
# The numbers a decision is read from: blank where the verdict is withheld, so that none is quoted as one.
DECIDING_COLUMNS = ("p_family", "p_tost_family", "rci_low", "rci_high", "stopped")


def is_sequential(sweep: SweepRecord) -> bool:
    """Whether the study's design is group-sequential (sweep.design)."""
    return sweep.design == "sequential"


def sequential_design(sweep: SweepRecord, variants: int) -> design.SequentialDesign:
    """The sequential design sweep.json records, for `variants` variants against the baseline."""
    max_seeds = sweep.max_seeds or len(sweep.seeds)
    looks = tuple(sweep.looks) if sweep.looks else design.default_looks(max_seeds)
    return design.SequentialDesign(max_seeds, looks, variants)


def baseline_values(frame: pd.DataFrame, column: str) -> np.ndarray:
    """For each run, the baseline's `column` on the same seed; NaN where the baseline has no such run.

    Summaries that predate the seed field (one run per variant) pair with each other: pandas merges
    missing keys as equal.
    """
    base = frame.loc[frame["is_baseline"], ["seed", column]].drop_duplicates("seed")
    return frame[["seed"]].merge(base, on="seed", how="left")[column].to_numpy()


def paired_deltas(runs: pd.DataFrame, variants: list[str], seeds: list[int] | None = None) -> np.ndarray:
    """Δ mIoU [V, N] of each variant's finished runs against the baseline's run of the same seed: in `seeds` order
    where given (a sequential design's), else each variant's pairs by seed."""
    deltas = runs["miou"] - baseline_values(runs, "miou")  # NaN for unfinished runs: their metrics are blank
    finished = runs.assign(delta=deltas)[(runs["status"] == "ok") & deltas.notna()]
    rows = []
    for variant in variants:
        own = finished[finished["variant"] == variant].sort_values("seed")
        rows.append([dict(zip(own["seed"], own["delta"])).get(seed, np.nan) for seed in seeds]
                    if seeds is not None else list(own["delta"]))
    width = max(map(len, rows), default=0)
    return np.array([row + [np.nan] * (width - len(row)) for row in rows], dtype=float).reshape(len(rows), width)


def descriptive(deltas: np.ndarray, fixed: design.FixedDecisions, sweep: SweepRecord) -> pd.DataFrame:
    """Per variant row of deltas [V, N]: Δ over its pairs (mean, SD, 95 % and 90 % t CIs, paired t p, sign-flip p)
    and what a fixed design of its pairs can detect at the family's level (MDE, seeds for the target)."""
    variants = len(deltas)
    rows = []
    for v, row in enumerate(deltas):
        pairs = pd.Series(row[~np.isnan(row)])
        low90, high90 = t_interval(pairs, TOST_CONFIDENCE)
        rows.append({
            "n_pairs": int(fixed.pairs[v]), "delta_mean": fixed.mean[v], "delta_std": fixed.sd[v],
            "delta_ci95_low": fixed.low[v], "delta_ci95_high": fixed.high[v], "delta_ci90_low": low90,
            "delta_ci90_high": high90, "p_value": fixed.p_value[v], "p_sign_flip": p_sign_flip(pairs.to_numpy()),
            "mde_80": mde(fixed.sd[v], int(fixed.pairs[v]), variants),
            "seeds_for_target": seeds_for(sweep.target_delta, fixed.sd[v], variants),
        })
    return pd.DataFrame(rows, columns=list(DESCRIPTIVE_COLUMNS))


def fixed_reading(fixed: design.FixedDecisions) -> tuple[pd.DataFrame, list[str]]:
    """The fixed design's columns and decision labels per variant."""
    columns = pd.DataFrame({"p_family": fixed.p_family, "p_tost": fixed.p_tost, "p_tost_family": fixed.p_tost_family})
    return columns, [design.LABELS[Decision(code)] for code in fixed.code]


def sequential_reading(deltas: np.ndarray, plan: design.SequentialDesign,
                       margin: float) -> tuple[pd.DataFrame, list[str]]:
    """The sequential design's columns (the repeated CI, the fixed-n t interval over the same seeds for reference,
    the look and why it stopped) and decision texts per variant; undecided ones say when the next look comes."""
    read = design.sequential_decisions(deltas, plan, margin)
    rows, texts = [], []
    for v, code in enumerate(map(Decision, read.code)):
        seeds, upcoming = int(read.seeds[v]), int(read.next_look[v])
        low, high = t_interval(pd.Series(deltas[v, :seeds])) if seeds else (np.nan, np.nan)
        rows.append({"rci_low": read.low[v], "rci_high": read.high[v], "look_ci95_low": low, "look_ci95_high": high,
                     "seeds_used": seeds, "look": int(read.look[v]), "next_look": upcoming,
                     "stopped": STOPPED.get(code, "")})
        if code == Decision.CONTINUE:
            arrived = int((~np.isnan(deltas[v, :upcoming])).sum())
            texts.append(f"continue (next look at {upcoming} seeds, {arrived} of {upcoming} in)")
        else:
            texts.append(design.LABELS[code])
    return pd.DataFrame(rows), texts


def withheld(variant: dict[str, Any], has_baseline: bool, baseline_collapsed: bool, interim: str) -> str | None:
    """Why a variant gets no decision of the design, or None where it gets one: no finished run (its runs' status),
    no baseline, collapsed runs (its own or the baseline's), or a fixed design looked at before its end."""
    if variant["is_baseline"]:
        return "baseline"
    if not variant["n_seeds"]:
        return variant["status_texts"]
    if not has_baseline:
        return ""
    if variant["collapsed_runs"]:
        return COLLAPSED
    if baseline_collapsed:
        return BASELINE_COLLAPSED
    return f"interim ({interim})" if interim else None


def comparison_frame(runs: pd.DataFrame, variants: pd.DataFrame, sweep: SweepRecord, unfinished: str) -> pd.DataFrame:
    """aggregate.csv's comparison with the baseline per row of `variants` (variant, is_baseline, n_seeds,
    collapsed_runs, status_texts): Δ and what it can detect, the design's reading, and the verdict.

    `unfinished` ('25 of 50 runs', or '' for a complete study) makes a fixed study interim: no verdict of the design.
    """
    has_baseline = bool(variants["is_baseline"].any())
    compared = variants.index[~variants["is_baseline"]] if has_baseline else variants.index[:0]
    names = list(variants.loc[compared, "variant"])
    sequential = is_sequential(sweep)
    deltas = paired_deltas(runs, names, sweep.seeds if sequential else None)
    fixed = design.fixed_decisions(deltas, sweep.equivalence_margin)
    numbers = descriptive(deltas, fixed, sweep).set_axis(compared)
    if sequential and len(names):
        reading, labels = sequential_reading(deltas, sequential_design(sweep, len(names)), sweep.equivalence_margin)
    else:
        reading, labels = fixed_reading(fixed)
    frame = pd.concat([numbers, reading.set_axis(compared)], axis=1).reindex(
        index=variants.index, columns=[*DESCRIPTIVE_COLUMNS, *FIXED_COLUMNS, *SEQUENTIAL_COLUMNS])
    if has_baseline:
        frame.loc[variants["is_baseline"], ["n_pairs", "delta_mean"]] = [0, 0.0]
    frame["n_pairs"] = frame["n_pairs"].fillna(0).astype(int)
    baseline_collapsed = bool(variants.loc[variants["is_baseline"], "collapsed_runs"].sum())
    interim = "" if sequential else unfinished
    decided = dict(zip(compared, labels))
    verdicts = []
    for index, variant in variants.iterrows():
        reason = withheld(variant, has_baseline, baseline_collapsed, interim)
        if reason is not None and index in decided:  # no decision: none of the numbers that make one either
            frame.loc[index, list(DECIDING_COLUMNS)] = np.nan
        verdicts.append(decided[index] if reason is None else reason)
    return frame.assign(verdict=verdicts)


def look_readings(runs: pd.DataFrame, aggregate: pd.DataFrame, sweep: SweepRecord) -> pd.DataFrame:
    """A sequential study's repeated CI of every variant at every look it reached (variant, look, seeds, Δ, low,
    high, decision); none of a variant whose verdict collapsed runs withhold, and empty for a fixed study or one
    without a baseline."""
    columns = ["variant", "look", "seeds", "delta_mean", "low", "high", "decision"]
    compared = aggregate[~aggregate["is_baseline"]]
    if not is_sequential(sweep) or not aggregate["is_baseline"].any() or compared.empty:
        return pd.DataFrame(columns=columns)
    names = list(compared["variant"])
    plan = sequential_design(sweep, len(names))  # the whole family's, as the verdicts were read
    shown = set(compared.loc[~compared["verdict"].isin([COLLAPSED, BASELINE_COLLAPSED]), "variant"])
    deltas = paired_deltas(runs, names, sweep.seeds)
    rows = [
        (name, index, reading.seeds[v], reading.mean[v], reading.low[v], reading.high[v],
         design.LABELS[Decision(reading.code[v])])
        for index, reading in enumerate(design.readings_at_looks(deltas, plan, sweep.equivalence_margin), start=1)
        for v, name in enumerate(names) if reading.look[v] == index and name in shown
    ]
    return pd.DataFrame(rows, columns=columns)
