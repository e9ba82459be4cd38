"""A study as the pilot of the next one, for report.md's Planning section and `harness plan` (plan.py).

Fixed: per variant, the seeds a paired t-test at the family's level (α / V) needs to detect the study's target Δ with
80 % power, at the pilot's SD of Δ and at that SD's 80 % upper confidence limit, and the training hours of a study of
that many seeds. Sequential: per variant, the group-sequential design of the same power and its expected seeds and
hours to a decision for true Δ = 0, target and 2 x target (simulated through harness.report.design), next to the fixed
design's, and the looks to write in a recipe.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.report import design
from harness.report.design import ALPHA, POWER, SEEDS_CAP
from harness.report.stats import SD_UPPER_CONFIDENCE, sd_upper_limit, seeds_for
from harness.report.tables import formatted, machine_text, markdown_table, percent_text, pp_text
from harness.results import SweepRecord

# Past this many seeds of the fixed design the sequential one is not simulated: its planning search draws
# 40 000 studies per candidate max_seeds, minutes at a few hundred seeds.
SEQUENTIAL_PLAN_CAP = 100
# (header, plan_frame column, cell formatter) of the planning view's costs, in hours
PLAN_HOURS = (
    ("h per variant run", "variant_run_hours", "{:.3f}".format),
    ("h per baseline run", "baseline_run_hours", "{:.3f}".format),
    ("study hours (pilot SD)", "study_hours", "{:.2f}".format),
    ("study hours (SD upper limit)", "study_hours_upper", "{:.2f}".format),
)


def planned(aggregate: pd.DataFrame) -> pd.DataFrame:
    """The variants a plan can start from: an SD of Δ (a baseline and two pairs) and no collapsed run, neither
    theirs nor the baseline's (a collapsed run's Δ measures the collapse, not the method)."""
    baseline_collapsed = aggregate.loc[aggregate["is_baseline"], "collapsed_runs"].sum() > 0
    rows = aggregate[aggregate["delta_std"].notna() & (aggregate["collapsed_runs"] == 0)]
    return rows.iloc[:0] if baseline_collapsed else rows


def family_size(aggregate: pd.DataFrame) -> int:
    """V: the variants compared with the baseline, whose family the next study's α is shared over."""
    return max(1, int((~aggregate["is_baseline"]).sum()))


def baseline_hours(aggregate: pd.DataFrame) -> float:
    """The baseline's mean training hours per run."""
    return aggregate.loc[aggregate["is_baseline"], "train_hours_mean"].max()


def plan_frame(aggregate: pd.DataFrame, target_delta: float) -> pd.DataFrame:
    """Per variant that can be planned: the seeds a fixed design at α / V needs for `target_delta` at the pilot's SD
    of Δ and at its 80 % upper confidence limit, and the training hours of a study with that many seeds of the
    variant and of the baseline (each run: its variant's mean training hours)."""
    rows, variants = planned(aggregate), family_size(aggregate)
    upper = [sd_upper_limit(sd, pairs) for sd, pairs in zip(rows["delta_std"], rows["n_pairs"])]
    seeds = [seeds_for(target_delta, sd, variants) for sd in rows["delta_std"]]
    seeds_upper = np.array([seeds_for(target_delta, sd, variants) for sd in upper])
    run_hours = rows["train_hours_mean"] + baseline_hours(aggregate)
    return pd.DataFrame({
        "variant": rows["variant"], "n_pairs": rows["n_pairs"], "delta_std": rows["delta_std"],
        "delta_std_upper": upper, "seeds_for_target": seeds, "seeds_upper": seeds_upper,
        "seeds_to_add": np.clip(seeds_upper - rows["n_pairs"], 0, None),
        "variant_run_hours": rows["train_hours_mean"], "baseline_run_hours": baseline_hours(aggregate),
        "study_hours": seeds * run_hours, "study_hours_upper": seeds_upper * run_hours,
    }).reset_index(drop=True)


def seeds_needed_text(count: float, delta_std: float) -> str:
    """Seeds for the target: blank without an SD, '>SEEDS_CAP' where the search stopped."""
    if pd.isna(count):
        return f">{SEEDS_CAP}" if delta_std > 0 else ""
    return f"{count:.0f}"


def plan_table(plan: pd.DataFrame, target_delta: float) -> str:
    """The fixed design's planning view as a markdown table, Δ in pp and costs in hours."""
    cells = {
        "variant": plan["variant"],
        "SD of Δ (pp)": formatted(plan["delta_std"], "{:.2f}".format, 100),
        f"seeds for Δ = {pp_text(target_delta)} at it": list(map(seeds_needed_text, plan["seeds_for_target"],
                                                                 plan["delta_std"])),
        f"SD {percent_text(SD_UPPER_CONFIDENCE)} upper limit (pp)": formatted(plan["delta_std_upper"], "{:.2f}".format,
                                                                            100),
        "seeds at the upper limit": list(map(seeds_needed_text, plan["seeds_upper"], plan["delta_std_upper"])),
        "seeds to add": formatted(plan["seeds_to_add"], "{:.0f}".format),
        **{header: formatted(plan[column], formatter) for header, column, formatter in PLAN_HOURS},
    }
    return markdown_table(pd.DataFrame(cells), set(cells) - {"variant"})


def hours_basis(frame: pd.DataFrame) -> str:
    """What a run's hours are: its mean step time x iterations; says so where older runs give only the median."""
    ok = frame[frame["status"] == "ok"]
    median_only = int((ok["s_per_iter_mean"].isna() & ok["s_per_iter"].notna()).sum())
    basis = "each run costing its variant's mean timed step (`s_per_iter_mean`, stalls included) × iterations here"
    if median_only:
        older = "these runs are" if median_only == len(ok) else f"{median_only} of the {len(ok)} runs are"
        basis += (f"; {older} older than the mean step time and use their median s/iter instead, which leaves "
                  "stalls out, so their hours read low")
    return basis


def fixed_lines(frame: pd.DataFrame, aggregate: pd.DataFrame, target_delta: float) -> list[str]:
    """The fixed design's planning: what it plans for, the table, and what its columns are; [] without a pilot."""
    plan = plan_frame(aggregate, target_delta)
    if plan.empty:
        return []
    variants = family_size(aggregate)
    return [(
        "A fixed design: per variant, the seeds (pairs with the baseline) a paired t-test needs to detect a true Δ "
        f"of {pp_text(target_delta)} (`sweep.target_delta`) with {percent_text(POWER)} power at the family's level, "
        f"two-sided α = {ALPHA:.2f} / {variants} variants (design.fixed_seeds: the level where the fixed design's "
        "Holm-Shaffer family starts). Beside the seeds at the SD of Δ seen here, the seeds at that SD's "
        f"{percent_text(SD_UPPER_CONFIDENCE)} upper confidence limit (chi-square, n − 1 degrees of freedom): an SD "
        "from a few pilot seeds is itself uncertain, so a plan at the pilot's SD falls short of its power whenever "
        "the true SD is larger, while one at the upper limit reaches it with 80 % confidence."
    ), "", plan_table(plan, target_delta), "", (
        "Seeds to add: beyond the pairs already run, up to the seeds at the upper limit. Study hours: the training "
        "time of a study with that many seeds of the variant and as many of the baseline, "
        f"{hours_basis(frame)}; wall-clock time on the machine these runs used ({machine_text(frame)}), evaluation "
        "and start-up left out. The baseline's runs serve every variant, so a study of several variants costs "
        f"less than the sum of the rows. The search for seeds stops at {SEEDS_CAP} (>{SEEDS_CAP})."
    )]


def sequential_plans(aggregate: pd.DataFrame, target_delta: float,
                     margin: float) -> dict[str, design.SequentialPlan | None]:
    """Per variant that can be planned, its sequential plan (None past SEQUENTIAL_PLAN_CAP seeds)."""
    rows, variants = planned(aggregate), family_size(aggregate)
    return {
        name: design.plan_sequential(target_delta, sd, variants, margin)
        if design.fixed_seeds(target_delta, sd, variants) <= SEQUENTIAL_PLAN_CAP else None
        for name, sd in zip(rows["variant"], rows["delta_std"])
    }


def sequential_cells(aggregate: pd.DataFrame, plans: dict[str, design.SequentialPlan | None]) -> pd.DataFrame:
    """One row per variant and true Δ: both designs' seeds and hours to a decision."""
    rows = planned(aggregate).set_index("variant")
    base = baseline_hours(aggregate)
    cells = []
    for name, plan in plans.items():
        sd, pair_hours = rows.loc[name, "delta_std"], rows.loc[name, "train_hours_mean"] + base
        if plan is None:
            cells.append([name, f"{sd * 100:.2f}", "", f">{SEQUENTIAL_PLAN_CAP}", "", "", "not simulated", "", ""])
            continue
        looks = f"{plan.design.max_seeds} ({', '.join(map(str, plan.design.looks))})"
        cells += [
            [name, f"{sd * 100:.2f}", pp_text(runs.true_delta), f"{plan.fixed_seeds}",
             f"{plan.fixed_seeds * pair_hours:.2f}", looks, f"{runs.variant_seeds:.1f}",
             f"{runs.variant_seeds * pair_hours:.2f}", percent_text(runs.decided_early)]
            for runs in plan.runs
        ]
    columns = ["variant", "SD of Δ (pp)", "true Δ", "fixed: seeds", "fixed: hours", "sequential: max_seeds (looks)",
               "sequential: mean seeds", "sequential: mean hours", "decided before max_seeds"]
    return pd.DataFrame(cells, columns=columns)


def recipe_looks(aggregate: pd.DataFrame, plans: dict[str, design.SequentialPlan | None]) -> str:
    """The sweep lines a recipe takes, planned at the largest pilot SD so that every variant reaches the power."""
    rows = planned(aggregate)
    name = rows.loc[rows["delta_std"].idxmax(), "variant"]
    plan = plans[name]
    if plan is None:
        return (f"`{name}`'s SD needs more than {SEQUENTIAL_PLAN_CAP} seeds: plan a recipe's looks with "
                f"design.default_looks(max_seeds) once max_seeds is known.")
    looks = ", ".join(map(str, plan.design.looks))  # design.default_looks of its max_seeds
    return (f"For a recipe, planned at the largest SD seen (`{name}`): `sweep: {{design: sequential, max_seeds: "
            f"{plan.design.max_seeds}, looks: [{looks}]}}`, with at least {plan.design.max_seeds} seeds in "
            "`sweep.seeds`, in the order they are to run.")


def sequential_lines(frame: pd.DataFrame, aggregate: pd.DataFrame, target_delta: float, margin: float) -> list[str]:
    """The sequential design's planning beside the fixed one's: the table and what it is; [] without a pilot."""
    if planned(aggregate).empty:
        return []
    plans = sequential_plans(aggregate, target_delta, margin)
    cells = sequential_cells(aggregate, plans)
    variants = family_size(aggregate)
    return [(
        "A sequential design: per variant, at the SD of Δ seen here, the group-sequential design of "
        f"{percent_text(POWER)} power at Δ = {pp_text(target_delta)} (family α = {ALPHA:.2f} shared by {variants} "
        f"variants; {design.SPENDING_NAMES[design.DEFAULT_SPENDING]} spending, looks by the rule "
        f"`{design.DEFAULT_LOOKS}` of design.default_looks) and the "
        "seeds and hours it takes to a decision when the true Δ is 0, the target or twice it, simulated through "
        "harness/report/design.py (plan_sequential), next to the fixed design of the same power, which always "
        "takes its n."
    ), "", markdown_table(cells, set(cells.columns) - {"variant", "true Δ", "sequential: max_seeds (looks)"}), "", (
        "Hours: seeds × (the variant's run + the baseline's run), "
        f"{hours_basis(frame)}; on {machine_text(frame)}. Decided before max_seeds: the share of simulated "
        "variants a look before the last decided. " + recipe_looks(aggregate, plans)
    )]


def planning_lines(frame: pd.DataFrame, aggregate: pd.DataFrame, sweep: SweepRecord, design_name: str) -> list[str]:
    """The planning view of a design ("fixed" or "sequential"); [] without a pilot."""
    if design_name == "sequential":
        return sequential_lines(frame, aggregate, sweep.target_delta, sweep.equivalence_margin)
    return fixed_lines(frame, aggregate, sweep.target_delta)


def planning_section(frame: pd.DataFrame, aggregate: pd.DataFrame, sweep: SweepRecord) -> list[str]:
    """report.md's Planning section: this study as the pilot of the next one, in its own design."""
    lines = planning_lines(frame, aggregate, sweep, sweep.design)
    if not lines:
        return []
    return ["", "## Planning", "", "This study as a pilot (`harness plan RESULTS_DIR` prints the same). " + lines[0],
            *lines[1:]]


