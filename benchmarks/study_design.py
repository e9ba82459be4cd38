"""Fixed vs group-sequential study designs: the runs each takes at the committed studies' effects and SDs.

Per committed study (one family: its variants against its CE baseline), the true Δ of each variant is its
measured mean Δ and its SD the measured SD of Δ; both designs are planned from the same SD (the study's largest)
for 80 % power at a target Δ of 0.5 pp with a family-wise error of 5 %: the fixed design's n per variant (its
t-test at alpha / V, the level its Holm-Shaffer family first tests at) and the sequential design's max_seeds
(Bonferroni, repeated confidence intervals). Both are simulated through harness.report.design on the same studies;
the baseline trains while any variant needs it. Then the same for every variant at Δ = 0, target and 2 x target,
as `harness plan --design sequential` shows them.

    python -m benchmarks.study_design [--replications 4000] [--shared-baseline] [--compare]

--compare plans and simulates every look rule and spending function of design.py at the committed studies:
the table the default design was chosen from.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.report import design

REPO = Path(__file__).resolve().parents[1]
STUDIES = ("digit_scenes_ablations", "digit_scenes_ablations_issue12", "digit_scenes_headline", "digit_scenes_scratch")
TARGET = 0.005  # 0.5 pp of mIoU
MARGIN = 0.005
SEED = 0


@dataclass(frozen=True)
class Scenario:
    """A family of variants against one baseline: true Δ [V] and SD of Δ [V] per variant."""

    name: str
    true_deltas: np.ndarray
    sds: np.ndarray

    @property
    def planning_sd(self) -> float:
        """The SD both designs are planned from: the largest variant's."""
        return float(self.sds.max())


@dataclass(frozen=True)
class Outcome:
    """Both designs on one scenario: what they planned, the runs they took and what they claimed."""

    fixed_n: int
    sequential: design.SequentialDesign
    runs: design.RunsComparison
    claims: tuple[float, float]  # share of variants with a claim (better / worse / equivalent): fixed, sequential
    wrong: tuple[float, float]  # share of studies with a claim the true Δ contradicts: fixed, sequential


def committed_scenarios(reports: Path) -> list[Scenario]:
    """The committed studies' variants, from their reports' aggregate.csv."""
    scenarios = []
    for study in STUDIES:
        frame = pd.read_csv(reports / study / "aggregate.csv")
        variants = frame[~frame["is_baseline"]]
        scenarios.append(Scenario(study, variants["delta_mean"].to_numpy(), variants["delta_std"].to_numpy()))
    return scenarios


def run_both(scenario: Scenario, spending: str, looks: str, replications: int, shared_baseline: bool) -> Outcome:
    """Plan both designs from the scenario's planning SD and simulate them on the same studies."""
    variants, sd = len(scenario.true_deltas), scenario.planning_sd
    fixed_n = design.fixed_seeds(TARGET, sd, variants)
    sequential = design.sequential_design(
        design.sequential_max_seeds(TARGET, sd, variants, MARGIN, spending=spending, looks=looks), variants,
        spending=spending, looks=looks)
    fixed_studies, sequential_studies = design.compare_runs(
        design.FixedDesign(fixed_n), sequential, scenario.true_deltas, scenario.sds, MARGIN, replications,
        np.random.default_rng(SEED), shared_baseline)
    both = (fixed_studies, sequential_studies)
    return Outcome(
        # a family of different true Δ: no one true_delta to file the comparison under
        fixed_n, sequential, design.runs_comparison(np.nan, *both, sequential),
        tuple(float(np.isin(studies.code, design.CLAIMS).mean()) for studies in both),
        tuple(float(design.wrong_claims(studies.code, scenario.true_deltas, MARGIN).any(axis=-1).mean())
              for studies in both),
    )


def looks_text(looks: tuple[int, ...]) -> str:
    """The looks, the middle elided past four."""
    shown = looks if len(looks) <= 4 else (*looks[:2], "…", *looks[-2:])
    return ",".join(map(str, shown))


def runs_cells(name: str, variants: int, sd: float, fixed_n: int, sequential: design.SequentialDesign,
               runs: design.RunsComparison) -> str:
    """A table row's plans and runs."""
    return (f"{name:<40}{variants:>3}{sd * 100:>7.2f}{fixed_n:>5}{runs.fixed_runs:>6}{sequential.max_seeds:>5}  "
            f"{looks_text(sequential.looks):<18}{runs.sequential_runs:>7.1f} ± {runs.sequential_runs_se:<4.1f}"
            f"{runs.fewer * 100:>6.1f} %{runs.decided_early * 100:>7.0f} %")


def claims_cells(outcome: Outcome) -> str:
    """A table row's claims and wrong claims, fixed / sequential."""
    return (f"{outcome.claims[0] * 100:>7.0f} /{outcome.claims[1] * 100:>4.0f} %"
            f"{outcome.wrong[0] * 100:>8.1f} /{outcome.wrong[1] * 100:>4.1f} %")


RUNS_HEADER = (f"{'scenario':<40}{'V':>3}{'SD pp':>7}{'n':>5}{'runs':>6}{'max':>5}  {'looks':<18}{'seq. runs':>13}"
               f"{'fewer':>8}{'early':>9}")
CLAIMS_HEADER = f"{'claims fix/seq':>16}{'wrong fix/seq':>16}"


def headline(args: argparse.Namespace) -> None:
    """The default design at the committed studies, then at Δ = 0 / target / 2 x target as `harness plan --design
    sequential` prints them."""
    model = "shared baseline (corr 0.5)" if args.shared_baseline else "independent variants"
    print(f"Fixed (Holm-Shaffer) vs sequential ({design.DEFAULT_SPENDING} spending, looks {design.DEFAULT_LOOKS}) designs, "
          f"both planned for 80 % power at Δ = {TARGET * 100:.1f} pp, family α = {design.ALPHA}, margin "
          f"{MARGIN * 100:.1f} pp; {args.replications} simulated studies each, {model}.\n"
          "n: the fixed design's seeds per variant; runs: (V + 1) x n; max: the sequential max_seeds; "
          "seq. runs: mean ± MC standard error; early: variants decided before the last look;\n"
          "claims: variants called better / worse / equivalent; wrong: studies with a claim the true Δ contradicts.\n")
    print("At the committed studies' effects and SDs (true Δ_v = measured mean Δ, SD_v = measured SD of Δ):")
    print(RUNS_HEADER + CLAIMS_HEADER)
    scenarios, fewer = committed_scenarios(REPO / "reports"), []
    for scenario in scenarios:
        outcome = run_both(scenario, design.DEFAULT_SPENDING, design.DEFAULT_LOOKS, args.replications,
                           args.shared_baseline)
        fewer.append(outcome.runs.fewer)
        print(runs_cells(scenario.name, len(scenario.true_deltas), scenario.planning_sd, outcome.fixed_n,
                         outcome.sequential, outcome.runs) + claims_cells(outcome))
    print(f"\n{np.mean(fewer) * 100:.0f} % fewer runs than the fixed design (mean over the {len(fewer)} studies)\n")
    print("Every variant at the same true Δ, at each study's V and planning SD (design.plan_sequential, independent "
          "variants):")
    print(RUNS_HEADER)
    for scenario in scenarios:
        variants, sd = len(scenario.true_deltas), scenario.planning_sd
        plan = design.plan_sequential(TARGET, sd, variants, MARGIN, replications=args.replications)
        for runs in plan.runs:
            name = f"{scenario.name} Δ={runs.true_delta * 100:.1f}pp"
            print(runs_cells(name, variants, sd, plan.fixed_seeds, plan.design, runs))


def compare(args: argparse.Namespace) -> None:
    """Every look rule and spending function: % fewer runs at the committed studies, and at Δ = 0 / target /
    2 x target (mean over the studies' V and planning SD), and the largest max_seeds over the fixed n."""
    scenarios = committed_scenarios(REPO / "reports")
    print("% fewer runs than the fixed design (max_seeds), equal power; Δ = x: every variant at x (independent), "
          "mean over the studies; max/n: the largest max_seeds / fixed n")
    print(f"{'looks':<10}{'spending':<16}" + "".join(f"{s.name.removeprefix('digit_scenes_'):>19}" for s in scenarios)
          + f"{'mean':>7}{'w/o scratch':>12}{'Δ = 0':>8}{'Δ = T':>8}{'Δ = 2T':>8}{'max/n':>7}")
    for spending in design.SPENDING:
        for looks in design.LOOK_RULES:
            outcomes = [run_both(s, spending, looks, args.replications, args.shared_baseline) for s in scenarios]
            fewer = [o.runs.fewer * 100 for o in outcomes]
            cells = "".join(f"{f:>12.1f} ({o.sequential.max_seeds:>3})" for f, o in zip(fewer, outcomes))
            # the scratch study's one variant is 10 pp worse at a doubled SD: every design stops it early
            usual = np.mean([f for f, s in zip(fewer, scenarios) if s.name != "digit_scenes_scratch"])
            plans = [design.plan_sequential(TARGET, s.planning_sd, len(s.true_deltas), MARGIN, spending=spending,
                                            looks=looks, replications=args.replications) for s in scenarios]
            at_delta = np.mean([[runs.fewer * 100 for runs in plan.runs] for plan in plans], axis=0)
            stretch = max(o.sequential.max_seeds / o.fixed_n for o in outcomes)
            print(f"{looks:<10}{spending:<16}{cells}{np.mean(fewer):>7.1f}{usual:>12.1f}"
                  + "".join(f"{f:>8.1f}" for f in at_delta) + f"{stretch:>7.2f}")


def main() -> None:
    """CLI: print the comparison of the two designs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replications", type=int, default=4000, help="simulated studies per scenario")
    parser.add_argument("--shared-baseline", action="store_true", help="variants share the baseline's seed noise")
    parser.add_argument("--compare", action="store_true", help="every look rule and spending function instead")
    args = parser.parse_args()
    start = time.perf_counter()
    (compare if args.compare else headline)(args)
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
