"""The study designs' decision code: hand-computed fixed-design families, the sequential t boundaries, and both
designs' error and power simulated through harness.report.design itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from harness.report import design
from harness.report.design import Decision

MARGIN = 0.5  # in SDs of the differences (sd = 1 below)
STUDIES = 4000  # simulated studies per error rate: MC standard error sqrt(0.05 * 0.95 / 4000) = 0.34 pp
ERROR_BOUND = design.ALPHA + 3 * math.sqrt(design.ALPHA * (1 - design.ALPHA) / STUDIES)  # 6.0 %: 7 % is 5 SE off


def tost_p(row: np.ndarray, margin: float) -> float:
    """TOST's p from scipy: the larger of the one-sided t-tests of H0: Δ <= -margin and H0: Δ >= margin."""
    return max(stats.ttest_1samp(row, -margin, alternative="greater").pvalue,
               stats.ttest_1samp(row, margin, alternative="less").pvalue)


def test_family_keeps_one_better_and_one_equivalent_of_three_and_calls_one_suggestive() -> None:
    """Three variants plus one with a single pair: the family of their six claims, by hand from scipy's p-values."""
    deltas = np.array([
        [0.9, 1.1, 1.0, 1.2, 0.8],  # clearly above 0
        [0.5, 0.05, 0.6, 0.4, 0.1],  # below 5 % alone, not after the family's adjustment
        [0.3, -0.4, 0.1, -0.2, 0.3],  # inside ±0.5 by TOST, even adjusted
        [0.7, np.nan, np.nan, np.nan, np.nan],  # one pair: no p-value, not in the family
    ])
    margin = 0.5
    p = [stats.ttest_1samp(row, 0.0).pvalue for row in deltas[:3]]
    tost = [tost_p(row, margin) for row in deltas[:3]]
    # the order this test needs: p[0] < tost[2] < p[1] < tost[1] < p[2] < tost[0]
    assert p[0] < 1e-3 < tost[2] < 0.05 / 3 < 0.025 < p[1] < 0.05 < tost[1] < 0.5 < p[2] < tost[0]
    # Holm-Shaffer by hand: 3 tested variants, so at most 3 true nulls among 6: factors 3, 3, 3, 3 (the first
    # V + 1 steps), then 2, 1; running maximum, capped at 1
    steps = [3 * p[0], 3 * tost[2], 3 * p[1], 3 * tost[1], 2 * p[2], 1 * tost[0]]
    adjusted = np.minimum(1.0, np.maximum.accumulate(steps))
    read = design.fixed_decisions(deltas, margin)
    np.testing.assert_allclose(read.p_value[:3], p, rtol=1e-10)
    np.testing.assert_allclose(read.p_tost[:3], tost, rtol=1e-10)
    np.testing.assert_allclose(read.p_family[:3], adjusted[[0, 2, 4]], rtol=1e-10)
    np.testing.assert_allclose(read.p_tost_family[:3], adjusted[[5, 3, 1]], rtol=1e-10)
    assert np.isnan(read.p_family[3]) and np.isnan(read.p_tost_family[3])
    assert list(read.code) == [Decision.BETTER, Decision.SUGGESTIVE, Decision.EQUIVALENT, Decision.ONE_PAIR]
    interval = stats.t.interval(0.95, 4, loc=deltas[1].mean(), scale=stats.sem(deltas[1]))
    np.testing.assert_allclose([read.low[1], read.high[1]], interval, rtol=1e-10)
    table = read.table(["a", "b", "c", "d"])
    assert table["b"]["decision"] == "suggestive" and table["d"]["decision"] == "one seed: no CI"
    assert table["c"]["p_tost_family"] == pytest.approx(3 * tost[2])


def test_family_adjustment_vectorised_over_studies_matches_one_at_a_time() -> None:
    """The adjustment along the claims of [R, V, 2] equals that of each study alone, NaN variants in place."""
    p = np.random.default_rng(0).uniform(0, 0.1, (50, 4, 2))
    p[::3, 1] = np.nan
    one_by_one = [design.family_adjusted(study) for study in p]
    np.testing.assert_allclose(design.family_adjusted(p), one_by_one)
    assert np.isnan(design.family_adjusted(p)[::3, 1]).all()
    # three tested variants in the NaN studies: the smallest p is multiplied by 3, not by 4
    assert np.nanmin(design.family_adjusted(p)[0]) == pytest.approx(3 * np.nanmin(p[0]))


def test_equivalence_passes_tost_alone_but_not_in_a_family_of_three() -> None:
    """A variant whose TOST p lies between 0.05 / 3 and 0.05, the others' claims far from significant: equivalent
    alone, inconclusive in a family of three, whose first steps multiply it by 3."""
    close = np.array([0.02, -0.03, 0.05, 0.0, -0.01, 0.03])
    others = np.array([[0.3, -0.2, 0.1, 0.0, -0.1, 0.2], [0.2, 0.1, -0.2, 0.3, -0.3, 0.0]])
    margin = 0.04
    tost = tost_p(close, margin)
    assert 0.05 / 3 < tost < 0.05 and min(tost_p(row, margin) for row in others) > 0.2  # what this test needs
    assert design.fixed_decisions(close[None], margin).code[0] == Decision.EQUIVALENT
    family = design.fixed_decisions(np.vstack([close, others]), margin)
    assert family.code[0] == Decision.INCONCLUSIVE and family.p_tost_family[0] == pytest.approx(3 * tost)


@pytest.mark.parametrize("pairs", [3, 10, 30])
def test_one_look_boundary_is_the_t_quantile(pairs: int) -> None:
    """K = 1 spends all of alpha' at n: the boundary is t_{1 - alpha'/2, n - 1} up to Monte-Carlo error."""
    alpha = 0.05 / 3
    bound = design.t_boundaries((pairs,), alpha, design.DEFAULT_SPENDING)[0]
    spent = 2 * stats.t.sf(bound, pairs - 1)
    assert abs(spent - alpha) < 4 * math.sqrt(alpha * (1 - alpha) / design.BOUNDARY_PATHS)
    assert bound == pytest.approx(stats.t.ppf(1 - alpha / 2, pairs - 1), rel=0.02)


def test_obrien_fleming_boundaries_fall_and_end_near_the_fixed_critical_value() -> None:
    """O'Brien-Fleming spends little early: boundaries decrease over the looks, the last one a little above
    the fixed design's t quantile."""
    bounds = design.sequential_design(20, 3, spending="obrien_fleming").boundaries
    fixed = stats.t.ppf(1 - 0.05 / 6, 19)
    assert np.all(np.diff(bounds) < 0) and fixed < bounds[-1] < 1.1 * fixed


def test_design_refuses_looks_a_t_statistic_cannot_use() -> None:
    """Looks below 3 seeds, out of order or not ending at max_seeds; unknown spending names list the valid."""
    for looks in [(2, 10), (5, 5, 10), (5, 8)]:
        with pytest.raises(ValueError):
            design.SequentialDesign(10, looks, 3)
    with pytest.raises(KeyError, match="obrien_fleming"):
        design.SequentialDesign(10, (5, 10), 3, spending="haybittle")
    assert design.default_looks(7) == (5, 7) and design.default_looks(6, "thirds") == (3, 4, 6)


def test_a_look_waits_for_every_pair_before_it() -> None:
    """A missing pair among the first n_k holds the look back; once it finishes, the look decides."""
    plan = design.sequential_design(15, 1)
    deltas = np.full((1, 15), np.nan)
    deltas[0, :6] = [2.0, 2.1, np.nan, 1.9, 2.2, 2.0]
    waiting = design.sequential_decisions(deltas, plan, MARGIN)
    assert (waiting.code[0], waiting.seeds[0], waiting.next_look[0]) == (Decision.CONTINUE, 0, 5)
    deltas[0, 2] = 2.05
    done = design.sequential_decisions(deltas, plan, MARGIN).table(["variant"])["variant"]
    assert done["decision"] == "better" and done["seeds"] == 5 and done["look"] == 1 and done["next_look"] == 0
    assert done["rci_low"] > 0


@pytest.fixture(scope="module")
def null_studies() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Paired differences [R, 3, 15] (sd 1) and their true Δ [3]: every Δ = 0, every Δ = MARGIN, both mixed."""
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((STUDIES, 3, 15))
    shared = (noise - rng.standard_normal((STUDIES, 1, 15))) / math.sqrt(2)
    cases = {"zero": (noise, [0.0] * 3), "margin": (noise, [MARGIN] * 3), "zero shared baseline": (shared, [0.0] * 3),
             "mixed": (noise, [0.0, MARGIN, MARGIN])}
    return {case: (deltas + np.array(truth)[:, None], np.array(truth)) for case, (deltas, truth) in cases.items()}


@pytest.mark.parametrize("case", ["zero", "margin", "zero shared baseline", "mixed"])
def test_sequential_family_error_holds_when_read_after_every_pair(null_studies: dict, case: str) -> None:
    """Under Δ = 0 (better / worse are wrong), Δ = margin (equivalent / worse are wrong) and a family of both:
    a study read after each of its 15 pairs makes a wrong claim at some read in at most 5 % of studies, plus MC
    error; and every read says continue or what the full study says."""
    deltas, truth = null_studies[case]
    plan = design.sequential_design(15, 3)
    final = design.sequential_decisions(deltas, plan, MARGIN).code
    wrong = np.zeros(len(deltas), dtype=bool)
    for finished in range(1, 16):
        partial = np.where(np.arange(15) < finished, deltas, np.nan)
        code = design.sequential_decisions(partial, plan, MARGIN).code
        wrong |= design.wrong_claims(code, truth, MARGIN).any(axis=-1)
        assert np.all((code == Decision.CONTINUE) | (code == final))
    assert wrong.mean() <= ERROR_BOUND


@pytest.mark.parametrize("case", ["zero", "margin", "zero shared baseline", "mixed"])
def test_fixed_family_error_holds_at_its_n(null_studies: dict, case: str) -> None:
    """The family of superiority and TOST claims at the fixed n = 15: wrong in at most 5 %, plus MC error."""
    deltas, truth = null_studies[case]
    code = design.fixed_decisions(deltas, MARGIN).code
    assert design.wrong_claims(code, truth, MARGIN).any(axis=-1).mean() <= ERROR_BOUND


MIXED_STUDIES = 20_000  # MC standard error 0.15 pp: Holm beside a Bonferroni TOST erred 6.3-6.8 % here
MIXED_BOUND = design.ALPHA + 3 * math.sqrt(design.ALPHA * (1 - design.ALPHA) / MIXED_STUDIES)  # 5.46 %


@pytest.mark.parametrize("truth", [[0, 1], [0, 1, 1], [0, 0, 0, 1, 1, 1, 1]], ids=["V=2", "V=3", "V=7"])
def test_fixed_family_error_holds_where_equal_and_margin_variants_mix(truth: list[int]) -> None:
    """Variants at Δ = 0 beside variants at Δ = margin (1 SD, n = 15), where a test of either kind has power
    against the other's null: better / worse / equivalent claims together wrong in at most 5 %, plus MC error."""
    margin = 1.0
    true_deltas = np.array(truth, dtype=float) * margin
    rng = np.random.default_rng(len(truth))
    deltas = rng.standard_normal((MIXED_STUDIES, len(truth), 15)) + true_deltas[:, None]
    code = design.fixed_decisions(deltas, margin).code
    assert design.wrong_claims(code, true_deltas, margin).any(axis=-1).mean() <= MIXED_BOUND


def test_sequential_max_seeds_reaches_the_power_it_promises() -> None:
    """At the planned max_seeds, fresh simulated studies call a variant at Δ = target better >= 80 % of the time
    (MC standard error 0.28 pp at 20 000 variant-studies)."""
    target, sd, variants = 0.005, 0.006, 3
    max_seeds = design.sequential_max_seeds(target, sd, variants, margin=target)
    fixed_n = design.fixed_seeds(target, sd, variants)
    assert fixed_n <= max_seeds <= 1.2 * fixed_n
    studies = design.simulate(design.sequential_design(max_seeds, variants), np.full(variants, target),
                              np.full(variants, sd), 20_000 // variants, np.random.default_rng(7), target)
    power = np.mean(studies.code == Decision.BETTER)
    assert power >= design.POWER - 3 * math.sqrt(0.16 / studies.code.size)


def test_plan_sets_both_designs_side_by_side() -> None:
    """plan_sequential: the fixed n and the sequential max_seeds for the same power, runs at Δ = 0 / T / 2T."""
    target, sd, variants = 0.005, 0.006, 3
    plan = design.plan_sequential(target, sd, variants, margin=target, replications=1000)
    assert plan.fixed_seeds == design.fixed_seeds(target, sd, variants)
    assert plan.design.max_seeds == design.sequential_max_seeds(target, sd, variants, margin=target)
    assert [runs.true_delta for runs in plan.runs] == [0.0, target, 2 * target]
    assert all(runs.fixed_runs == (variants + 1) * plan.fixed_seeds for runs in plan.runs)
    assert all(runs.sequential_runs <= (variants + 1) * plan.design.max_seeds for runs in plan.runs)
    assert plan.runs[0].fewer < plan.runs[1].fewer < plan.runs[2].fewer  # bigger effects stop sooner


def test_runs_count_every_variant_and_the_baseline_while_any_needs_it() -> None:
    """Fixed runs are the planned seeds plus the longest for the baseline; sequential ones the deciding looks."""
    rng = np.random.default_rng(3)
    fixed = design.simulate(design.FixedDesign((4, 6)), np.zeros(2), np.ones(2), 10, rng, MARGIN)
    assert np.all(fixed.runs == 4 + 6 + 6)
    plan = design.sequential_design(15, 2)
    sequential = design.simulate(plan, np.array([100.0, 0.0]), np.ones(2), 200, rng, MARGIN)
    # Δ = 100 SDs: decided at the first look, whose boundary (5 pairs, O'Brien-Fleming) is near 20
    assert np.all(sequential.variant_runs[:, 0] == 5)
    assert np.all(sequential.baseline_runs == sequential.variant_runs.max(axis=-1))
    assert set(np.unique(sequential.variant_runs)) <= set(plan.looks)
    assert list(design.labels(np.array([1, 0]))) == ["better", "continue"]
