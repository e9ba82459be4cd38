"""The report's figures (seaborn / matplotlib): mIoU, cost and benefit, a sequential study's repeated intervals, bank
size, throughput and memory, training curves, and the paper's t-SNE and qualitative figures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import matplotlib

matplotlib.use("Agg")  # reports are built on headless servers and in CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from sklearn.manifold import TSNE

from harness.report.stats import PROBE, WALL_CLOCK
from harness.report.tables import (
    DELTA_COLUMNS,
    EXTRA_COST_COLUMNS,
    MIB,
    NOT_PAIRED,
    machine_text,
    memory_kinds_text,
    memory_label,
    probed,
    seed_suffix,
)
from harness.results import VAL_CENTERS_FILE, VAL_SAMPLES_FILE, publish

if TYPE_CHECKING:
    from harness.report.study import Study

TSNE_MIN_POINTS = 4
TSNE_MAX_POINTS = 2000  # t-SNE cost grows fast with points: a subsample keeps a rebuild to about a minute
# The extra-memory axis spans at least ±this many MiB: a narrower one would draw a few bytes' noise as a result.
MEMORY_AXIS_MIB = 1.0
CURVE_PANELS = {
    "loss": "total loss",
    "loss_ce": "CE loss",
    "loss_aux": "auxiliary CE loss",
    "loss_contrast": "contrastive loss",
    "lr": "learning rate",
    "miou": "{split} mIoU (%)",
}
# file -> (heading, one-line caption); captions are filled per report.
PLOTS = {
    "miou.png": (
        "mIoU per variant",
        "{Split} mIoU of each variant: one dot per seed; black bar and whiskers: the mean over seeds with "
        "its Student-t 95 % confidence interval (none for one seed); black diamonds: the paper's number for "
        "the row a variant reproduces; dashed line: the CE baseline's mean.",
    ),
    "cost_benefit.png": (
        "Cost and benefit",
        "The harness's answer in one picture. One point per contrast variant: its Δ mIoU over the CE baseline "
        "(mean over the seeds both finished, percentage points; vertical whiskers: Student-t 95 % CI, none for "
        "one seed) against its extra time per training step over CE (left, %; horizontal whiskers: its 95 % CI, "
        "as in the variants table) and its extra memory (right, MiB). {sources} A point above the line at Δ = 0 "
        "has a positive mean Δ, one right of the line at 0 a positive extra cost; which differences the study "
        "keeps is its verdict's to say (variants table), and a time whisker across the line at 0 means a cost that "
        "cannot be told from CE's. A saving no interval shows (extra time below 0 with an interval that "
        "holds 0 or none, any extra memory below 0, for which there is no interval) is noise, not a result: such a "
        "point is drawn at 0 inside a dashed ring and labelled ≈ CE, as the variants table reads it.",
    ),
    "sequential.png": (
        "Sequential design: repeated confidence intervals",
        "Each variant's repeated 95 % confidence interval (mean Δ mIoU over its first n seeds ± the look's "
        "boundary) at every look it reached, against the seeds of that look; a variant's last interval is the one "
        "that decided it (or the latest). Dotted lines: ±{margin} (`sweep.equivalence_margin`); dashed: Δ = 0. An "
        "interval above 0 is better, below 0 worse, inside the dotted lines equivalent; the intervals are wider "
        "than fixed-n t intervals because they hold at every look at once.",
    ),
    "miou_vs_bank.png": (
        "mIoU vs memory bank size",
        "{Split} mIoU (mean over seeds; whiskers: 95 % CI) of the RegionContrast variants against their "
        "region memory bank size (the paper's Table 3); bank size 0 contrasts within the batch only.",
    ),
    "throughput_memory.png": (
        "Throughput and memory",
        "Training throughput (images/s) and peak memory per variant, means over finished seeds "
        "(memory kind: {memory}).",
    ),
    "curves.png": (
        "Training curves",
        "Losses and learning rate at each logged iteration, and {split} mIoU at each evaluation; with "
        "several seeds, the line is their mean and the band ± one standard deviation.",
    ),
    "tsne.png": (
        "Region centers (t-SNE)",
        "t-SNE of the {split} region centers (one point per class per image), CE baseline {ce} "
        "vs RegionContrast {region} (each its first finished seed), coloured by class (the paper's Fig. 3).",
    ),
    "qualitative.png": (
        "Qualitative results",
        "The first {split} images: input, CE {ce}, RegionContrast {region}, ground truth; "
        "ignored pixels are {ignore} (the paper's Fig. 4).",
    ),
}



class Look(NamedTuple):
    """What every figure says of its study: the split scored, and how much of it is in."""

    split: str  # "test", "val", or "val / test" for a study that mixes them
    split_words: str  # the same in a caption's words: "test", "validation"
    progress: str  # "" for a complete study, else e.g. " (interim: 25 of 50 runs)"


class Shown(NamedTuple):
    """One run a paired figure (t-SNE, qualitative) shows."""

    variant: str
    seed: float  # NaN for a summary that predates the seed field
    folder: Path



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
    """errorbar's xerr or yerr [2, N] from an interval; 0 where there is none, so no whisker is drawn."""
    return np.nan_to_num(np.vstack([mean - low, high - mean]))


def plot_miou(frame: pd.DataFrame, aggregate: pd.DataFrame, colors: dict[str, Any], look: Look, path: Path) -> None:
    """Each seed's mIoU as a dot, each variant's mean with its 95 % CI as whiskers, the CE baseline as a
    line, the paper's numbers as diamonds."""
    order = list(aggregate["variant"])
    x = np.arange(len(order))
    mean, low, high = (aggregate[column] * 100 for column in ("miou_mean", "miou_ci95_low", "miou_ci95_high"))
    fig, ax = plt.subplots(figsize=(2.5 + 0.9 * len(order), 4.5))
    sns.stripplot(
        frame, x="variant", y="miou_pct", hue="variant", order=order, palette=colors, legend=False,
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
    has_ci = aggregate["miou_ci95_low"].notna().any()  # one seed per variant: no interval to name
    handles = [
        Line2D([], [], marker="o", ls="none", color="grey", alpha=0.75, label="a seed's run"),
        Line2D([], [], marker="_", ms=14, mew=2, color="black", label="mean, 95 % CI" if has_ci else "mean"),
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
    ax.set(ylabel=f"{look.split} mIoU (%)", title=f"{look.split.capitalize()} mIoU per variant{look.progress}")
    save(fig, path)


def bank_points(aggregate: pd.DataFrame) -> pd.DataFrame:
    """Region-center variants (their summaries name a center variant) with a finished seed and a known bank size
    (0 = in-batch only).

    Only the center variant most of them share: Table 3 varies the bank alone, and a line through
    other centers (Eq. 2 at the same bank size, say) would join points that differ in two ways.
    """
    region = aggregate[
        aggregate["center_variant"].notna() & (aggregate["n_seeds"] > 0) & aggregate["bank_size"].notna()
    ]
    if region.empty:
        return region
    shared_center = region["center_variant"].mode().iloc[0]
    return region[region["center_variant"] == shared_center].sort_values("bank_size")


def plot_miou_vs_bank(aggregate: pd.DataFrame, look: Look, path: Path) -> None:
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
        ylabel=f"{look.split} mIoU (%)", title=f"mIoU vs memory bank size (paper Table 3){look.progress}",
    )
    save(fig, path)


def plot_throughput_memory(
    aggregate: pd.DataFrame, memory: str, colors: dict[str, Any], look: Look, path: Path
) -> None:
    """Two panels: mean training images/s and mean peak memory per variant."""
    shown = aggregate.assign(peak_memory_mib=aggregate["peak_memory_bytes_mean"] / MIB)
    fig, (speed, peak) = plt.subplots(1, 2, figsize=(4.0 + 2.2 * len(shown), 4.5))
    for ax, column, template in ((speed, "train_images_per_s_mean", "{:.1f}"), (peak, "peak_memory_mib", "{:.0f}")):
        variant_bars(ax, shown, column, colors)
        label_bars(ax, shown, column, template)
        headroom(ax, shown[column])
    speed.set(ylabel="training throughput (images/s)", title="Training throughput")
    peak.set(ylabel=f"peak memory (MiB, {memory})", title="Peak memory")
    fig.suptitle(f"Throughput and memory{look.progress}")
    fig.tight_layout()
    save(fig, path)


def cost_points(aggregate: pd.DataFrame) -> pd.DataFrame:
    """Contrast variants with a Δ against the baseline, and their extra memory in MiB."""
    points = aggregate[
        ~aggregate["is_baseline"] & aggregate["delta_mean"].notna()
    ]
    return points.assign(extra_memory_mib=points["extra_memory_bytes"] / MIB)


def cost_sources_text(frame: pd.DataFrame, points: pd.DataFrame) -> str:
    """The caption's account of where the figure's costs come from: filled points paired in-run, hollow ones
    by the wall clock."""
    sentences = []
    if (points["cost_source"] == PROBE).any():
        runs = probed(frame)
        sentences.append(
            "Filled points: paired, in-run (each run's cost probe: its own training steps with the contrast term "
            "on and off, alternating on the same batches at steady state after training, with the bank as full as "
            f"training left it; ratio of step times; {machine_text(runs)}; extra memory: the peak during contrast "
            f"steps minus that during CE steps, {memory_kinds_text(runs['contrast_extra_memory_kind'])})."
        )
    if (points["cost_source"] == WALL_CLOCK).any():
        sentences.append(
            f"Hollow points: {NOT_PAIRED} (runs without a cost probe: each seed's s/iter over the CE baseline's "
            f"run of the same seed and the difference of their training peaks, {memory_label(frame)}; separate "
            "runs, so the machine's load enters as much as the contrast term)."
        )
    return " ".join(sentences)


def shown_at_zero(value: pd.Series, high: pd.Series) -> pd.Series:
    """Where a cost below 0 has no interval that lies below 0: a saving nothing shows, drawn at 0 as ≈ CE."""
    return (value < 0) & ~(high < 0)


def plot_cost_benefit(points: pd.DataFrame, colors: dict[str, Any], look: Look, path: Path) -> None:
    """Δ mIoU (pp, 95 % CI whiskers) against extra time (%, 95 % CI whiskers) and extra memory, one point per
    contrast variant; hollow where the cost is the wall clock's, not paired in-run; an unconfirmed saving at 0 in a
    dashed ring, labelled ≈ CE."""
    delta, low, high = (points[column] * 100 for column in DELTA_COLUMNS)
    yerr = ci_whiskers(low, delta, high)
    cost, cost_low, cost_high = (points[column] for column in EXTRA_COST_COLUMNS)
    memory = points["extra_memory_mib"]
    at_zero = {"extra_cost_pct": shown_at_zero(cost, cost_high),
               "extra_memory_mib": shown_at_zero(memory, pd.Series(np.nan, index=memory.index))}
    shown = {"extra_cost_pct": cost.mask(at_zero["extra_cost_pct"], 0.0),
             "extra_memory_mib": memory.mask(at_zero["extra_memory_mib"], 0.0)}
    xerr = {"extra_cost_pct": ci_whiskers(cost_low, shown["extra_cost_pct"], cost_high), "extra_memory_mib": None}
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True, layout="constrained")
    time_ci = "; 95 % CI" if cost_low.notna().any() else ""
    panels = (
        ("extra_cost_pct", "Extra time", f"extra time per training step over CE (%{time_ci})"),
        ("extra_memory_mib", "Extra memory", "extra memory over CE (MiB)"),
    )
    labels = {ax: [] for ax in axes}
    for ax, (column, title, xlabel) in zip(axes, panels):
        for index, (variant, x, y, source, zero) in enumerate(
            zip(points["variant"], shown[column], delta, points["cost_source"], at_zero[column])
        ):
            whiskers = None if xerr[column] is None else xerr[column][:, index : index + 1]
            ax.errorbar(x, y, xerr=whiskers, yerr=yerr[:, index : index + 1], fmt="o", ms=7, capsize=4,
                        color=colors[variant], mfc="white" if source == WALL_CLOCK else colors[variant], mew=1.5)
            if zero:
                ax.scatter([x], [y], s=300, facecolors="none", edgecolors=colors[variant], linestyles="--", lw=1.2)
            labels[ax].append(ax.annotate(variant + (" (≈ CE)" if zero else ""), (x, y), xytext=(9, 3),
                                          textcoords="offset points", fontsize=8, color=colors[variant],
                                          fontweight="bold"))
        ax.axhline(0, color="grey", lw=1, ls="--")
        ax.axvline(0, color="grey", lw=0.8, ls=":")
        ax.set(xlabel=xlabel, title=title)
    left, right = axes[1].get_xlim()
    axes[1].set_xlim(min(left, -MEMORY_AXIS_MIB), max(right, MEMORY_AXIS_MIB))
    delta_ci = ", 95 % CI" if low.notna().any() else ""
    axes[0].set_ylabel(f"Δ mIoU vs CE (pp; mean over seeds{delta_ci})")
    fig.suptitle(f"Each contrast variant's Δ mIoU, and what it costs{look.progress}")
    sources = set(points["cost_source"])
    handles = [
        Line2D([], [], marker="o", ls="none", color="grey", mfc=face, mew=1.5, label=label)
        for source, face, label in ((PROBE, "grey", "paired in-run"), (WALL_CLOCK, "white", NOT_PAIRED))
        if source in sources
    ]
    if any(zero.any() for zero in at_zero.values()):
        handles.append(Line2D([], [], marker="o", ls="none", ms=14, mfc="none", mec="grey", mew=1.2,
                              label="≈ CE: a saving no interval shows, drawn at 0"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), title="cost")
    fig.canvas.draw()  # the layout fixes where each label lands
    for panel_labels in labels.values():
        spread_labels(panel_labels)
    save(fig, path)


def plot_sequential(readings: pd.DataFrame, colors: dict[str, Any], margin: float, look: Look, path: Path) -> None:
    """Each variant's repeated CI (pp) at every look it reached against that look's seeds, with ±margin and 0."""
    variants = list(dict.fromkeys(readings["variant"]))
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    spread = 0.12 * (len(variants) - 1)  # variants side by side at a look, so no interval hides another
    for offset, variant in zip(np.linspace(-spread, spread, len(variants)), variants):
        rows = readings[readings["variant"] == variant]
        mean, low, high = (rows[column] * 100 for column in ("delta_mean", "low", "high"))
        ax.errorbar(rows["seeds"] + offset, mean, yerr=ci_whiskers(low, mean, high), fmt="o-", ms=6, capsize=4,
                    color=colors[variant], label=variant)
        last = rows.iloc[-1]
        ax.annotate(last["decision"], (last["seeds"] + offset, last["high"] * 100), xytext=(0, 4),
                    textcoords="offset points", ha="center", fontsize=8, color=colors[variant])
    for bound in (-margin * 100, margin * 100):
        ax.axhline(bound, color="grey", lw=1, ls=":")
    ax.axhline(0, color="grey", lw=1, ls="--")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="seeds at the look (pairs with the baseline)", ylabel="Δ mIoU vs CE (pp), repeated 95 % CI",
           title=f"Sequential design: repeated confidence intervals at each look{look.progress}")
    ax.legend(title="variant", loc="upper left", bbox_to_anchor=(1.01, 1.0))
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


def plot_curves(curves: pd.DataFrame, colors: dict[str, Any], look: Look, path: Path) -> None:
    """One panel per logged quantity (losses, lr, mIoU) over iterations, hue = variant, mean over seeds."""
    metrics = [metric for metric in CURVE_PANELS if metric in set(curves["metric"])]
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.8 * ncols, 3.6 * nrows + 0.8), sharex=True, squeeze=False, layout="constrained"
    )
    for ax, metric in zip(axes.flat, metrics):
        rows = curves[curves["metric"] == metric]
        scale = 100.0 if metric == "miou" else 1.0
        sns.lineplot(  # errorbar="sd": a band across seeds, cheap and deterministic (no bootstrap)
            rows.assign(value=rows["value"] * scale), x="iter", y="value", hue="variant", palette=colors,
            errorbar="sd", marker="o" if metric == "miou" else None, legend=False, ax=ax,
        )
        name = CURVE_PANELS[metric].format(split=look.split)
        ax.set(title=name, xlabel="iteration", ylabel=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelbottom=True)  # sharex hides them on upper rows; every panel stands alone
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    shown = [variant for variant in colors if variant in set(curves["variant"])]
    handles = [Line2D([], [], color=colors[variant], lw=2) for variant in shown]
    fig.legend(handles, shown, loc="outside lower center", ncols=min(4, len(shown)), title="variant")
    fig.suptitle(f"Training curves{look.progress}")
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
    """(CE baseline, best region-center variant by mean mIoU), each its first finished run with `filename`."""
    baseline = aggregate.loc[aggregate["is_baseline"], "variant"]
    base = first_run_with(frame, baseline.iloc[0], results_dir, filename) if len(baseline) else None
    region = aggregate[aggregate["center_variant"].notna()].sort_values("miou_mean", ascending=False)
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


def plot_tsne(pair: tuple[Shown, Shown], look: Look, path: Path) -> dict[str, str] | None:
    """Side-by-side t-SNE of the evaluated split's region centers, CE vs RegionContrast (paper Fig. 3);
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
    fig.suptitle(f"Region centers of the {look.split_words} images (t-SNE){look.progress}")
    save(fig, path)
    return pair_caption(pair)


def ignore_color(palette: np.ndarray) -> tuple[str, np.ndarray]:
    """Black for ignored pixels, or white where a class is black already (digit scenes' background)."""
    return ("white", np.ones(3)) if (palette == 0).all(axis=1).any() else ("black", np.zeros(3))


def colorize(labels: np.ndarray, palette: np.ndarray, ignore: np.ndarray) -> np.ndarray:
    """[H,W] class ids -> [H,W,3] colours in 0..1; ids with no palette entry (255, ignored) get `ignore`."""
    table = np.tile(ignore, (256, 1))  # [3] -> [256,3]
    table[: len(palette)] = palette
    return table[labels]


def matched_samples(pair: tuple[Shown, Shown]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Baseline samples and the partner's predictions, aligned on the evaluated images both hold."""
    base, other = (np.load(run.folder / VAL_SAMPLES_FILE) for run in pair)
    _, rows, other_rows = np.intersect1d(base["indices"], other["indices"], return_indices=True)
    arrays = {key: base[key][rows] for key in ("images", "labels", "preds", "indices")}
    arrays.update(palette=base["palette"] / 255.0, class_names=base["class_names"])
    return arrays, other["preds"][other_rows]


def plot_qualitative(pair: tuple[Shown, Shown], look: Look, path: Path) -> dict[str, str] | None:
    """Image / CE / RegionContrast / ground truth for the first evaluated images (paper Fig. 4);
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
        axes[row, 0].set_ylabel(f"{look.split} image {samples['indices'][row]}")
    for col, title in enumerate(titles):
        axes[0, col].set_title(title)
    shown = np.unique(np.concatenate([samples["labels"].ravel(), samples["preds"].ravel(), region_preds.ravel()]))
    names = [str(name) for name in samples["class_names"]]
    ignore_patch = Patch(facecolor=ignore, edgecolor="grey", label="ignore")
    class_legend(fig, palette, names, shown, [ignore_patch])  # it leaves out ids that name no class
    fig.suptitle(f"Predictions on the first {look.split_words} images{look.progress}")
    save(fig, path)
    return {**pair_caption(pair), "ignore": ignore_name}


# ---------------------------------------------------------------- all of them


def make_plots(study: Study, out: Path, look: Look) -> dict[str, dict[str, str]]:
    """Draw every plot the study supports; file name -> the values its caption names."""
    frame, aggregate, curves, results_dir = study.runs, study.aggregate, study.curves, study.results_dir
    colors = variant_colors(list(aggregate["variant"]))
    plot_miou(frame, aggregate, colors, look, out / "miou.png")
    plot_throughput_memory(aggregate, memory_label(frame), colors, look, out / "throughput_memory.png")
    made = {"miou.png": {}, "throughput_memory.png": {"memory": memory_label(frame)}}
    points = cost_points(aggregate)
    if len(points):
        plot_cost_benefit(points, colors, look, out / "cost_benefit.png")
        made["cost_benefit.png"] = {"sources": cost_sources_text(frame, points)}
    if len(study.readings):
        margin = study.sweep.equivalence_margin
        plot_sequential(study.readings, colors, margin, look, out / "sequential.png")
        made["sequential.png"] = {"margin": f"{margin * 100:.2f} pp"}
    if bank_points(aggregate)["bank_size"].nunique() >= 2:
        plot_miou_vs_bank(aggregate, look, out / "miou_vs_bank.png")
        made["miou_vs_bank.png"] = {}
    if len(curves):
        plot_curves(curves, colors, look, out / "curves.png")
        made["curves.png"] = {}
    for filename, inputs, plot in (
        ("tsne.png", VAL_CENTERS_FILE, plot_tsne), ("qualitative.png", VAL_SAMPLES_FILE, plot_qualitative)
    ):
        pair = region_partner(frame, aggregate, results_dir, inputs)
        caption = plot(pair, look, out / filename) if pair else None
        if caption is not None:
            made[filename] = caption
    return made


def figure_sections(made: dict[str, dict[str, str]], look: Look) -> list[str]:
    """report.md's lines for the figures `make_plots` drew, in PLOTS order: heading, caption, image."""
    lines, split = [], look.split_words
    for filename, (heading, caption) in PLOTS.items():
        if filename in made:
            text = caption.format(split=split, Split=split.capitalize(), **made[filename])
            lines += ["", f"## {heading}", "", text, "", f"![{heading}]({filename})"]
    return lines
