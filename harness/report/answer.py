"""A study's answer in a few lines, printed where a sweep or a study ends: per variant the mIoU of the split it was
scored on, its Δ against the baseline, its verdict and its cost, and where the report is."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.report.study import Study
from harness.report.tables import EXTRA_COST_COLUMNS, HEADLINE_REPORT, extra_cost_text, machine_text, relative_path


def number(value: float, template: str) -> str:
    """A value formatted, or '-' where there is none."""
    return "-" if pd.isna(value) else template.format(value)


def variant_line(row: pd.Series, baseline: str | None, width: int) -> str:
    """One variant's answer: mIoU and seeds, then Δ with its interval, the verdict and the cost (not for the baseline)."""
    seeds = f"{row['n_seeds']:.0f} seed{'s' * (row['n_seeds'] != 1)}"
    line = f"  {row['variant']:<{width}} {number(row['miou_mean'] * 100, '{:6.2f}')} % ({seeds})"
    if row["is_baseline"] or baseline is None:
        return line + ("   baseline" if row["is_baseline"] else "")
    # the interval the verdict read: a sequential study's repeated CI, else the fixed-n t interval
    low, high = (row["rci_low"], row["rci_high"]) if pd.notna(row.get("rci_low")) else (
        row["delta_ci95_low"], row["delta_ci95_high"])
    interval = "" if pd.isna(low) else f" [{low * 100:+.2f}, {high * 100:+.2f}]"
    extra = extra_cost_text(*(row[column] for column in EXTRA_COST_COLUMNS))  # the report's words: ≈ CE, no CI
    cost = f"   extra time (%) {extra}" if extra else ""
    return (f"{line}   Δ {number(row['delta_mean'] * 100, '{:+.2f}')} pp{interval} vs {baseline}"
            f"   {row['verdict']}{cost}")


def reference_lines(study: Study, reference: Study) -> list[str]:
    """Each variant's mIoU beside a committed reference run's of the same recipe, and why the two may differ."""
    theirs = reference.aggregate.set_index("variant")["miou_mean"]
    # a variant trained with other settings (say, fewer iterations) is not the reference's run: no number beside it
    recipes = {side: dict(zip(runs["variant"], runs["fingerprint"])) for side, runs in
               (("mine", study.runs), ("theirs", reference.runs))}
    lines = [f"reference: {relative_path(reference.results_dir)} (committed; {machine_text(reference.runs)})"]
    for variant, mine in zip(study.aggregate["variant"], study.aggregate["miou_mean"]):
        if variant not in recipes["theirs"]:
            lines.append(f"  {variant}: the reference has no such variant")
        elif recipes["mine"].get(variant) != recipes["theirs"][variant]:
            lines.append(f"  {variant}: trained with another recipe than the reference's (its fingerprint differs): "
                         "not compared")
        else:
            other = theirs[variant]
            lines.append(f"  {variant}: yours {number(mine * 100, '{:.2f}')} %, reference "
                         f"{number(other * 100, '{:.2f}')} % ({number((mine - other) * 100, '{:+.2f}')} pp)")
    lines.append("  one seed each: another machine's CPU kernels, thread count and library versions sum in another "
                 "order, so the same recipe and seed land apart by about the spread between seeds (points, not "
                 "hundredths; BENCHMARKS.md, Quickstart); only a multi-seed study says anything about the method")
    return lines


def answer_lines(study: Study, report: Path | None, reference: Study | None = None) -> list[str]:
    """What the study found so far (beside a reference run's where one is given), in lines for a terminal or a job
    log."""
    aggregate = study.aggregate
    baseline = next(iter(aggregate.loc[aggregate["is_baseline"], "variant"]), None)
    progress = study.progress() or f"{study.expected} of {study.expected} runs finished"
    lines = [f"answer: {study.split} mIoU of {study.name}, {progress}"]
    width = max(len(name) for name in aggregate["variant"])
    lines += [variant_line(row, baseline, width) for _, row in aggregate.iterrows()]
    lines += [f"  {line}" for line in study.lacking() if line.startswith("unreadable")]
    if aggregate["n_seeds"].max() <= 1:
        lines.append(f"  one seed: each Δ is a single paired difference with no interval, which cannot be told from "
                     f"seed-to-seed noise; {HEADLINE_REPORT} is a ten-seed study")
    if reference is not None:
        lines += reference_lines(study, reference)
    if report is not None:
        lines.append(f"report: {relative_path(report)}")
    return lines
