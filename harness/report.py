"""Results folders -> a markdown report, tidy CSVs and seaborn plots.

`python -m harness.report results/<recipe> [--out reports]` writes
reports/<recipe>/: report.md, results.csv (one row per run), aggregate.csv (one row per
variant: means over seeds and the paired comparison with the CE baseline), curves.csv and
the plots. It reads only files under results/, through the contract in harness/results.py,
and imports no torch, so a report can be rebuilt anywhere.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, NamedTuple

import matplotlib

matplotlib.use("Agg")  # reports are built on headless servers and in CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from scipy import stats
from sklearn.manifold import TSNE

from harness.labels import IGNORE_INDEX
from harness.results import (
    METRIC_FIELDS,
    METRICS_FILE,
    VAL_CENTERS_FILE,
    VAL_SAMPLES_FILE,
    publish,
    read_metrics,
    read_summary,
    read_sweep,
    run_folders,
    write_text,
)

MIB = 2**20
ERROR_CHARS = 80
TSNE_MIN_POINTS = 4
TSNE_MAX_POINTS = 2000  # t-SNE cost grows fast with points: a subsample keeps a rebuild to about a minute
# Lists or dicts in summary.json, possibly null, and the traceback: never a column of their own.
NON_SCALAR_FIELDS = {"per_class_iou", "class_names", "versions", "paper", "traceback"}
CURVE_PANELS = {
    "loss": "total loss",
    "loss_ce": "CE loss",
    "loss_aux": "auxiliary CE loss",
    "loss_contrast": "contrastive loss",
    "lr": "learning rate",
    "val_miou": "val mIoU (%)",
}
MEMORY_KINDS = {"cuda_max_allocated": "GPU max allocated", "rss": "process RSS"}
CONFIDENCE = 0.95
NO_DIFFERENCE = "no difference detected at 95 %"
MULTI_SEED_STUDY = "recipes/digit_scenes_ablations.yaml"
MULTI_SEED_REPORT = "reports/digit_scenes_ablations/"
# Newer summaries add these; older ones lack them, so every column built from them may be blank.
OPTIONAL_METRICS = ("contrast_ms_per_iter", "bank_fill", "train_peak_memory_bytes", "eval_peak_memory_bytes")
RUN_METRICS = list(dict.fromkeys([*METRIC_FIELDS, *OPTIONAL_METRICS]))  # once each, should results.py list them
# What a variant is: the same for all its seeds, so aggregate.csv takes the first known value.
CONFIG_FIELDS = ["contrast_kind", "center_variant", "bank_size", "paper_miou"]
# Run fields compared with the baseline's run of the same seed (Δ mIoU, extra time, extra memory).
PAIRED_FIELDS = ("val_miou", "s_per_iter", "train_peak_memory_bytes")
# Run fields averaged over a variant's finished seeds, as aggregate.csv's <field>_mean.
MEAN_FIELDS = (
    "s_per_iter", "contrast_ms_per_iter", "train_peak_memory_bytes", "eval_peak_memory_bytes",
    "peak_memory_bytes", "train_images_per_s", "bank_fill",
)


def signed(value: float, digits: int = 2) -> str:
    """'+1.23'; a difference that rounds to zero prints as '+0.00', never '-0.00'."""
    return f"{round(value, digits) + 0.0:+.{digits}f}"  # + 0.0 turns -0.0 into 0.0


# (header, results.csv column, cell formatter); formatted (numeric) columns are right-aligned.
TABLE_COLUMNS = (
    ("variant", "variant", str),
    ("seed", "seed", "{:.0f}".format),
    ("backbone", "backbone", str),
    ("head", "head", str),
    ("contrast", "contrast_kind", str),
    ("center variant", "center_variant", str),
    ("bank size", "bank_size_text", str),
    ("precision", "mixed_precision", str),
    ("world size", "world_size", "{:.0f}".format),
    ("val mIoU (%)", "val_miou_pct", "{:.2f}".format),
    ("Δ mIoU vs CE (pp)", "delta_miou_pp", signed),
    ("paper mIoU (%)", "paper_miou", "{:.1f}".format),
    ("paper row", "paper_ref", str),
    ("images/s", "train_images_per_s", "{:.1f}".format),
    ("s/iter", "s_per_iter", "{:.3f}".format),
    ("peak memory (MiB)", "peak_memory_mib", "{:.0f}".format),
    ("bank (MiB)", "bank_mib", "{:.2f}".format),
    ("status", "status_text", str),
)
PAPER_COLUMNS = ("paper_miou", "paper_ref")
DELTA_COLUMNS = ("delta_mean", "delta_ci95_low", "delta_ci95_high")
# (header, aggregate.csv column, divisor to the shown unit, cell formatter)
COST_COLUMNS = (
    ("s/iter", "s_per_iter_mean", 1, "{:.3f}".format),
    ("extra s/iter", "extra_s_per_iter", 1, lambda value: signed(value, 3)),
    ("contrast ms/iter", "contrast_ms_per_iter_mean", 1, "{:.1f}".format),
    ("train memory (MiB)", "train_peak_memory_bytes_mean", MIB, "{:.0f}".format),
    ("extra train memory (MiB)", "extra_train_memory_bytes", MIB, lambda value: signed(value, 0)),
    ("bank fill", "bank_fill_mean", 1, "{:.0%}".format),
)
DERIVED_COLUMNS = {
    "bank_size_text", "val_miou_pct", "delta_miou_pp", "peak_memory_mib", "bank_mib", "paper_ref", "status_text",
}
# file -> (heading, one-line caption); captions are filled per report.
PLOTS = {
    "miou.png": (
        "mIoU per variant",
        "Validation mIoU of each variant: one dot per seed; black bar and whiskers: the mean over seeds with "
        "its Student-t 95 % confidence interval (none for one seed); black diamonds: the paper's number for "
        "the row a variant reproduces; dashed line: the CE baseline's mean.",
    ),
    "cost_benefit.png": (
        "Cost and benefit",
        "The harness's answer in one picture. One point per contrast variant: its Δ mIoU over the CE baseline "
        "(mean over the seeds both finished, percentage points; whiskers: Student-t 95 % CI, none for one "
        "seed) against its extra time per training iteration (left, % of CE's {ce_s_per_iter} s/iter) and "
        "its extra training memory (right, MiB; {memory}). Above the line at Δ = 0 a variant gains mIoU; "
        "further right it costs more.",
    ),
    "miou_vs_bank.png": (
        "mIoU vs memory bank size",
        "Validation mIoU (mean over seeds; whiskers: 95 % CI) of the RegionContrast variants against their "
        "region memory bank size (the paper's Table 3); bank size 0 contrasts within the batch only.",
    ),
    "throughput_memory.png": (
        "Throughput and memory",
        "Training throughput (images/s) and peak memory per variant, means over finished seeds "
        "(memory kind: {memory}).",
    ),
    "curves.png": (
        "Training curves",
        "Losses and learning rate at each logged iteration, and validation mIoU at each evaluation; with "
        "several seeds, the line is their mean and the band ± one standard deviation.",
    ),
    "tsne.png": (
        "Region centers (t-SNE)",
        "t-SNE of the validation region centers (one point per class per image), CE baseline {ce} "
        "vs RegionContrast {region} (each its first finished seed), coloured by class (the paper's Fig. 3).",
    ),
    "qualitative.png": (
        "Qualitative results",
        "The first validation images: input, CE {ce}, RegionContrast {region}, ground truth; "
        "ignored pixels are {ignore} (the paper's Fig. 4).",
    ),
}


class Shown(NamedTuple):
    """One run a paired figure (t-SNE, qualitative) shows."""

    variant: str
    seed: float  # NaN for a summary that predates the seed field
    folder: Path


# ---------------------------------------------------------------- tidy tables


def flat_scalars(summary: dict[str, Any]) -> dict[str, Any]:
    """Scalars of a summary, nested dicts flattened as parent_child; lists (and their nulls) left out."""
    flat: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            flat.update({f"{key}_{child}": item for child, item in value.items()})
        elif key not in NON_SCALAR_FIELDS and not isinstance(value, list):
            flat[key] = value
    return flat


def baseline_choice(frame: pd.DataFrame, named: str | None) -> tuple[str | None, str]:
    """The recipe's CE baseline and why: the variant sweep.json names, else the only contrast-free
    variant, else the contrast-free one called 'ce'; None (and the reason) when none qualifies."""
    if named in set(frame["variant"]):
        return named, "named by `sweep.baseline`"
    candidates = sorted(set(frame.loc[frame["contrast_kind"] == "none", "variant"]))
    if len(candidates) == 1:
        return candidates[0], "the only contrast-free variant"
    if "ce" in candidates:
        return "ce", "the contrast-free variant called `ce`"
    if candidates:
        return None, f"{len(candidates)} contrast-free variants and `sweep.baseline` names none of them"
    return None, "no variant is contrast-free"


def shorten(text: Any, limit: int = ERROR_CHARS) -> str:
    """One line of at most `limit` characters, for table cells."""
    if not isinstance(text, str):
        return ""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def bank_size_text(kind: str, size: float) -> str | None:
    """Bank size as the table shows it; a null region bank size means one slot per training image."""
    if pd.notna(size):
        return f"{size:.0f}"
    return "train set" if kind == "region" else None


def baseline_values(frame: pd.DataFrame, column: str) -> np.ndarray:
    """For each run, the baseline's `column` on the same seed; NaN where the baseline has no such run.

    Summaries that predate the seed field (one run per variant) pair with each other: pandas merges
    missing keys as equal.
    """
    base = frame.loc[frame["is_baseline"], ["seed", column]].drop_duplicates("seed")
    return frame[["seed"]].merge(base, on="seed", how="left")[column].to_numpy()


def add_derived(frame: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    """Columns in the units the report shows: %, percentage points, MiB."""
    frame["bank_size_text"] = [bank_size_text(*pair) for pair in zip(frame["contrast_kind"], frame["bank_size"])]
    frame["val_miou_pct"] = frame["val_miou"] * 100
    frame["is_baseline"] = frame["variant"] == baseline
    frame["delta_miou_pp"] = (frame["val_miou"] - baseline_values(frame, "val_miou")) * 100
    frame["peak_memory_mib"] = frame["peak_memory_bytes"] / MIB
    frame["bank_mib"] = frame["bank_bytes"] / MIB
    frame["paper_ref"] = [
        f"{table}: {row}" if pd.notna(miou) else None
        for table, row, miou in zip(frame["paper_table"], frame["paper_row"], frame["paper_miou"])
    ]
    frame["status_text"] = [
        f"{status}: {shorten(error)}" if shorten(error) else status
        for status, error in zip(frame["status"], frame["error"])
    ]
    return frame


def results_frame(summaries: list[dict[str, Any]], named_baseline: str | None = None) -> pd.DataFrame:
    """One row per run, the baseline's first, then by variant and seed; metrics of unfinished or failed
    runs blanked."""
    frame = pd.DataFrame([flat_scalars(summary) for summary in summaries])
    needed = [*RUN_METRICS, "seed", "run_folder", "error", "paper_table", "paper_row", "paper_miou", "memory_kind"]
    needed += [*CONFIG_FIELDS, *(column for _, column, _ in TABLE_COLUMNS if column not in DERIVED_COLUMNS)]
    frame = frame.reindex(columns=list(dict.fromkeys([*frame.columns, *needed])))
    unfinished = frame["status"] != "ok"
    frame[RUN_METRICS] = frame[RUN_METRICS].astype(float).mask(unfinished)
    baseline, _ = baseline_choice(frame, named_baseline)
    frame = frame.assign(order=frame["variant"] != baseline).sort_values(["order", "variant", "seed"])
    return add_derived(frame.drop(columns="order").reset_index(drop=True), baseline)


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


def variant_stats(runs: pd.DataFrame, has_baseline: bool) -> dict[str, Any]:
    """aggregate.csv's numbers for one variant; `runs` carry base_<field>, the baseline's run of the same seed."""
    ok = runs[runs["status"] == "ok"]
    miou_low, miou_high = t_interval(ok["val_miou"])
    row = {
        "is_baseline": bool(runs["is_baseline"].iloc[0]), "runs": status_counts(runs), "n_seeds": len(ok),
        "miou_mean": ok["val_miou"].mean(), "miou_std": ok["val_miou"].std(ddof=1),
        "miou_ci95_low": miou_low, "miou_ci95_high": miou_high,
    }
    row.update(paired_stats(ok, row["is_baseline"]))
    # a variant with no number says why: its runs' status, e.g. the failure
    row["verdict"] = verdict(row, has_baseline) if len(ok) else "; ".join(dict.fromkeys(runs["status_text"]))
    return {**row, **{f"{field}_mean": ok[field].mean() for field in MEAN_FIELDS}}


def holm_adjusted(p_values: pd.Series) -> pd.Series:
    """Holm's step-down adjustment of the variants' p-values (NaN stays NaN).

    Every variant is tested against the same baseline runs, so with k variants one "better" at 5 %
    turns up by chance far more often than 5 %; Holm keeps that family-wise rate at 5 %.
    """
    tested = p_values.dropna().sort_values()
    factors = np.arange(len(tested), 0, -1)  # k for the smallest p, down to 1 for the largest
    adjusted = np.minimum(1.0, np.maximum.accumulate(tested.to_numpy() * factors))
    return pd.Series(adjusted, index=tested.index).reindex(p_values.index)


def aggregate_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per variant, in the runs' order: means over finished seeds and the paired comparison
    with the baseline (mIoU and Δ as fractions, like val_miou)."""
    runs = frame.assign(  # runs that predate the training-only peak: their overall peak is the closest measure
        train_peak_memory_bytes=frame["train_peak_memory_bytes"].fillna(frame["peak_memory_bytes"])
    )
    runs = runs.assign(**{f"base_{field}": baseline_values(runs, field) for field in PAIRED_FIELDS})
    groups, has_baseline = runs.groupby("variant", sort=False), bool(frame["is_baseline"].any())
    numbers = pd.DataFrame([variant_stats(group, has_baseline) for _, group in groups])
    numbers.insert(numbers.columns.get_loc("p_value") + 1, "p_holm", holm_adjusted(numbers["p_value"]))
    return pd.concat([groups[CONFIG_FIELDS].first().reset_index(), numbers], axis=1)


def curves_frame(results_dir: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Tidy curves (variant, seed, iter, metric, value) from every run's metrics.jsonl."""
    rows = []
    for variant, seed, folder in zip(frame["variant"], frame["seed"], frame["run_folder"]):
        path = results_dir / folder / METRICS_FILE
        for record in read_metrics(path) if path.exists() else []:
            rows += [
                (variant, seed, record["iter"], metric, float(value))
                for metric, value in record.items()
                if metric not in ("kind", "iter") and isinstance(value, (int, float))
            ]
    return pd.DataFrame(rows, columns=["variant", "seed", "iter", "metric", "value"])


def per_class_frame(summaries: list[dict[str, Any]]) -> pd.DataFrame:
    """Per-class IoU (%) with classes as rows and finished variants as columns (mean over seeds); null -> NaN."""
    columns = [
        pd.Series(
            [np.nan if iou is None else iou * 100 for iou in summary["per_class_iou"]],
            index=summary.get("class_names") or range(len(summary["per_class_iou"])),
            dtype=float, name=summary["variant"],
        )
        for summary in summaries
        if summary.get("status") == "ok" and summary.get("per_class_iou")
    ]
    return pd.concat(columns, axis=1).T.groupby(level=0, sort=False).mean().T if columns else pd.DataFrame()


# ---------------------------------------------------------------- markdown


def format_cell(value: Any, formatter: Callable[[Any], str]) -> str:
    """A table cell: blank for missing values, formatted otherwise."""
    return "" if value is None or pd.isna(value) else formatter(value)


def markdown_table(cells: pd.DataFrame, right_aligned: set[str]) -> str:
    """A GitHub markdown table of string cells (no tabulate dependency)."""
    escaped = cells.map(lambda text: text.replace("|", "\\|"))
    rule = ["---:" if column in right_aligned else "---" for column in cells.columns]
    lines = [list(cells.columns), rule, *escaped.itertuples(index=False)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def comparison_table(frame: pd.DataFrame) -> str:
    """The runs table; the paper's columns only when some variant reproduces a paper row."""
    has_paper = frame["paper_miou"].notna().any()
    spec = [entry for entry in TABLE_COLUMNS if has_paper or entry[1] not in PAPER_COLUMNS]
    cells = pd.DataFrame({
        header: [format_cell(value, formatter) for value in frame[column]]
        for header, column, formatter in spec
    })
    return markdown_table(cells, {header for header, _, formatter in spec if formatter is not str})


def mean_std_text(mean: float, std: float) -> str:
    """'52.31 ± 1.20', or the mean alone for one seed."""
    return format_cell(mean, "{:.2f}".format) + format_cell(std, " ± {:.2f}".format)


def delta_text(mean: float, low: float, high: float) -> str:
    """'+2.10 [+0.50, +3.70]', or the Δ alone without a CI."""
    return format_cell(mean, signed) + ("" if pd.isna(low) else f" [{signed(low)}, {signed(high)}]")


def p_text(p_value: float) -> str:
    """A p-value with three decimals; below 0.001 only its bound."""
    return "<0.001" if p_value < 0.001 else f"{p_value:.3f}"


def variant_table(aggregate: pd.DataFrame) -> str:
    """Per variant: mean ± std over seeds, Δ with its CI and p, the verdict, and the costs."""
    pct = {column: aggregate[column] * 100 for column in ("miou_mean", "miou_std", *DELTA_COLUMNS)}
    cells = {
        "variant": aggregate["variant"],
        "contrast": aggregate["contrast_kind"].map(lambda kind: format_cell(kind, str)),
        "runs": aggregate["runs"],
        "mIoU (%) mean ± std": list(map(mean_std_text, pct["miou_mean"], pct["miou_std"])),
    }
    if aggregate["paper_miou"].notna().any():
        cells["paper mIoU (%)"] = aggregate["paper_miou"].map(lambda value: format_cell(value, "{:.1f}".format))
    cells["Δ mIoU vs CE (pp) [95 % CI]"] = list(map(delta_text, *(pct[column] for column in DELTA_COLUMNS)))
    cells["p"] = aggregate["p_value"].map(lambda value: format_cell(value, p_text))
    cells["p (Holm)"] = aggregate["p_holm"].map(lambda value: format_cell(value, p_text))
    cells["verdict"] = aggregate["verdict"]
    for header, column, scale, formatter in COST_COLUMNS:
        cells[header] = (aggregate[column] / scale).map(lambda value: format_cell(value, formatter))
    return markdown_table(pd.DataFrame(cells), set(cells) - {"variant", "contrast", "runs", "verdict"})


def per_class_table(per_class: pd.DataFrame) -> str:
    """Per-class IoU (%) as a markdown table, classes as rows."""
    cells = per_class.map(lambda value: format_cell(value, "{:.1f}".format))
    cells.insert(0, "class", [str(name) for name in per_class.index])
    return markdown_table(cells.reset_index(drop=True), set(per_class.columns))


def status_counts(frame: pd.DataFrame) -> str:
    """'3 ok, 1 failed' for the report's header line."""
    return ", ".join(f"{count} {status}" for status, count in frame["status"].value_counts().items())


def memory_label(frame: pd.DataFrame) -> str:
    """How peak memory was measured, e.g. 'GPU max allocated'."""
    kinds = frame["memory_kind"].dropna().unique()
    return " / ".join(MEMORY_KINDS.get(kind, str(kind)) for kind in kinds) or "unknown"


def train_memory_source(frame: pd.DataFrame) -> str:
    """Which summary field the training memory numbers come from (older runs record only the overall peak)."""
    recorded = frame.loc[frame["status"] == "ok", "train_peak_memory_bytes"].notna()
    if recorded.all():
        return "the training peak, `train_peak_memory_bytes`"
    if not recorded.any():
        return "the overall peak, `peak_memory_bytes`, evaluation included: these runs predate the training peak"
    return "the training peak, `train_peak_memory_bytes`, or for runs that predate it the overall `peak_memory_bytes`"


def seed_suffix(seed: float) -> str:
    """' (seed 3)', or nothing where the summary predates the seed field."""
    return "" if pd.isna(seed) else f" (seed {seed:.0f})"


def seeds_text(frame: pd.DataFrame) -> str:
    """'seeds 0, 1, 2' (or 'seed 0') over the finished runs; 'seed not recorded' for old summaries."""
    seeds = sorted({int(seed) for seed in frame.loc[frame["status"] == "ok", "seed"].dropna()})
    if not seeds:
        return "seed not recorded"
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def comparison_notes(frame: pd.DataFrame, aggregate: pd.DataFrame) -> list[str]:
    """What the variants table's numbers are, and, with one seed per variant, that they are an anecdote."""
    notes = [
        "mIoU is the mean ± sample standard deviation over a variant's finished seeds. Δ is its mIoU minus the "
        "CE baseline's on the same seed, averaged over the seeds where both finished, in percentage points; "
        "[95 % CI] is the two-sided Student-t interval over those n pairs (n − 1 degrees of freedom) and p the "
        "paired t-test, both from two pairs on. The verdict says better or worse only when the interval "
        "excludes 0. p (Holm) adjusts p for the number of variants tested against the same baseline runs "
        "(Holm's step-down method): a verdict whose adjusted p is 0.05 or more is a consistent sign, not a "
        "settled effect. Extra s/iter and memory are paired by seed the same way; training memory is "
        f"{train_memory_source(frame)}.",
    ]
    if aggregate["n_seeds"].max() == 1:
        notes += [
            "",
            f"**One seed: an anecdote, not a measurement.** Every variant here finished once ({seeds_text(frame)}), "
            "so each Δ is a single paired difference with no confidence interval and no p-value, and it cannot "
            f"be told apart from seed-to-seed noise. The multi-seed study (`{MULTI_SEED_STUDY}`, "
            f"`{MULTI_SEED_REPORT}`) is where the confidence intervals are.",
        ]
    return notes


# ---------------------------------------------------------------- plots


def variant_colors(variants: list[str]) -> dict[str, Any]:
    """One colour per variant, the same in every plot; past tab10's ten colours, evenly spaced hues."""
    return dict(zip(variants, sns.color_palette("tab10" if len(variants) <= 10 else "husl", len(variants))))


def save(fig: plt.Figure, path: Path) -> None:
    """Write a figure as PNG (atomically) and free it."""
    publish(path, lambda scratch: fig.savefig(scratch, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


def label_bars(ax: plt.Axes, aggregate: pd.DataFrame, column: str, template: str) -> None:
    """Value above each bar, or the variant's run statuses where it has no value."""
    for x, (value, runs) in enumerate(zip(aggregate[column], aggregate["runs"])):
        text, y = (runs, 0.0) if pd.isna(value) else (template.format(value), value)
        ax.annotate(text, (x, y), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=9)


def headroom(ax: plt.Axes, values: pd.Series | pd.DataFrame) -> None:
    """Y range from 0 to a little above the largest value, so bar labels fit."""
    top = np.nanmax(np.asarray(values, dtype=float), initial=0.0)
    ax.set_ylim(0, 1.15 * top if top > 0 else 1.0)


def rotate_variant_names(ax: plt.Axes) -> None:
    """Variant names on the x axis, slanted so long ones never overlap."""
    ax.tick_params(axis="x", labelrotation=30)
    plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
    ax.set_xlabel("variant")


def variant_bars(ax: plt.Axes, aggregate: pd.DataFrame, column: str, colors: dict[str, Any]) -> None:
    """Bars of one column per variant (variants without a value keep their slot)."""
    sns.barplot(
        aggregate, x="variant", y=column, hue="variant", order=list(aggregate["variant"]),
        palette=colors, legend=False, ax=ax,
    )
    rotate_variant_names(ax)


def ci_whiskers(low: pd.Series, mean: pd.Series, high: pd.Series) -> np.ndarray:
    """errorbar's yerr [2, N] from an interval; 0 where there is none, so no whisker is drawn."""
    return np.nan_to_num(np.vstack([mean - low, high - mean]))


def plot_miou(frame: pd.DataFrame, aggregate: pd.DataFrame, colors: dict[str, Any], path: Path) -> None:
    """Each seed's mIoU as a dot, each variant's mean with its 95 % CI as whiskers, the CE baseline as a
    line, the paper's numbers as diamonds."""
    order = list(aggregate["variant"])
    x = np.arange(len(order))
    mean, low, high = (aggregate[column] * 100 for column in ("miou_mean", "miou_ci95_low", "miou_ci95_high"))
    fig, ax = plt.subplots(figsize=(2.5 + 0.9 * len(order), 4.5))
    sns.stripplot(
        frame, x="variant", y="val_miou_pct", hue="variant", order=order, palette=colors, legend=False,
        jitter=0.15, size=6, alpha=0.75, ax=ax,
    )
    ax.errorbar(x, mean, yerr=ci_whiskers(low, mean, high), fmt="_", color="black", markersize=22,
                mew=2, capsize=5, lw=1.2, zorder=4)
    for position, value, runs in zip(x, mean, aggregate["runs"]):
        if pd.isna(value):  # the slot says why it is empty, e.g. "1 failed"
            ax.annotate(runs, (position, 0.02), xycoords=ax.get_xaxis_transform(), ha="center", fontsize=9)
        else:
            ax.annotate(f"{value:.1f}", (position, value), xytext=(13, 0), textcoords="offset points",
                        va="center", fontsize=8)
    handles = [
        Line2D([], [], marker="o", ls="none", color="grey", alpha=0.75, label="a seed's run"),
        Line2D([], [], marker="_", ms=14, mew=2, color="black", label="mean, 95 % CI"),
    ]
    if aggregate["paper_miou"].notna().any():
        ax.scatter(x, aggregate["paper_miou"], marker="D", s=50, color="black", zorder=5)
        handles.append(Line2D([], [], marker="D", ls="none", color="black", label="paper"))
    baseline = aggregate.loc[aggregate["is_baseline"], "miou_mean"].dropna()
    if len(baseline):
        ax.axhline(baseline.iloc[0] * 100, ls="--", color="grey", lw=1)
        handles.append(Line2D([], [], ls="--", color="grey", lw=1, label="CE baseline mean (ours)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a point
    rotate_variant_names(ax)
    ax.set(ylabel="val mIoU (%)", title="Validation mIoU per variant")
    save(fig, path)


def bank_points(aggregate: pd.DataFrame) -> pd.DataFrame:
    """RegionContrast variants with a finished seed and a known bank size (0 = in-batch only).

    Only the center variant most of them share: Table 3 varies the bank alone, and a line through
    other centers (Eq. 2 at the same bank size, say) would join points that differ in two ways.
    """
    region = aggregate[
        (aggregate["contrast_kind"] == "region") & (aggregate["n_seeds"] > 0) & aggregate["bank_size"].notna()
    ]
    if region.empty:
        return region
    shared_center = region["center_variant"].mode().iloc[0]
    return region[region["center_variant"] == shared_center].sort_values("bank_size")


def plot_miou_vs_bank(aggregate: pd.DataFrame, path: Path) -> None:
    """Mean mIoU (95 % CI whiskers) against region bank size (paper Table 3), with the paper's curve when known."""
    points = bank_points(aggregate)
    mean, low, high = (points[column] * 100 for column in ("miou_mean", "miou_ci95_low", "miou_ci95_high"))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.errorbar(points["bank_size"], mean, yerr=ci_whiskers(low, mean, high), marker="o", capsize=4, label="ours")
    if points["paper_miou"].notna().any():
        paper = points.dropna(subset="paper_miou")
        ax.plot(paper["bank_size"], paper["paper_miou"], marker="D", color="black", label="paper")
    baseline = aggregate[aggregate["is_baseline"]]
    for column, scale, style, source in (("miou_mean", 100, "--", "ours"), ("paper_miou", 1, ":", "paper")):
        if len(baseline) and pd.notna(baseline[column].iloc[0]):
            ax.axhline(baseline[column].iloc[0] * scale, ls=style, color="grey", lw=1,
                       label=f"CE baseline ({source})")
    ax.legend()
    ax.set(
        xlabel="region memory bank size (entries; 0 = in-batch contrast only)",
        ylabel="val mIoU (%)", title="mIoU vs memory bank size (paper Table 3)",
    )
    save(fig, path)


def plot_throughput_memory(aggregate: pd.DataFrame, memory: str, colors: dict[str, Any], path: Path) -> None:
    """Two panels: mean training images/s and mean peak memory per variant."""
    shown = aggregate.assign(peak_memory_mib=aggregate["peak_memory_bytes_mean"] / MIB)
    fig, (speed, peak) = plt.subplots(1, 2, figsize=(4.0 + 2.2 * len(shown), 4.5))
    for ax, column, template in ((speed, "train_images_per_s_mean", "{:.1f}"), (peak, "peak_memory_mib", "{:.0f}")):
        variant_bars(ax, shown, column, colors)
        label_bars(ax, shown, column, template)
        headroom(ax, shown[column])
    speed.set(ylabel="training throughput (images/s)", title="Training throughput")
    peak.set(ylabel=f"peak memory (MiB, {memory})", title="Peak memory")
    fig.tight_layout()
    save(fig, path)


def cost_points(aggregate: pd.DataFrame) -> pd.DataFrame:
    """Contrast variants with a Δ against the baseline, and their extra time (% of CE's s/iter) and memory (MiB)."""
    base_s = aggregate.loc[aggregate["is_baseline"], "s_per_iter_mean"]
    points = aggregate[
        (aggregate["contrast_kind"] != "none") & ~aggregate["is_baseline"] & aggregate["delta_mean"].notna()
    ]
    return points.assign(
        extra_time_pct=points["extra_s_per_iter"] / (base_s.iloc[0] if len(base_s) else np.nan) * 100,
        extra_memory_mib=points["extra_train_memory_bytes"] / MIB,
    )


def plot_cost_benefit(points: pd.DataFrame, colors: dict[str, Any], path: Path) -> None:
    """Δ mIoU (pp, 95 % CI whiskers) against extra time and extra training memory, one point per contrast variant."""
    delta, low, high = (points[column] * 100 for column in DELTA_COLUMNS)
    yerr = ci_whiskers(low, delta, high)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True, layout="constrained")
    panels = (
        ("extra_time_pct", "Extra time", "extra time per training iteration over CE (% of CE's s/iter)"),
        ("extra_memory_mib", "Extra memory", "extra training peak memory over CE (MiB)"),
    )
    labels = {ax: [] for ax in axes}
    for ax, (column, title, xlabel) in zip(axes, panels):
        for index, (variant, x, y) in enumerate(zip(points["variant"], points[column], delta)):
            ax.errorbar(x, y, yerr=yerr[:, index : index + 1], fmt="o", ms=7, capsize=4, color=colors[variant])
            labels[ax].append(ax.annotate(variant, (x, y), xytext=(7, 3), textcoords="offset points", fontsize=8,
                                          color=colors[variant], fontweight="bold"))
        ax.axhline(0, color="grey", lw=1, ls="--")
        ax.axvline(0, color="grey", lw=0.8, ls=":")
        ax.set(xlabel=xlabel, title=title)
    axes[0].set_ylabel("Δ mIoU vs CE (pp; mean over seeds, 95 % CI)")
    fig.suptitle("What each contrast variant gains, and what it costs")
    fig.canvas.draw()  # the layout fixes where each label lands
    for panel_labels in labels.values():
        spread_labels(panel_labels)
    save(fig, path)


def spread_labels(point_labels: list[Any]) -> None:
    """Move point labels that overlap one already placed down a line at a time (variants of one contrast kind
    cost about the same, so their labels pile up); top point first."""
    placed = []
    for label in sorted(point_labels, key=lambda text: -text.xy[1]):
        box = label.get_window_extent()
        while any(box.overlaps(other) for other in placed):  # NaN boxes overlap nothing, so this ends
            label.xyann = (label.xyann[0], label.xyann[1] - 1.2 * label.get_fontsize())  # points
            box = label.get_window_extent()
        placed.append(box)


def plot_curves(curves: pd.DataFrame, colors: dict[str, Any], path: Path) -> None:
    """One panel per logged quantity (losses, lr, val mIoU) over iterations, hue = variant, mean over seeds."""
    metrics = [metric for metric in CURVE_PANELS if metric in set(curves["metric"])]
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.8 * ncols, 3.6 * nrows + 0.8), sharex=True, squeeze=False, layout="constrained"
    )
    for ax, metric in zip(axes.flat, metrics):
        rows = curves[curves["metric"] == metric]
        scale = 100.0 if metric == "val_miou" else 1.0
        sns.lineplot(  # errorbar="sd": a band across seeds, cheap and deterministic (no bootstrap)
            rows.assign(value=rows["value"] * scale), x="iter", y="value", hue="variant", palette=colors,
            errorbar="sd", marker="o" if metric == "val_miou" else None, legend=False, ax=ax,
        )
        ax.set(title=CURVE_PANELS[metric], xlabel="iteration", ylabel=CURVE_PANELS[metric])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelbottom=True)  # sharex hides them on upper rows; every panel stands alone
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    shown = [variant for variant in colors if variant in set(curves["variant"])]
    handles = [Line2D([], [], color=colors[variant], lw=2) for variant in shown]
    fig.legend(handles, shown, loc="outside lower center", ncols=min(4, len(shown)), title="variant")
    save(fig, path)


# ---------------------------------------------------------------- paper figures (Fig. 3, Fig. 4)


def first_run_with(frame: pd.DataFrame, variant: str, results_dir: Path, filename: str) -> Shown | None:
    """The variant's first finished run (by seed) that saved `filename`."""
    runs = frame[(frame["variant"] == variant) & (frame["status"] == "ok")]
    for seed, folder in zip(runs["seed"], runs["run_folder"]):
        if (results_dir / folder / filename).exists():
            return Shown(variant, seed, results_dir / folder)
    return None


def region_partner(
    frame: pd.DataFrame, aggregate: pd.DataFrame, results_dir: Path, filename: str
) -> tuple[Shown, Shown] | None:
    """(CE baseline, best RegionContrast variant by mean mIoU), each its first finished run with `filename`."""
    baseline = aggregate.loc[aggregate["is_baseline"], "variant"]
    base = first_run_with(frame, baseline.iloc[0], results_dir, filename) if len(baseline) else None
    region = aggregate[aggregate["contrast_kind"] == "region"].sort_values("miou_mean", ascending=False)
    shown = (first_run_with(frame, variant, results_dir, filename) for variant in region["variant"])
    partner = next((run for run in shown if run is not None), None)
    return None if base is None or partner is None else (base, partner)


def class_look(folders: list[Path], num_classes: int) -> tuple[np.ndarray, list[str]]:
    """The dataset palette [N,3] in 0..1 and class names from val_samples.npz; generic ones without it."""
    for folder in folders:
        path = folder / VAL_SAMPLES_FILE
        if path.exists():
            samples = np.load(path)
            return samples["palette"] / 255.0, [str(name) for name in samples["class_names"]]
    return np.array(sns.color_palette("husl", num_classes)), [str(index) for index in range(num_classes)]


def load_centers(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Finite region centers [M,C] and their labels [M], subsampled to TSNE_MAX_POINTS."""
    data = np.load(path)
    keep = np.isfinite(data["centers"]).all(axis=1)
    centers, labels = data["centers"][keep], data["labels"][keep]
    if len(centers) > TSNE_MAX_POINTS:
        chosen = np.random.default_rng(0).choice(len(centers), TSNE_MAX_POINTS, replace=False)
        centers, labels = centers[chosen], labels[chosen]
    return centers, labels


def embed(centers: np.ndarray) -> np.ndarray:
    """2-D t-SNE; perplexity shrinks with the point count because it must stay below it."""
    perplexity = float(np.clip((len(centers) - 1) / 3, 1.0, 30.0))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0).fit_transform(centers)


def class_legend(
    fig: plt.Figure, palette: np.ndarray, names: list[str], present: np.ndarray, extra: list[Patch]
) -> None:
    """A legend below the figure with the classes that appear, in palette colours."""
    handles = [Patch(color=palette[index], label=names[index]) for index in present if index < len(names)]
    handles += extra
    fig.legend(handles=handles, loc="outside lower center", ncols=min(6, len(handles)), title="class")


def pair_caption(pair: tuple[Shown, Shown]) -> dict[str, str]:
    """The caption's names of the two runs: '`ce` (seed 0)'."""
    return {key: f"`{run.variant}`{seed_suffix(run.seed)}" for key, run in zip(("ce", "region"), pair)}


def plot_tsne(pair: tuple[Shown, Shown], path: Path) -> dict[str, str] | None:
    """Side-by-side t-SNE of val region centers, CE vs RegionContrast (paper Fig. 3);
    its caption's values, or None with too few centers."""
    loaded = [load_centers(run.folder / VAL_CENTERS_FILE) for run in pair]
    if min(len(centers) for centers, _ in loaded) < TSNE_MIN_POINTS:
        return None
    num_classes = int(max(labels.max() for _, labels in loaded)) + 1
    palette, names = class_look([run.folder for run in pair], num_classes)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6), layout="constrained")
    for ax, run, title, (centers, labels) in zip(axes, pair, ("(a) CE", "(b) RegionContrast"), loaded):
        points = embed(centers)
        ax.scatter(points[:, 0], points[:, 1], c=palette[labels], s=18, edgecolors="none")
        ax.set(title=f"{title}: {run.variant}{seed_suffix(run.seed)}",
               xlabel="t-SNE dimension 1 (a.u.)", ylabel="t-SNE dimension 2 (a.u.)")
        ax.tick_params(labelleft=False, labelbottom=False)
    present = np.unique(np.concatenate([labels for _, labels in loaded]))
    class_legend(fig, palette, names, present, [])
    save(fig, path)
    return pair_caption(pair)


def ignore_color(palette: np.ndarray) -> tuple[str, np.ndarray]:
    """Black for ignored pixels, or white where a class is black already (digit scenes' background)."""
    return ("white", np.ones(3)) if (palette == 0).all(axis=1).any() else ("black", np.zeros(3))


def colorize(labels: np.ndarray, palette: np.ndarray, ignore: np.ndarray) -> np.ndarray:
    """[H,W] class ids -> [H,W,3] colours in 0..1; ignore (IGNORE_INDEX) and unknown ids get `ignore`."""
    table = np.tile(ignore, (256, 1))  # [3] -> [256,3]
    table[: min(len(palette), IGNORE_INDEX)] = palette[:IGNORE_INDEX]
    return table[labels]


def matched_samples(pair: tuple[Shown, Shown]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Baseline samples and the partner's predictions, aligned on the val indices both hold."""
    base, other = (np.load(run.folder / VAL_SAMPLES_FILE) for run in pair)
    _, rows, other_rows = np.intersect1d(base["indices"], other["indices"], return_indices=True)
    arrays = {key: base[key][rows] for key in ("images", "labels", "preds", "indices")}
    arrays.update(palette=base["palette"] / 255.0, class_names=base["class_names"])
    return arrays, other["preds"][other_rows]


def plot_qualitative(pair: tuple[Shown, Shown], path: Path) -> dict[str, str] | None:
    """Image / CE / RegionContrast / ground truth for the first val images (paper Fig. 4);
    its caption's values, or None without common images."""
    samples, region_preds = matched_samples(pair)
    count = len(samples["indices"])
    if not count:
        return None
    titles = ("image", *(f"{role}: {run.variant}{seed_suffix(run.seed)}"
                         for role, run in zip(("CE", "RegionContrast"), pair)), "ground truth")
    fig, axes = plt.subplots(count, 4, figsize=(12, 3.0 * count + 1.0), squeeze=False, layout="constrained")
    palette = samples["palette"]
    ignore_name, ignore = ignore_color(palette)
    for row in range(count):
        maps = (samples["preds"][row], region_preds[row], samples["labels"][row])
        panels = (samples["images"][row], *(colorize(labels, palette, ignore) for labels in maps))
        for col, panel in enumerate(panels):
            axes[row, col].imshow(panel, interpolation="nearest")
            axes[row, col].set(xticks=[], yticks=[])
        axes[row, 0].set_ylabel(f"val image {samples['indices'][row]}")
    for col, title in enumerate(titles):
        axes[0, col].set_title(title)
    shown = np.unique(np.concatenate([samples["labels"].ravel(), samples["preds"].ravel(), region_preds.ravel()]))
    names = [str(name) for name in samples["class_names"]]
    ignore_patch = Patch(facecolor=ignore, edgecolor="grey", label="ignore")
    class_legend(fig, palette, names, shown[shown != IGNORE_INDEX], [ignore_patch])
    save(fig, path)
    return {**pair_caption(pair), "ignore": ignore_name}


# ---------------------------------------------------------------- assembling the report


def make_plots(
    frame: pd.DataFrame, aggregate: pd.DataFrame, curves: pd.DataFrame, results_dir: Path, out: Path
) -> dict[str, dict[str, str]]:
    """Draw every plot the data supports; file name -> the values its caption names."""
    colors = variant_colors(list(aggregate["variant"]))
    plot_miou(frame, aggregate, colors, out / "miou.png")
    plot_throughput_memory(aggregate, memory_label(frame), colors, out / "throughput_memory.png")
    made = {"miou.png": {}, "throughput_memory.png": {"memory": memory_label(frame)}}
    points = cost_points(aggregate)
    if len(points):
        plot_cost_benefit(points, colors, out / "cost_benefit.png")
        base_s = aggregate.loc[aggregate["is_baseline"], "s_per_iter_mean"].iloc[0]
        made["cost_benefit.png"] = {
            "ce_s_per_iter": format_cell(base_s, "{:.3f}".format) or "unknown", "memory": train_memory_source(frame)
        }
    if bank_points(aggregate)["bank_size"].nunique() >= 2:
        plot_miou_vs_bank(aggregate, out / "miou_vs_bank.png")
        made["miou_vs_bank.png"] = {}
    if len(curves):
        plot_curves(curves, colors, out / "curves.png")
        made["curves.png"] = {}
    for filename, inputs, plot in (
        ("tsne.png", VAL_CENTERS_FILE, plot_tsne), ("qualitative.png", VAL_SAMPLES_FILE, plot_qualitative)
    ):
        pair = region_partner(frame, aggregate, results_dir, inputs)
        caption = plot(pair, out / filename) if pair else None
        if caption is not None:
            made[filename] = caption
    return made


def report_markdown(
    recipe: str, results_dir: Path, frame: pd.DataFrame, aggregate: pd.DataFrame, named_baseline: str | None,
    plots: dict[str, dict[str, str]], per_class: pd.DataFrame,
) -> str:
    """The whole report.md: header, variants table, runs table, plots in PLOTS order, per-class IoU."""
    baseline, why = baseline_choice(frame, named_baseline)
    lines = [
        f"# Report: {recipe}",
        "",
        f"From `{results_dir}`: {len(frame)} runs of {len(aggregate)} variants ({status_counts(frame)}; "
        f"{seeds_text(frame)}); "
        + (f"CE baseline: `{baseline}` ({why})." if baseline else
           f"CE baseline: none ({why}), so there is no Δ, no verdict and no cost-benefit figure."),
        "",
        "## Variants",
        "",
        variant_table(aggregate),
        "",
        *comparison_notes(frame, aggregate),
        "",
        "## Runs",
        "",
        comparison_table(frame),
        "",
        "One row per run. Δ mIoU is in percentage points against the CE baseline's run of the same seed; "
        f"memory is in MiB (2^20 bytes; memory kind: {memory_label(frame)}).",
    ]
    for filename, (heading, caption) in PLOTS.items():
        if filename in plots:
            lines += ["", f"## {heading}", "", caption.format(**plots[filename]), "", f"![{heading}]({filename})"]
    if len(per_class.columns):
        lines += ["", "## Per-class IoU (%)", "", "Mean over a variant's finished seeds.", "",
                  per_class_table(per_class)]
    return "\n".join(lines) + "\n"


def build_report(results_dir: Path, reports_root: Path = Path("reports")) -> Path:
    """Write reports/<recipe>/ (report.md, results.csv, aggregate.csv, curves.csv, plots); returns report.md's path."""
    results_dir = Path(results_dir)
    recipe = results_dir.resolve().name  # resolved, so that "." or a trailing slash still names it
    out = Path(reports_root) / recipe
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):  # a plot the data no longer supports must not linger
        stale.unlink()
    summaries = [
        {**read_summary(folder), "run_folder": folder.relative_to(results_dir).as_posix()}
        for folder in run_folders(results_dir)
    ]
    if not summaries:
        raise FileNotFoundError(f"no variant folders under {results_dir}")
    named_baseline = read_sweep(results_dir)["baseline"]
    frame = results_frame(summaries, named_baseline)
    aggregate = aggregate_frame(frame)
    curves = curves_frame(results_dir, frame)
    write_text(out / "results.csv", frame.convert_dtypes().to_csv(index=False))  # integral counts print as ints
    write_text(out / "aggregate.csv", aggregate.convert_dtypes().to_csv(index=False))
    write_text(out / "curves.csv", curves.to_csv(index=False))
    with sns.axes_style("whitegrid"):  # a context, not set_theme: the engine's process keeps its style
        plots = make_plots(frame, aggregate, curves, results_dir, out)
    report = out / "report.md"
    markdown = report_markdown(recipe, results_dir, frame, aggregate, named_baseline, plots, per_class_frame(summaries))
    write_text(report, markdown)
    return report


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m harness.report results/<recipe> [--out reports]."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="results/<recipe>, one sub-folder per variant (or seed)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="reports root (default: reports)")
    args = parser.parse_args(argv)
    print(build_report(args.results_dir, args.out))


if __name__ == "__main__":
    main()
