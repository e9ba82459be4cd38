"""Results folders -> a markdown report, tidy CSVs and seaborn plots.

`python -m harness.report results/<recipe> [--out reports]` writes
reports/<recipe>/. It reads only files under results/, through the contract in
harness/results.py, and imports no torch, so a report can be rebuilt anywhere.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

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

from harness.labels import IGNORE_INDEX
from harness.results import (
    METRIC_FIELDS,
    METRICS_FILE,
    VAL_CENTERS_FILE,
    VAL_SAMPLES_FILE,
    publish,
    read_metrics,
    read_summary,
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


def signed(value: float) -> str:
    """'+1.23'; a difference that rounds to zero prints as '+0.00', never '-0.00'."""
    return f"{round(value, 2) + 0.0:+.2f}"  # + 0.0 turns -0.0 into 0.0


# (header, results.csv column, cell formatter); formatted (numeric) columns are right-aligned.
TABLE_COLUMNS = (
    ("variant", "variant", str),
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
DERIVED_COLUMNS = {
    "bank_size_text", "val_miou_pct", "delta_miou_pp", "peak_memory_mib", "bank_mib", "paper_ref", "status_text",
}
# file -> (heading, one-line caption); captions are filled per report.
PLOTS = {
    "miou.png": (
        "mIoU per variant",
        "Validation mIoU of each variant (bars); black diamonds: the paper's number for the row a "
        "variant reproduces; dashed line: the CE baseline.",
    ),
    "miou_vs_bank.png": (
        "mIoU vs memory bank size",
        "Validation mIoU of the RegionContrast variants against their region memory bank size "
        "(the paper's Table 3); bank size 0 contrasts within the batch only.",
    ),
    "throughput_memory.png": (
        "Throughput and memory",
        "Training throughput (images/s) and peak memory per variant (memory kind: {memory}).",
    ),
    "curves.png": (
        "Training curves",
        "Losses and learning rate at each logged iteration, and validation mIoU at each evaluation.",
    ),
    "tsne.png": (
        "Region centers (t-SNE)",
        "t-SNE of the validation region centers (one point per class per image), CE baseline `{ce}` "
        "vs RegionContrast `{region}`, coloured by class (the paper's Fig. 3).",
    ),
    "qualitative.png": (
        "Qualitative results",
        "The first validation images: input, CE `{ce}`, RegionContrast `{region}`, ground truth; "
        "ignored pixels are {ignore} (the paper's Fig. 4).",
    ),
}


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


def baseline_name(frame: pd.DataFrame) -> str | None:
    """The recipe's CE baseline: the contrast-free variant named 'ce', else the first one by name."""
    candidates = sorted(frame.loc[frame["contrast_kind"] == "none", "variant"])
    if "ce" in candidates:
        return "ce"
    return candidates[0] if candidates else None


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


def add_derived(frame: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    """Columns in the units the report shows: %, percentage points, MiB."""
    frame["bank_size_text"] = [bank_size_text(*pair) for pair in zip(frame["contrast_kind"], frame["bank_size"])]
    frame["val_miou_pct"] = frame["val_miou"] * 100
    base = frame.loc[frame["variant"] == baseline, "val_miou_pct"]
    frame["delta_miou_pp"] = frame["val_miou_pct"] - (base.iloc[0] if len(base) else np.nan)
    frame["is_baseline"] = frame["variant"] == baseline
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


def results_frame(summaries: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per variant, baseline first; metrics of unfinished or failed runs blanked."""
    frame = pd.DataFrame([flat_scalars(summary) for summary in summaries])
    needed = [*METRIC_FIELDS, "error", "paper_table", "paper_row", "paper_miou", "memory_kind", "bank_size"]
    needed += [column for _, column, _ in TABLE_COLUMNS if column not in DERIVED_COLUMNS]
    frame = frame.reindex(columns=list(dict.fromkeys([*frame.columns, *needed])))
    unfinished = frame["status"] != "ok"
    frame[list(METRIC_FIELDS)] = frame[list(METRIC_FIELDS)].astype(float).mask(unfinished)
    baseline = baseline_name(frame)
    frame = frame.assign(order=frame["variant"] != baseline).sort_values(["order", "variant"])
    return add_derived(frame.drop(columns="order").reset_index(drop=True), baseline)


def curves_frame(results_dir: Path, variants: list[str]) -> pd.DataFrame:
    """Tidy curves (variant, iter, metric, value) from every variant's metrics.jsonl."""
    rows = []
    for variant in variants:
        path = results_dir / variant / METRICS_FILE
        for record in read_metrics(path) if path.exists() else []:
            rows += [
                (variant, record["iter"], metric, float(value))
                for metric, value in record.items()
                if metric not in ("kind", "iter") and isinstance(value, (int, float))
            ]
    return pd.DataFrame(rows, columns=["variant", "iter", "metric", "value"])


def per_class_frame(summaries: list[dict[str, Any]]) -> pd.DataFrame:
    """Per-class IoU (%) with classes as rows and finished variants as columns; null -> NaN."""
    columns = {
        summary["variant"]: pd.Series(
            [np.nan if iou is None else iou * 100 for iou in summary["per_class_iou"]],
            index=summary.get("class_names") or range(len(summary["per_class_iou"])),
            dtype=float,
        )
        for summary in summaries
        if summary.get("status") == "ok" and summary.get("per_class_iou")
    }
    return pd.DataFrame(columns)


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
    """The variants table; the paper's columns only when some variant reproduces a paper row."""
    has_paper = frame["paper_miou"].notna().any()
    spec = [entry for entry in TABLE_COLUMNS if has_paper or entry[1] not in PAPER_COLUMNS]
    cells = pd.DataFrame({
        header: [format_cell(value, formatter) for value in frame[column]]
        for header, column, formatter in spec
    })
    return markdown_table(cells, {header for header, _, formatter in spec if formatter is not str})


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


# ---------------------------------------------------------------- plots


def variant_colors(variants: list[str]) -> dict[str, Any]:
    """One colour per variant, the same in every plot."""
    return dict(zip(variants, sns.color_palette("tab10", len(variants))))


def save(fig: plt.Figure, path: Path) -> None:
    """Write a figure as PNG (atomically) and free it."""
    publish(path, lambda scratch: fig.savefig(scratch, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


def label_bars(ax: plt.Axes, frame: pd.DataFrame, column: str, template: str) -> None:
    """Value above each bar, or the status where a variant has no value."""
    for x, (value, status) in enumerate(zip(frame[column], frame["status"])):
        text, y = (status, 0.0) if pd.isna(value) else (template.format(value), value)
        ax.annotate(text, (x, y), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=9)


def headroom(ax: plt.Axes, values: pd.Series | pd.DataFrame) -> None:
    """Y range from 0 to a little above the largest value, so bar labels fit."""
    top = np.nanmax(np.asarray(values, dtype=float), initial=0.0)
    ax.set_ylim(0, 1.15 * top if top > 0 else 1.0)


def variant_bars(ax: plt.Axes, frame: pd.DataFrame, column: str, colors: dict[str, Any]) -> None:
    """Bars of one column per variant (variants without a value keep their slot), names rotated."""
    sns.barplot(
        frame, x="variant", y=column, hue="variant", order=list(frame["variant"]),
        palette=colors, legend=False, ax=ax,
    )
    ax.tick_params(axis="x", labelrotation=30)
    plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
    ax.set_xlabel("variant")


def plot_miou(frame: pd.DataFrame, colors: dict[str, Any], path: Path) -> None:
    """mIoU per variant as bars, the paper's numbers as markers, the CE baseline as a line."""
    fig, ax = plt.subplots(figsize=(2.0 + 1.2 * len(frame), 4.5))
    variant_bars(ax, frame, "val_miou_pct", colors)
    label_bars(ax, frame, "val_miou_pct", "{:.1f}")
    headroom(ax, frame[["val_miou_pct", "paper_miou"]])
    if frame["paper_miou"].notna().any():
        ax.scatter(frame.index, frame["paper_miou"], marker="D", s=60, color="black", zorder=3, label="paper")
    baseline = frame.loc[frame["is_baseline"], "val_miou_pct"].dropna()
    if len(baseline):
        ax.axhline(baseline.iloc[0], ls="--", color="grey", lw=1, label="CE baseline (ours)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a bar
    ax.set(ylabel="val mIoU (%)", title="Validation mIoU per variant")
    save(fig, path)


def bank_points(frame: pd.DataFrame) -> pd.DataFrame:
    """Finished RegionContrast variants with a known bank size (0 = in-batch only)."""
    region = frame[(frame["contrast_kind"] == "region") & (frame["status"] == "ok") & frame["bank_size"].notna()]
    return region.sort_values("bank_size")


def plot_miou_vs_bank(frame: pd.DataFrame, path: Path) -> None:
    """mIoU against region bank size (paper Table 3), with the paper's curve when known."""
    points = bank_points(frame)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    # estimator=None: variants sharing a bank size show as separate points, never silently averaged
    sns.lineplot(points, x="bank_size", y="val_miou_pct", marker="o", estimator=None, label="ours", ax=ax)
    if points["paper_miou"].notna().any():
        paper = points.dropna(subset="paper_miou")
        sns.lineplot(paper, x="bank_size", y="paper_miou", marker="D", color="black", label="paper", ax=ax)
    baseline = frame[frame["is_baseline"]]
    for column, style, source in (("val_miou_pct", "--", "ours"), ("paper_miou", ":", "paper")):
        if len(baseline) and pd.notna(baseline[column].iloc[0]):
            ax.axhline(baseline[column].iloc[0], ls=style, color="grey", lw=1, label=f"CE baseline ({source})")
    ax.legend()
    ax.set(
        xlabel="region memory bank size (entries; 0 = in-batch contrast only)",
        ylabel="val mIoU (%)", title="mIoU vs memory bank size (paper Table 3)",
    )
    save(fig, path)


def plot_throughput_memory(frame: pd.DataFrame, colors: dict[str, Any], path: Path) -> None:
    """Two panels: training images/s and peak memory per variant."""
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(4.0 + 2.2 * len(frame), 4.5))
    for ax, column, template in ((speed, "train_images_per_s", "{:.1f}"), (memory, "peak_memory_mib", "{:.0f}")):
        variant_bars(ax, frame, column, colors)
        label_bars(ax, frame, column, template)
        headroom(ax, frame[column])
    speed.set(ylabel="training throughput (images/s)", title="Training throughput")
    memory.set(ylabel=f"peak memory (MiB, {memory_label(frame)})", title="Peak memory")
    fig.tight_layout()
    save(fig, path)


def plot_curves(curves: pd.DataFrame, colors: dict[str, Any], path: Path) -> None:
    """One panel per logged quantity (losses, lr, val mIoU) over iterations, hue = variant."""
    metrics = [metric for metric in CURVE_PANELS if metric in set(curves["metric"])]
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.8 * ncols, 3.6 * nrows + 0.8), sharex=True, squeeze=False, layout="constrained"
    )
    for ax, metric in zip(axes.flat, metrics):
        rows = curves[curves["metric"] == metric]
        scale = 100.0 if metric == "val_miou" else 1.0
        sns.lineplot(
            rows.assign(value=rows["value"] * scale), x="iter", y="value", hue="variant", palette=colors,
            marker="o" if metric == "val_miou" else None, legend=False, ax=ax,
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


def region_partner(frame: pd.DataFrame, results_dir: Path, filename: str) -> tuple[str, str] | None:
    """(CE baseline, best finished RegionContrast variant), both having `filename`; None otherwise."""
    def has(variant: str) -> bool:
        return (results_dir / variant / filename).exists()

    baseline = frame.loc[frame["is_baseline"], "variant"]
    region = frame[(frame["contrast_kind"] == "region") & (frame["status"] == "ok")]
    with_file = region["variant"].map(has).astype(bool)  # bool even when empty: else pandas picks columns
    region = region.loc[with_file].sort_values("val_miou_pct", ascending=False)
    if not len(baseline) or not has(baseline.iloc[0]) or not len(region):
        return None
    return baseline.iloc[0], region["variant"].iloc[0]


def class_look(results_dir: Path, variants: tuple[str, str], num_classes: int) -> tuple[np.ndarray, list[str]]:
    """The dataset palette [N,3] in 0..1 and class names from val_samples.npz; generic ones without it."""
    for variant in variants:
        path = results_dir / variant / VAL_SAMPLES_FILE
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


def plot_tsne(results_dir: Path, pair: tuple[str, str], path: Path) -> dict[str, str] | None:
    """Side-by-side t-SNE of val region centers, CE vs RegionContrast (paper Fig. 3);
    its caption's values, or None with too few centers."""
    loaded = [load_centers(results_dir / variant / VAL_CENTERS_FILE) for variant in pair]
    if min(len(centers) for centers, _ in loaded) < TSNE_MIN_POINTS:
        return None
    num_classes = int(max(labels.max() for _, labels in loaded)) + 1
    palette, names = class_look(results_dir, pair, num_classes)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6), layout="constrained")
    for ax, variant, title, (centers, labels) in zip(axes, pair, ("(a) CE", "(b) RegionContrast"), loaded):
        points = embed(centers)
        ax.scatter(points[:, 0], points[:, 1], c=palette[labels], s=18, edgecolors="none")
        ax.set(title=f"{title}: {variant}", xlabel="t-SNE dimension 1 (a.u.)", ylabel="t-SNE dimension 2 (a.u.)")
        ax.tick_params(labelleft=False, labelbottom=False)
    present = np.unique(np.concatenate([labels for _, labels in loaded]))
    class_legend(fig, palette, names, present, [])
    save(fig, path)
    return {"ce": pair[0], "region": pair[1]}


def ignore_color(palette: np.ndarray) -> tuple[str, np.ndarray]:
    """Black for ignored pixels, or white where a class is black already (digit scenes' background)."""
    return ("white", np.ones(3)) if (palette == 0).all(axis=1).any() else ("black", np.zeros(3))


def colorize(labels: np.ndarray, palette: np.ndarray, ignore: np.ndarray) -> np.ndarray:
    """[H,W] class ids -> [H,W,3] colours in 0..1; ignore (IGNORE_INDEX) and unknown ids get `ignore`."""
    table = np.tile(ignore, (256, 1))  # [3] -> [256,3]
    table[: min(len(palette), IGNORE_INDEX)] = palette[:IGNORE_INDEX]
    return table[labels]


def matched_samples(results_dir: Path, pair: tuple[str, str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Baseline samples and the partner's predictions, aligned on the val indices both hold."""
    base, other = (np.load(results_dir / variant / VAL_SAMPLES_FILE) for variant in pair)
    _, rows, other_rows = np.intersect1d(base["indices"], other["indices"], return_indices=True)
    arrays = {key: base[key][rows] for key in ("images", "labels", "preds", "indices")}
    arrays.update(palette=base["palette"] / 255.0, class_names=base["class_names"])
    return arrays, other["preds"][other_rows]


def plot_qualitative(results_dir: Path, pair: tuple[str, str], path: Path) -> dict[str, str] | None:
    """Image / CE / RegionContrast / ground truth for the first val images (paper Fig. 4);
    its caption's values, or None without common images."""
    samples, region_preds = matched_samples(results_dir, pair)
    count = len(samples["indices"])
    if not count:
        return None
    titles = ("image", f"CE: {pair[0]}", f"RegionContrast: {pair[1]}", "ground truth")
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
    return {"ce": pair[0], "region": pair[1], "ignore": ignore_name}


# ---------------------------------------------------------------- assembling the report


def make_plots(
    frame: pd.DataFrame, curves: pd.DataFrame, results_dir: Path, out: Path
) -> dict[str, dict[str, str]]:
    """Draw every plot the data supports; file name -> the values its caption names."""
    colors = variant_colors(list(frame["variant"]))
    plot_miou(frame, colors, out / "miou.png")
    plot_throughput_memory(frame, colors, out / "throughput_memory.png")
    made = {"miou.png": {}, "throughput_memory.png": {"memory": memory_label(frame)}}
    if bank_points(frame)["bank_size"].nunique() >= 2:
        plot_miou_vs_bank(frame, out / "miou_vs_bank.png")
        made["miou_vs_bank.png"] = {}
    if len(curves):
        plot_curves(curves, colors, out / "curves.png")
        made["curves.png"] = {}
    for filename, inputs, plot in (
        ("tsne.png", VAL_CENTERS_FILE, plot_tsne), ("qualitative.png", VAL_SAMPLES_FILE, plot_qualitative)
    ):
        pair = region_partner(frame, results_dir, inputs)
        caption = plot(results_dir, pair, out / filename) if pair else None
        if caption is not None:
            made[filename] = caption
    return made


def report_markdown(
    recipe: str, results_dir: Path, frame: pd.DataFrame, plots: dict[str, dict[str, str]], per_class: pd.DataFrame
) -> str:
    """The whole report.md: header, comparison table, plots in PLOTS order, per-class IoU."""
    baseline = frame.loc[frame["is_baseline"], "variant"]
    lines = [
        f"# Report: {recipe}",
        "",
        f"From `{results_dir}`: {len(frame)} variants ({status_counts(frame)}); "
        f"CE baseline: {f'`{baseline.iloc[0]}`' if len(baseline) else 'none'}.",
        "",
        comparison_table(frame),
        "",
        "Δ mIoU is in percentage points against the CE baseline; "
        f"memory is in MiB (2^20 bytes; memory kind: {memory_label(frame)}).",
    ]
    for filename, (heading, caption) in PLOTS.items():
        if filename in plots:
            lines += ["", f"## {heading}", "", caption.format(**plots[filename]), "", f"![{heading}]({filename})"]
    if len(per_class.columns):
        lines += ["", "## Per-class IoU (%)", "", per_class_table(per_class)]
    return "\n".join(lines) + "\n"


def build_report(results_dir: Path, reports_root: Path = Path("reports")) -> Path:
    """Write reports/<recipe>/ (report.md, results.csv, curves.csv, plots); returns report.md's path."""
    results_dir = Path(results_dir)
    recipe = results_dir.resolve().name  # resolved, so that "." or a trailing slash still names it
    out = Path(reports_root) / recipe
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):  # a plot the data no longer supports must not linger
        stale.unlink()
    summaries = [read_summary(folder) for folder in run_folders(results_dir)]
    if not summaries:
        raise FileNotFoundError(f"no variant folders under {results_dir}")
    frame = results_frame(summaries)
    curves = curves_frame(results_dir, list(frame["variant"]))
    write_text(out / "results.csv", frame.convert_dtypes().to_csv(index=False))  # integral counts print as ints
    write_text(out / "curves.csv", curves.to_csv(index=False))
    with sns.axes_style("whitegrid"):  # a context, not set_theme: the engine's process keeps its style
        plots = make_plots(frame, curves, results_dir, out)
    report = out / "report.md"
    write_text(report, report_markdown(recipe, results_dir, frame, plots, per_class_frame(summaries)))
    return report


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m harness.report results/<recipe> [--out reports]."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="results/<recipe>, one sub-folder per variant")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="reports root (default: reports)")
    args = parser.parse_args(argv)
    print(build_report(args.results_dir, args.out))


if __name__ == "__main__":
    main()
