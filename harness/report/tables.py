"""Tidy frames of a study (one row per run, one per variant, curves, per-class IoU) and the markdown of report.md."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from harness.report.decisions import baseline_values, comparison_frame, is_sequential, sequential_design
from harness.report.design import ALPHA, POWER, SPENDING_NAMES
from harness.report.stats import (
    PROBE,
    REFERENCE,
    TOST_CONFIDENCE,
    WALL_CLOCK,
    cost_stats,
    paired_costs,
    sign_flip_floor,
    t_interval,
)
from harness.results import (
    METRICS_FILE,
    DamagedFile,
    SweepRecord,
    contrast_free,
    finished_only_fields,
    read_metrics,
    study_runs,
)

if TYPE_CHECKING:
    from harness.report.study import Study

MIB = 2**20
HOUR = 3600.0
ERROR_CHARS = 80
# Lists or dicts in summary.json, possibly null, and the traceback: never a column of their own.
NON_SCALAR_FIELDS = {"per_class_iou", "class_names", "versions", "paper", "traceback"}
# [low, high] lists in summary.json, flattened as <field>_low and <field>_high.
INTERVAL_FIELDS = {"cost_ratio_ci95"}
MEMORY_KINDS = {"cuda_max_allocated": "GPU max allocated", "rss": "process RSS"}
DEFAULT_SWEEP = SweepRecord()  # a study without sweep.json: fixed design, sweep's default target and margin
HEADLINE_REPORT = "reports/digit_scenes_headline/report.md"  # where a one-seed report sends its reader
# The numbers only a finished run has (blank for any other run): the contract's numeric metric fields, an interval
# as its two ends. Older summaries lack some (the cost probe's, the training-only peak): their columns may be blank.
RUN_METRICS = [
    column for name in finished_only_fields(numeric=True)
    for column in ([f"{name}_low", f"{name}_high"] if name in INTERVAL_FIELDS else [name])
]
# What a variant is: the same for all its seeds, so aggregate.csv takes the first known value.
CONFIG_FIELDS = ["contrast_kind", "center_variant", "bank_size", "paper_miou"]
# Run fields compared with the baseline's run of the same seed (Δ mIoU, extra time, extra memory).
PAIRED_FIELDS = ("miou", "s_per_iter", "train_peak_memory_bytes")
# Run fields averaged over a variant's finished seeds, as aggregate.csv's <field>_mean (s_per_iter_mean: the mean
# over seeds of each run's median step).
MEAN_FIELDS = (
    "s_per_iter", "contrast_ms_per_iter", "train_peak_memory_bytes", "eval_peak_memory_bytes",
    "peak_memory_bytes", "train_images_per_s", "bank_fill", "train_hours",
)


def signed(value: float, digits: int = 2) -> str:
    """'+1.23'; a difference that rounds to zero prints as '+0.00', never '-0.00'."""
    return f"{round(value, digits) + 0.0:+.{digits}f}"  # + 0.0 turns -0.0 into 0.0


def extra_memory_text(mib: float) -> str:
    """Extra memory over CE in MiB, '+5'; below 0 it reads '≈ CE': no interval shows a saving, and a contrast term
    only adds memory, so a negative difference is the measure's noise."""
    return "≈ CE" if mib < 0 else signed(mib, 0)


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
    ("{split} mIoU (%)", "miou_pct", "{:.2f}".format),
    ("Δ mIoU vs CE (pp)", "delta_miou_pp", signed),
    ("paper mIoU (%)", "paper_miou", "{:.1f}".format),
    ("paper row", "paper_ref", str),
    ("images/s", "train_images_per_s", "{:.1f}".format),
    ("median s/iter", "s_per_iter", "{:.3f}".format),
    ("cost ratio [95 % CI]", "cost_ratio_text", str),
    ("peak memory (MiB)", "peak_memory_mib", "{:.0f}".format),
    ("bank (MiB)", "bank_mib", "{:.2f}".format),
    ("status", "status_text", str),
)
PAPER_COLUMNS = ("paper_miou", "paper_ref")
DELTA_COLUMNS = ("delta_mean", "delta_ci95_low", "delta_ci95_high")
EXTRA_COST_COLUMNS = ("extra_cost_pct", "extra_cost_pct_ci95_low", "extra_cost_pct_ci95_high")
EXTRA_COST_HEADER = "extra time vs CE (%) [95 % CI]"
NOT_PAIRED = "wall clock, not paired in-run"  # marks a cost from separate runs' clocks, in tables and captions
# (header, aggregate.csv column, divisor to the shown unit, cell formatter), after the probe's columns
COST_COLUMNS = (
    ("contrast ms/iter", "contrast_ms_per_iter_mean", 1, "{:.1f}".format),
    ("train memory (MiB)", "train_peak_memory_bytes_mean", MIB, "{:.0f}".format),
    ("extra memory (MiB)", "extra_memory_bytes", MIB, extra_memory_text),
    ("bank fill", "bank_fill_mean", 1, "{:.0%}".format),
)
DERIVED_COLUMNS = {
    "bank_size_text", "miou_pct", "delta_miou_pp", "peak_memory_mib", "bank_mib", "paper_ref", "status_text",
    "cost_ratio_text",
}


# ---------------------------------------------------------------- tidy tables


def flat_scalars(summary: dict[str, Any]) -> dict[str, Any]:
    """Scalars of a summary, nested dicts flattened as parent_child, intervals as <key>_low and <key>_high;
    other lists (and their nulls) left out."""
    flat: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            flat.update({f"{key}_{child}": item for child, item in value.items()})
        elif key in INTERVAL_FIELDS and isinstance(value, (list, tuple)):
            flat[f"{key}_low"], flat[f"{key}_high"] = value
        elif key not in NON_SCALAR_FIELDS and not isinstance(value, (list, tuple)):
            flat[key] = value
    return flat


def baseline_choice(frame: pd.DataFrame, named: str | None) -> tuple[str | None, str]:
    """The recipe's CE baseline and why: the variant sweep.json names, else the only contrast-free
    variant, else the contrast-free one called 'ce'; None (and the reason) when none qualifies."""
    if named in set(frame["variant"]):
        return named, "named by `sweep.baseline`"
    candidates = sorted(set(frame.loc[frame["contrast_kind"].map(contrast_free), "variant"]))
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


def bank_size_text(size: float) -> str | None:
    """Bank size as the table shows it: slots per class, as the kind's spec resolved them in a finished run's
    summary; blank where no summary says (a run without a bank, or not finished)."""
    return f"{size:.0f}" if pd.notna(size) else None


def add_derived(frame: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    """Columns in the units the report shows: %, percentage points, MiB."""
    frame["bank_size_text"] = [bank_size_text(size) for size in frame["bank_size"]]
    frame["miou_pct"] = frame["miou"] * 100
    frame["is_baseline"] = frame["variant"] == baseline
    frame["delta_miou_pp"] = (frame["miou"] - baseline_values(frame, "miou")) * 100
    frame["peak_memory_mib"] = frame["peak_memory_bytes"] / MIB
    frame["bank_mib"] = frame["bank_bytes"] / MIB
    # the planning view's unit of cost: the mean step counts the stalls a run pays for; older runs have the median only
    frame["train_hours"] = frame["s_per_iter_mean"].fillna(frame["s_per_iter"]) * frame["iterations"] / HOUR
    frame["paper_ref"] = [
        f"{table}: {row}" if pd.notna(miou) else None
        for table, row, miou in zip(frame["paper_table"], frame["paper_row"], frame["paper_miou"])
    ]
    frame["status_text"] = list(map(status_text, frame["status"], frame["error"], frame["collapsed"]))
    frame["cost_ratio_text"] = list(map(ratio_text, frame["cost_ratio"], frame["cost_ratio_ci95_low"],
                                        frame["cost_ratio_ci95_high"]))
    return frame


def status_text(status: str, error: Any, collapsed: Any) -> str:
    """A run's status as the runs table shows it: 'failed: <error>', 'collapsed: <why>' for a finished run whose
    predictions say it learned nothing, else the status."""
    if shorten(collapsed):
        return f"collapsed: {shorten(collapsed)}"
    return f"{status}: {shorten(error)}" if shorten(error) else status


def study_summaries(results_dir: Path) -> list[dict[str, Any]]:
    """Every run's summary (its stand-in where it has none, or an unreadable one) as a mapping, with its folder
    relative to `results_dir` as run_folder."""
    runs = study_runs(results_dir)
    if not runs:
        raise FileNotFoundError(f"no variant folders under {results_dir}")
    return [{**run.model_dump(), "run_folder": folder.relative_to(results_dir).as_posix()} for folder, run in runs]


def results_frame(summaries: list[dict[str, Any]], named_baseline: str | None = None) -> pd.DataFrame:
    """One row per run, the baseline's first, then by variant and seed; metrics of unfinished or failed
    runs blanked."""
    frame = pd.DataFrame([flat_scalars(summary) for summary in summaries])
    needed = [*RUN_METRICS, "seed", "run_folder", "error", "paper_table", "paper_row", "paper_miou", "memory_kind",
              "iterations", "device", "contrast_extra_memory_kind", "collapsed", "cost_probe_skipped",
              "s_per_iter_mean", "backbone_weights"]
    needed += [*CONFIG_FIELDS, *(column for _, column, _ in TABLE_COLUMNS if column not in DERIVED_COLUMNS)]
    frame = frame.reindex(columns=list(dict.fromkeys([*frame.columns, *needed])))
    unfinished = frame["status"] != "ok"
    frame[RUN_METRICS] = frame[RUN_METRICS].astype(float).mask(unfinished)
    baseline, _ = baseline_choice(frame, named_baseline)
    frame = frame.assign(order=frame["variant"] != baseline).sort_values(["order", "variant", "seed"])
    return add_derived(frame.drop(columns="order").reset_index(drop=True), baseline)


def variant_stats(runs: pd.DataFrame) -> dict[str, Any]:
    """aggregate.csv's numbers of one variant's own runs; `runs` carry base_<field>, the baseline's run of the same
    seed, for the costs."""
    ok = runs[runs["status"] == "ok"]
    miou_low, miou_high = t_interval(ok["miou"])
    is_baseline = bool(runs["is_baseline"].iloc[0])
    return {
        "variant": runs["variant"].iloc[0], "is_baseline": is_baseline, "runs": status_counts(runs),
        "n_seeds": len(ok), "collapsed_runs": int(ok["collapsed"].notna().sum()),
        # a variant with no number says why: its runs' status, e.g. the failure
        "status_texts": "; ".join(dict.fromkeys(runs["status_text"])),
        "miou_mean": ok["miou"].mean(), "miou_std": ok["miou"].std(ddof=1),
        "miou_ci95_low": miou_low, "miou_ci95_high": miou_high,
        **paired_costs(ok), **cost_stats(ok, is_baseline),
        **{f"{field}_mean": ok[field].mean() for field in MEAN_FIELDS},
    }


def aggregate_frame(frame: pd.DataFrame, sweep: SweepRecord = DEFAULT_SWEEP, unfinished: str = "") -> pd.DataFrame:
    """One row per variant, in the runs' order: means over finished seeds, the paired comparison with the baseline
    (mIoU, Δ, its SD, MDE and margin as fractions, like miou) and the design's verdict (harness.report.decisions);
    `unfinished` ('25 of 50 runs', '' when every run is in) makes a fixed study's verdicts interim."""
    runs = frame.assign(  # runs that predate the training-only peak: their overall peak is the closest measure
        train_peak_memory_bytes=frame["train_peak_memory_bytes"].fillna(frame["peak_memory_bytes"])
    )
    runs = runs.assign(**{f"base_{field}": baseline_values(runs, field) for field in PAIRED_FIELDS})
    groups = runs.groupby("variant", sort=False)
    own = pd.DataFrame([variant_stats(group) for _, group in groups])
    compared = comparison_frame(runs, own, sweep, unfinished)
    head = ["is_baseline", "runs", "n_seeds", "collapsed_runs", "miou_mean", "miou_std", "miou_ci95_low",
            "miou_ci95_high"]
    numbers = pd.concat([own[head], compared, own.drop(columns=["variant", "status_texts", *head])], axis=1)
    return pd.concat([groups[CONFIG_FIELDS].first().reset_index(), numbers], axis=1)


def curves_frame(results_dir: Path, frame: pd.DataFrame) -> tuple[pd.DataFrame, list[DamagedFile]]:
    """Tidy curves (variant, seed, iter, metric, value) from every run's metrics.jsonl; the logs that could not be
    read, whose runs have no curve."""
    rows, damaged = [], []
    for variant, seed, folder in zip(frame["variant"], frame["seed"], frame["run_folder"]):
        path = results_dir / folder / METRICS_FILE
        try:
            records = read_metrics(path) if path.exists() else []
        except DamagedFile as damage:
            damaged.append(damage)
            continue
        rows += [(variant, seed, record.iter, metric, value) for record in records
                 for metric, value in record.numbers().items()]
    return pd.DataFrame(rows, columns=["variant", "seed", "iter", "metric", "value"]), damaged


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


def formatted(values: pd.Series, formatter: Callable[[Any], str], factor: float = 1) -> list[str]:
    """A column's cells: each value times `factor` (100: a fraction in pp), formatted; blank where missing."""
    return [format_cell(value * factor, formatter) for value in values]


def markdown_table(cells: pd.DataFrame, right_aligned: set[str]) -> str:
    """A GitHub markdown table of string cells (no tabulate dependency)."""
    escaped = cells.map(lambda text: text.replace("|", "\\|"))
    rule = ["---:" if column in right_aligned else "---" for column in cells.columns]
    lines = [list(cells.columns), rule, *escaped.itertuples(index=False)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def probed(frame: pd.DataFrame) -> pd.DataFrame:
    """The finished runs that measured their cost with the in-run probe."""
    return frame[(frame["status"] == "ok") & frame["cost_ratio"].notna()]


def comparison_table(frame: pd.DataFrame) -> str:
    """The runs table; the paper's columns only when some variant reproduces a paper row, the cost ratio only
    when some run has a probe; the score named for the split it was scored on."""
    has_paper, has_probe = frame["paper_miou"].notna().any(), len(probed(frame)) > 0
    left_out = (() if has_paper else PAPER_COLUMNS) + (() if has_probe else ("cost_ratio_text",))
    spec = [entry for entry in TABLE_COLUMNS if entry[1] not in left_out]
    split = split_of(frame)
    cells = pd.DataFrame({
        header.format(split=split): [format_cell(value, formatter) for value in frame[column]]
        for header, column, formatter in spec
    })
    return markdown_table(cells, {header.format(split=split) for header, _, formatter in spec if formatter is not str})


def split_of(frame: pd.DataFrame) -> str:
    """The split the finished runs were scored on: 'test', 'val', or 'val / test' for a study that mixes them
    (summaries that predate the field were scored on val)."""
    scored = frame.loc[frame["status"] == "ok", "eval_split"].fillna("val")
    return " / ".join(sorted(scored.unique())) or "val"


def split_words(split: str) -> str:
    """A split in a caption's words: 'validation' for val."""
    return split.replace("val", "validation")


def mean_std_text(mean: float, std: float) -> str:
    """'52.31 ± 1.20', or the mean alone for one seed."""
    return format_cell(mean, "{:.2f}".format) + format_cell(std, " ± {:.2f}".format)


def delta_text(mean: float, low: float, high: float) -> str:
    """'+2.10 [+0.50, +3.70]', or the Δ alone without a CI."""
    return format_cell(mean, signed) + ("" if pd.isna(low) else f" [{signed(low)}, {signed(high)}]")


def ratio_text(ratio: float, low: float, high: float) -> str:
    """A run's cost ratio with its interval, '1.12 [1.08, 1.15]'; blank without a probe."""
    return format_cell(ratio, "{:.2f}".format) + ("" if pd.isna(low) else f" [{low:.2f}, {high:.2f}]")


def extra_cost_text(pct: float, low: float, high: float) -> str:
    """Extra time over CE in %: '+12.3 [+8.1, +15.0]'; '≈ CE [-3.2, +4.1]' where the interval holds 0, so that
    no saving (or cost) is read into noise. Without an interval, '+2.1 (no CI)', but a saving reads
    '≈ CE (no CI)': a contrast term adds work, so an unconfirmed saving is the clock's noise."""
    if pd.isna(pct):
        return ""
    if pd.isna(low):
        return f"{signed(pct, 1)} (no CI)" if pct >= 0 else "≈ CE (no CI)"
    interval = f"[{signed(low, 1)}, {signed(high, 1)}]"
    return f"≈ CE {interval}" if low <= 0 <= high else f"{signed(pct, 1)} {interval}"


def contrast_ms_text(ms: float, low: float, high: float) -> str:
    """The probe's contrast ms/step; '≈ 0' where the extra time's interval (low, high in %) holds 0, as a
    difference the ratio cannot tell from none is no saving either."""
    if pd.isna(ms):
        return ""
    return "≈ 0" if low <= 0 <= high else f"{ms:.1f}"


def cost_source_text(source: str, seeds: float, n_seeds: float) -> str:
    """Where a variant's cost comes from: 'paired in-run' (with the share of seeds probed when not all were),
    the wall-clock fallback's mark, or 'reference' for the baseline."""
    if source == PROBE:
        return "paired in-run" + (f" ({seeds:.0f} of {n_seeds:.0f} seeds)" if seeds < n_seeds else "")
    return {WALL_CLOCK: NOT_PAIRED, REFERENCE: "reference"}.get(source, "")


def p_text(p_value: float, digits: int = 3) -> str:
    """A p-value with three decimals (four show a sign-flip p's 1/32 steps exactly); below 0.001 only its bound."""
    return "<0.001" if p_value < 0.001 else f"{p_value:.{digits}f}"


def family_shown(aggregate: pd.DataFrame) -> bool:
    """Whether the fixed design's family adjusted any p-value of the study (none in a sequential, interim or
    one-seed study)."""
    return bool(aggregate["p_family"].notna().any())


def variant_table(aggregate: pd.DataFrame) -> str:
    """Per variant: mean ± std over seeds, Δ with its CI and p, the design's adjusted p where it has one, the
    verdict, and the costs."""
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
    if family_shown(aggregate):
        cells["p (family)"] = aggregate["p_family"].map(lambda value: format_cell(value, p_text))
        cells["TOST p (family)"] = aggregate["p_tost_family"].map(lambda value: format_cell(value, p_text))
    cells["p (sign-flip)"] = aggregate["p_sign_flip"].map(lambda value: format_cell(value, lambda p: p_text(p, 4)))
    cells["verdict"] = aggregate["verdict"]
    cells["median s/iter"] = formatted(aggregate["s_per_iter_mean"], "{:.3f}".format)
    cells[EXTRA_COST_HEADER] = list(map(extra_cost_text, *(aggregate[column] for column in EXTRA_COST_COLUMNS)))
    cells["cost measured"] = list(map(cost_source_text, aggregate["cost_source"], aggregate["cost_seeds"],
                                      aggregate["n_seeds"]))
    if (aggregate["cost_source"] == PROBE).any():
        interval = (aggregate[column] for column in EXTRA_COST_COLUMNS[1:])
        cells["contrast ms/step"] = list(map(contrast_ms_text, aggregate["contrast_ms_per_step_mean"], *interval))
    for header, column, scale, formatter in COST_COLUMNS:
        cells[header] = formatted(aggregate[column], formatter, 1 / scale)
    text_columns = {"variant", "contrast", "runs", "verdict", "cost measured"}
    return markdown_table(pd.DataFrame(cells), set(cells) - text_columns)


def per_class_table(per_class: pd.DataFrame) -> str:
    """Per-class IoU (%) as a markdown table, classes as rows."""
    cells = per_class.map(lambda value: format_cell(value, "{:.1f}".format))
    cells.insert(0, "class", [str(name) for name in per_class.index])
    return markdown_table(cells.reset_index(drop=True), set(per_class.columns))


def status_counts(frame: pd.DataFrame) -> str:
    """'3 ok, 1 failed' for the report's header line."""
    return ", ".join(f"{count} {status}" for status, count in frame["status"].value_counts().items())


def memory_kinds_text(kinds: pd.Series) -> str:
    """The memory kinds of a set of numbers in words, e.g. 'process RSS'."""
    return " / ".join(MEMORY_KINDS.get(kind, str(kind)) for kind in kinds.dropna().unique()) or "unknown"


def memory_label(frame: pd.DataFrame) -> str:
    """How peak memory was measured, e.g. 'GPU max allocated'."""
    return memory_kinds_text(frame["memory_kind"])


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


def percent_text(share: float) -> str:
    """0.9 -> '90 %', the report's way of writing a share."""
    return f"{share * 100:.0f} %"


def pp_text(fraction: float) -> str:
    """A Δ as a fraction of mIoU in percentage points: 0.005 -> '0.50 pp'."""
    return f"{fraction * 100:.2f} pp"


def sign_flip_text(aggregate: pd.DataFrame) -> str:
    """How small the exact sign-flip p can get with the study's numbers of pairs; empty without any."""
    counts = sorted({int(count) for count in aggregate.loc[aggregate["p_sign_flip"].notna(), "n_pairs"]})
    if not counts:
        return ""
    floors = "; ".join(f"with {count} pairs, 2/{2**count} = {sign_flip_floor(count):.4g}" for count in counts)
    never = sign_flip_floor(counts[-1]) > ALPHA
    return (f" The smallest p it can reach is 2/2^n ({floors})"
            + (f", above {ALPHA:.2f}: with this few seeds it is never significant at 5 %." if never else "."))


def decision_rule(aggregate: pd.DataFrame, sweep: SweepRecord, unfinished: str) -> str:
    """How the verdict column was decided: the study's design, in the report's words."""
    margin = pp_text(sweep.equivalence_margin)
    if is_sequential(sweep):
        return (
            "**Verdict: the sequential design** (`sweep.design: sequential`, harness/report/design.py; see Sequential "
            "design below). At each look a variant's repeated 95 % confidence interval decides: better where it lies "
            f"above 0, worse where below, equivalent where inside ±{margin} (`sweep.equivalence_margin`); the first "
            "look that decides, decides, a variant still undecided at max_seeds is inconclusive, and until its next "
            "look a variant reads continue. This table's Δ [95 % CI] and p are the fixed-n t interval and test over "
            "every finished pair, shown for reference only: no decision reads them."
        )
    if unfinished:
        return (
            f"**Verdict: interim ({unfinished}).** This study's design is fixed: it is read once, when every run is "
            "in, so no verdict is given now, and its Δ, intervals and p-values may not be quoted as results."
        )
    rule = (
        "**Verdict: the fixed design** (harness/report/design.py). Each variant brings two claims to one family: "
        "that it differs from the baseline (p: the paired t-test of H0: Δ = 0) and that it is equivalent to it "
        f"(TOST p: two one-sided t-tests of H0: |Δ| ≥ {margin}, `sweep.equivalence_margin`, the larger p). "
    )
    if family_shown(aggregate):
        rule += (
            "p (family) and TOST p (family) are those p-values adjusted over all 2V claims of the V variants tested "
            "against the same baseline runs, by Holm's step-down method with Shaffer's restriction (a variant cannot "
            "both equal the baseline and lie a margin from it, so at most V of the 2V null hypotheses hold at once: "
            "the sorted p-values are multiplied by V for the first V + 1 steps, then by V − 1, ..., 1). They keep "
            "the chance that any better, worse or equivalent claim of the study is wrong at 5 %. "
        )
    return rule + (
        "The verdict is better or worse where p (family) < 0.05, else equivalent where TOST p (family) < 0.05, else "
        "suggestive where the unadjusted 95 % interval excludes 0 (a sign the family does not keep: no claim), "
        "else inconclusive: the seeds show neither a difference nor its absence. A variant with a collapsed run "
        "(its predictions say it learned nothing) gets no verdict, nor does any where the baseline has one."
    )


def comparison_notes(frame: pd.DataFrame, aggregate: pd.DataFrame, sweep: SweepRecord, unfinished: str) -> list[str]:
    """What the variants table's numbers are, and how its verdicts were decided."""
    return [
        (
            "mIoU is the mean ± sample standard deviation over a variant's finished seeds. Δ is its mIoU minus the "
            "CE baseline's on the same seed, averaged over the seeds where both finished, in percentage points; "
            "[95 % CI] is the two-sided Student-t interval over those n pairs (n − 1 degrees of freedom) and p the "
            "paired t-test, both from two pairs on and both unadjusted. p (sign-flip) is the exact paired "
            "permutation test: the share of the 2^n sign patterns of the n differences whose mean lies at least as "
            f"far from 0 as the observed one; it assumes no normal distribution.{sign_flip_text(aggregate)}"
        ),
        "",
        decision_rule(aggregate, sweep, unfinished),
        *cost_notes(frame, aggregate),
    ]


def rounds_text(rounds: pd.Series) -> str:
    """'20 rounds' or '20-100 rounds' over the probed runs."""
    low, high = rounds.min(), rounds.max()
    return f"{low:.0f} rounds" if low == high else f"{low:.0f}-{high:.0f} rounds"


def probe_absence_text(skipped: Any) -> str:
    """Why a finished run with a contrast term has no cost probe, from its summary's cost_probe_skipped."""
    if pd.isna(skipped):
        return "summaries older than the probe"
    return "switched off (run.cost_probe: false)" if skipped == "run.cost_probe: false" else str(skipped)


def probe_absences(frame: pd.DataFrame, variants: pd.Series) -> str:
    """'`a`, `b`: summaries older than the probe; `c`: switched off (...)' for the variants costed by the clock."""
    runs = frame[frame["variant"].isin(variants) & (frame["status"] == "ok") & frame["cost_ratio"].isna()]
    reasons = runs.assign(reason=runs["cost_probe_skipped"].map(probe_absence_text))
    grouped = reasons.groupby("reason", sort=False)["variant"].unique()
    return "; ".join(f"{', '.join(f'`{name}`' for name in names)}: {reason}" for reason, names in grouped.items())


def clock_disagreements(aggregate: pd.DataFrame) -> str:
    """The probed variants whose runs' median s/iter over CE's lies outside the probe's 95 % interval, as
    '`a` (probe ≈ CE [-0.3, +2.6] %, runs +2.0 %)'; empty where none does."""
    probe = aggregate[(aggregate["cost_source"] == PROBE) & aggregate["wall_clock_extra_pct"].notna()]
    outside = probe[(probe["wall_clock_extra_pct"] < probe["extra_cost_pct_ci95_low"])
                    | (probe["wall_clock_extra_pct"] > probe["extra_cost_pct_ci95_high"])]
    probe_texts = map(extra_cost_text, *(outside[column] for column in EXTRA_COST_COLUMNS))
    return ", ".join(f"`{variant}` (probe {probe} %, runs {signed(clock, 1)} %)"
                     for variant, probe, clock in zip(outside["variant"], probe_texts, outside["wall_clock_extra_pct"]))


def cost_notes(frame: pd.DataFrame, aggregate: pd.DataFrame) -> list[str]:
    """What the cost columns are: the in-run probe's paired ratios, and where a variant has none, the wall clock."""
    sources = set(aggregate["cost_source"])
    notes = ["", (
        "**Cost.** Extra time vs CE is (ratio − 1) × 100, the ratio being a variant's training step time over CE's "
        "(the baseline is the reference), averaged over its seeds, with the Student-t 95 % CI over the seeds' "
        "ratios from two seeds on. Where the interval contains 0 the cell reads ≈ CE: the cost cannot be told from "
        "CE's, whatever the sign of the mean. Without an interval a saving reads ≈ CE too, as a contrast term only "
        "adds work; so does a negative extra memory. Cost measured says where the ratio comes from. Median s/iter "
        "is each run's median timed training step (a stall does not move it), averaged over the variant's seeds; "
        f"training memory is {train_memory_source(frame)}."
    )]
    if PROBE in sources:
        runs = probed(frame)
        notes += ["", (
            "**Paired in-run** (the cost probe): after training, each run with a contrast term timed its own full "
            "training steps (forward, backward and bank push) with the term on and off, alternating ABBA on the same "
            "batches, at steady state (the trained model, warm caches and the bank as full as training left it), on "
            f"its own devices, the slowest rank's step counting; here {machine_text(runs)}. A run's ratio is the "
            f"median of variant step / CE step over its {rounds_text(runs['cost_probe_rounds'])}, with a "
            "distribution-free 95 % interval; with one probed seed, the variant's CI is that interval. Contrast "
            "ms/step is the median difference of the two steps (≈ 0 where the extra time reads ≈ CE); extra memory "
            "is the peak during the variant's steps minus the peak during CE's "
            f"({memory_kinds_text(runs['contrast_extra_memory_kind'])}"
            + ("; a process's RSS moves with more than the term, so small differences are noise). "
               if (runs["contrast_extra_memory_kind"] == "rss").any() else "). ")
            + "Contrast ms/step and contrast ms/iter time different things: the probe's is the whole training step "
            "with and without the term, backward and bank push included, paired; the training's times only the "
            "term's forward and bank push inside each step."
        )]
        disagreeing = clock_disagreements(aggregate)
        if disagreeing:
            notes += ["", (
                f"**Probe and wall clock differ** for {disagreeing}: the runs' median s/iter over CE's runs of the "
                "same seeds compare separate runs on a loaded machine, whose load at two times enters as much as the "
                "term, while the probe pairs both steps in one process; its number is the term's."
            )]
    if WALL_CLOCK in sources:
        clocked = aggregate.loc[aggregate["cost_source"] == WALL_CLOCK, "variant"]
        notes += ["", (
            f"**{NOT_PAIRED.capitalize()}:** no cost probe ({probe_absences(frame, clocked)}), so these variants' "
            "ratio is each seed's median s/iter over the CE baseline's run of the same seed, and extra memory the "
            "difference of the two runs' training peaks. Separate runs compare the machine's load at two times as "
            "much as the contrast term: on a shared machine or a cluster these numbers say little."
        )]
    return notes


def detection_section(aggregate: pd.DataFrame, margin: float) -> list[str]:
    """What each comparison could have found: the SD of its differences, its 90 % CI and TOST p, and its MDE at
    80 % power at the family's level."""
    rows = aggregate[aggregate["delta_std"].notna()]
    if rows.empty:
        return []
    interval = (rows[column] * 100 for column in ("delta_mean", "delta_ci90_low", "delta_ci90_high"))
    cells = {
        "variant": rows["variant"],
        "pairs": formatted(rows["n_pairs"], "{:.0f}".format),
        "SD of Δ (pp)": formatted(rows["delta_std"], "{:.2f}".format, 100),
        f"Δ (pp) [{percent_text(TOST_CONFIDENCE)} CI]": list(map(delta_text, *interval)),
        "TOST p": rows["p_tost"].map(lambda value: format_cell(value, p_text)),
        f"MDE {percent_text(POWER)} (pp)": formatted(rows["mde_80"], "{:.2f}".format, 100),
        "verdict": rows["verdict"],
    }
    if rows["p_tost"].isna().all():  # a sequential study: its equivalence is read from the repeated CI
        del cells["TOST p"]
    table = markdown_table(pd.DataFrame(cells), set(cells) - {"variant", "verdict"})
    variants = int((~aggregate["is_baseline"]).sum())
    return ["", "## What this study can detect", "", table, "", (
        f"SD of Δ is the sample standard deviation of a variant's n paired differences. MDE {percent_text(POWER)} "
        f"is the smallest true Δ a paired t-test at the family's level (two-sided α = {ALPHA:.2f} / {variants} "
        f"variants, where the fixed design's family starts and where `harness plan` plans) detects "
        f"{percent_text(POWER)} of the time with n pairs at that SD (noncentral t): a true effect smaller than it "
        "is missed more often than not, so an inconclusive verdict is no evidence of no effect. The "
        f"{percent_text(TOST_CONFIDENCE)} CI lies inside ±{pp_text(margin)} exactly where TOST alone passes (TOST "
        "p < 0.05); the verdict equivalent needs more, as the fixed design reads TOST p within its family. Both use "
        "the SD seen here, itself uncertain with few seeds."
    )]


def machine_text(frame: pd.DataFrame) -> str:
    """Where the finished runs ran, e.g. 'cpu (x86_64, 2 cores), world size 1'."""
    ok = frame[frame["status"] == "ok"]
    devices = " / ".join(map(str, ok["device"].dropna().unique())) or "an unrecorded device"
    sizes = " / ".join(f"{size:.0f}" for size in ok["world_size"].dropna().unique()) or "unrecorded"
    return f"{devices}, world size {sizes}"


def looks_text(looks: list[int] | tuple[int, ...]) -> str:
    """'5, 10 and 15'."""
    names = [str(n) for n in looks]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def sequential_cells(aggregate: pd.DataFrame) -> pd.DataFrame:
    """The sequential section's table: per variant its decision, seeds, look, Δ, repeated CI beside the fixed-n t
    interval over the same seeds, and why it stopped (or when it looks next)."""
    rows = aggregate[~aggregate["is_baseline"]]
    centre = (rows["look_ci95_low"] + rows["look_ci95_high"]) / 2 * 100
    pct = {column: rows[column] * 100 for column in ("rci_low", "rci_high", "look_ci95_low", "look_ci95_high")}
    return pd.DataFrame({
        "variant": rows["variant"],
        "verdict": rows["verdict"],
        "seeds used": formatted(rows["seeds_used"], "{:.0f}".format),
        "look": formatted(rows["look"], "{:.0f}".format),
        "Δ (pp) [sequential 95 % CI]": list(map(delta_text, centre, pct["rci_low"], pct["rci_high"])),
        "fixed-n t 95 % CI (pp), reference only": list(map(
            lambda low, high: "" if pd.isna(low) else f"[{signed(low)}, {signed(high)}]",
            pct["look_ci95_low"], pct["look_ci95_high"])),
        "stopped because": [
            stopped if isinstance(stopped, str) and stopped else
            (f"next look at {upcoming:.0f} seeds" if upcoming > 0 else "")
            for stopped, upcoming in zip(rows["stopped"], rows["next_look"].fillna(0))
        ],
    })


def sequential_section(aggregate: pd.DataFrame, sweep: SweepRecord) -> list[str]:
    """report.md's Sequential design section: each variant's repeated CI, the seeds it used, when and why it stopped."""
    if not is_sequential(sweep) or not aggregate["is_baseline"].any() or aggregate["is_baseline"].all():
        return []
    cells = sequential_cells(aggregate)
    variants = len(cells)
    plan = sequential_design(sweep, variants)
    table = markdown_table(cells, {"seeds used", "look", "Δ (pp) [sequential 95 % CI]",
                                   "fixed-n t 95 % CI (pp), reference only"})
    return ["", "## Sequential design", "", (
        f"Seeds in the order `sweep.seeds` lists them, looks after {looks_text(plan.looks)} seeds, at most "
        f"{plan.max_seeds} per variant; a look at n seeds reads a variant's first n pairs with the baseline once all "
        f"of them are in. Each of the {variants} variants gets α = {ALPHA:.2f} / {variants} (Bonferroni), spent over "
        "its looks by "
        f"{SPENDING_NAMES[plan.spending]} spending (Lan-DeMets), with Monte-Carlo t boundaries c_k."
    ), "", table, "", (
        "The sequential 95 % CI is the repeated confidence interval Δ ± c_k · SD / √n at the deciding look (else the "
        "last look reached). It is wider than the fixed-n t interval over the same seeds beside it, because the "
        "repeated intervals must hold the true Δ at every look at once, each variant's share of the 5 % spent over "
        "its looks; the fixed-n interval holds only for a study read once at a planned n, so it is shown for "
        "reference only. Stopped because: the interval above 0 (better), below 0 (worse), inside "
        f"±{pp_text(sweep.equivalence_margin)} (equivalent), or max_seeds reached without a decision (inconclusive)."
    )]


def random_weights(frame: pd.DataFrame) -> bool:
    """Whether every finished run trained its backbone from random weights."""
    weights = frame.loc[frame["status"] == "ok", "backbone_weights"]
    return bool(len(weights)) and bool((weights == "random").all())


def top_lines(study: Study) -> list[str]:
    """What must be read before any number, right under the title: a one-seed study says nothing about the
    method; an unfinished fixed study may not be quoted; a sequential one says how it is read."""
    frame, aggregate = study.runs, study.aggregate
    lines = []
    if aggregate["n_seeds"].max() == 1:
        origin = " from random weights" if random_weights(frame) else ""
        lines += [(
            f"**One seed{origin} says nothing about the method.** Every variant here finished once "
            f"({seeds_text(frame)}): each Δ is a single paired difference with no interval, which cannot be told "
            f"from seed-to-seed noise. The headline study's report answers the question: `{HEADLINE_REPORT}`."
        ), ""]
    if study.missing and is_sequential(study.sweep):
        lines += [(
            f"**Sequential study, {study.unfinished} in.** Its design says how to read it at any time: a variant "
            "is decided at the first look whose repeated confidence interval decides, and reads continue until then."
        ), ""]
    elif study.missing:
        lines += [(
            f"**Interim: {study.unfinished} in. Nothing in this report may be quoted as a result until every run is "
            "in.** Looking at a study before it ends is allowed only where its design says how (a sequential "
            "design); this one is fixed, so no variant has a verdict and no sentence may quote its numbers."
        ), ""]
    return lines


def report_markdown(study: Study, figures: list[str], per_class: pd.DataFrame, planning: list[str]) -> str:
    """The whole report.md: what must be read first, the header (the split scored, and what a partial study
    lacks), variants, the sequential design's reading, what they can detect, planning, runs, the figures,
    per-class IoU."""
    frame, aggregate, sweep = study.runs, study.aggregate, study.sweep
    baseline, why = baseline_choice(frame, sweep.baseline)
    lines = [
        f"# Report: {study.name}, scored on the {study.split} split",
        "",
        *top_lines(study),
        f"From `{relative_path(study.results_dir)}`: {len(frame)} runs of {len(aggregate)} variants "
        f"({status_counts(frame)}; {seeds_text(frame)}); every mIoU here is {split_words(study.split)} mIoU; "
        + (f"CE baseline: `{baseline}` ({why})." if baseline else
           f"CE baseline: none ({why}), so there is no Δ, no verdict and no cost-benefit figure."),
        "",
        *lacking_lines(study),
        "## Variants",
        "",
        variant_table(aggregate),
        "",
        *comparison_notes(frame, aggregate, sweep, study.unfinished),
        *sequential_section(aggregate, sweep),
        *detection_section(aggregate, sweep.equivalence_margin),
        *planning,
        "",
        "## Runs",
        "",
        comparison_table(frame),
        "",
        "One row per run. Δ mIoU is in percentage points against the CE baseline's run of the same seed; "
        f"memory is in MiB (2^20 bytes; memory kind: {memory_label(frame)}). Median s/iter is the run's median "
        "timed training step"
        + ("; cost ratio [95 % CI], in a run with a cost probe, its paired in-run ratio of the variant's step time "
           "to the CE step's, the median over the probe's rounds with a distribution-free 95 % interval."
           if len(probed(frame)) else ".")
        + (" Status collapsed: the run finished, but its predictions say it learned nothing."
           if frame["collapsed"].notna().any() else ""),
        *figures,
    ]
    if len(per_class.columns):
        lines += ["", "## Per-class IoU (%)", "", "Mean over a variant's finished seeds.", "",
                  per_class_table(per_class)]
    return "\n".join(lines) + "\n"


def relative_path(path: Path) -> str:
    """A path as the report names it: relative to the working folder where it lies below it (a report is
    committed and read elsewhere), else as given."""
    resolved = Path(path).resolve()
    return resolved.relative_to(Path.cwd()).as_posix() if resolved.is_relative_to(Path.cwd()) else str(path)


def lacking_lines(study: Study) -> list[str]:
    """What a partial or damaged study lacks, before any number: runs not finished, runs and files unreadable."""
    lines = []
    if study.missing:
        lines += [f"**Partial study: {study.progress()}; missing: {', '.join(study.missing)}.**", ""]
    unreadable = [*study.unreadable, *map(str, study.damaged)]
    if unreadable:
        lines += ["**Unreadable, left out of every number** (moved aside and rerun by `harness submit`):", "",
                  *(f"- {problem}" for problem in unreadable), ""]
    weights = study.runs.loc[study.runs["status"] == "ok", "backbone_weights"].dropna().unique()
    if len(weights) > 1:
        lines += [f"**The runs started from {len(weights)} different backbone weights** ({', '.join(map(str, weights))})"
                  ": a seed's Δ compares like with like only where its variant and baseline runs share theirs, and "
                  "mIoU across runs mixes the weights' own difference in.", ""]
    return lines
