"""What a study can detect: noncentral-t power, MDE and seeds for a target Δ at the family's level, the SD's upper
confidence limit, the exact sign-flip p."""

from __future__ import annotations

from itertools import product

import numpy as np
import pytest
from scipy import stats

from harness.report.design import SEEDS_CAP, t_power
from harness.report.stats import mde, p_sign_flip, sd_upper_limit, seeds_for, sign_flip_floor
from harness.report.tables import aggregate_frame, results_frame
from harness.results import SweepRecord
from tests.report_fixtures import seeded_summary

MARGIN = 0.005


def direct_power(effect: float, pairs: int, alpha: float = 0.05) -> float:
    """The paired t-test's power straight from its definition, P(|T| > t_crit) with T ~ nct(n - 1, d sqrt(n))."""
    critical = stats.t.ppf(1 - alpha / 2, pairs - 1)
    shift = effect * np.sqrt(pairs)
    return stats.nct.sf(critical, pairs - 1, shift) + stats.nct.cdf(-critical, pairs - 1, shift)


def simulated_power(effect: float, pairs: int, trials: int = 40_000) -> float:
    """How often a paired t-test at 5 % rejects when the differences are N(effect, 1): Monte Carlo."""
    differences = np.random.default_rng(0).normal(effect, 1.0, (trials, pairs))
    t_values = differences.mean(axis=1) / (differences.std(axis=1, ddof=1) / np.sqrt(pairs))
    return float(np.mean(np.abs(t_values) > stats.t.ppf(0.975, pairs - 1)))


@pytest.mark.parametrize(("effect", "pairs"), [(0.0, 5), (0.5, 3), (1.2, 5), (0.8, 10), (0.3, 40)])
def test_power_is_the_noncentral_t_tail(effect: float, pairs: int) -> None:
    assert t_power(effect, pairs) == pytest.approx(direct_power(effect, pairs), rel=1e-9)


@pytest.mark.parametrize(("effect", "pairs"), [(1.682, 5), (1.0, 8), (0.4, 20)])
def test_power_matches_a_simulated_t_test(effect: float, pairs: int) -> None:
    assert t_power(effect, pairs) == pytest.approx(simulated_power(effect, pairs), abs=0.01)  # ~4 standard errors


def test_power_at_no_effect_is_alpha() -> None:
    assert t_power(0.0, 5) == pytest.approx(0.05)


def test_mde_for_five_pairs_is_about_1_68_sd() -> None:
    # Five pairs, two-sided 5 %, 80 % power: d = 1.682 SDs, checked by the definition and by simulation.
    effect = mde(1.0, 5)
    assert effect == pytest.approx(1.682, abs=1e-3)
    assert direct_power(effect, 5) == pytest.approx(0.8, abs=1e-6)
    assert simulated_power(effect, 5) == pytest.approx(0.8, abs=0.01)
    assert mde(0.004, 5) == pytest.approx(0.004 * effect)  # in the units of the differences' SD


def test_mde_approaches_the_normal_formula_for_many_pairs() -> None:
    # (z_0.975 + z_0.8) / sqrt(n): the t distribution's heavier tails vanish as n grows
    normal = (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / np.sqrt(5000)
    assert mde(1.0, 5000) == pytest.approx(normal, rel=1e-3)
    assert mde(1.0, 5) > (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / np.sqrt(5)  # few pairs: the t costs more


def test_mde_shrinks_with_pairs_and_needs_two_and_a_spread() -> None:
    assert [mde(1.0, n) for n in (2, 3, 5, 10)] == sorted([mde(1.0, n) for n in (2, 3, 5, 10)], reverse=True)
    assert np.isnan(mde(0.01, 1)) and np.isnan(mde(0.0, 5)) and np.isnan(mde(np.nan, 5))


def brute_force_seeds(target: float, sd: float, variants: int = 1) -> int | None:
    """The first n from 2 whose directly computed power at 0.05 / variants reaches 0.8."""
    return next((n for n in range(2, SEEDS_CAP + 1) if direct_power(target / sd, n, 0.05 / variants) >= 0.8), None)


@pytest.mark.parametrize(("target", "sd"), [(0.005, 0.0035), (0.005, 0.004), (0.005, 0.0082), (0.01, 0.002),
                                            (0.001, 0.006)])
def test_seeds_for_target_matches_a_brute_force_search(target: float, sd: float) -> None:
    assert seeds_for(target, sd) == brute_force_seeds(target, sd)


@pytest.mark.parametrize("variants", [2, 4, 7])
def test_seeds_and_mde_at_the_familys_level_need_more(variants: int) -> None:
    """A family of V variants plans each t-test at 0.05 / V (design.fixed_seeds), so it needs more seeds, and its
    MDE is the effect whose power at 0.05 / V is 0.8."""
    assert seeds_for(0.005, 0.006, variants) == brute_force_seeds(0.005, 0.006, variants)
    assert seeds_for(0.005, 0.006, variants) > seeds_for(0.005, 0.006)
    effect = mde(1.0, 8, variants)
    assert direct_power(effect, 8, 0.05 / variants) == pytest.approx(0.8, abs=1e-6) and effect > mde(1.0, 8)


def test_sd_upper_limit_is_the_chi_square_bound() -> None:
    """The 80 % upper limit of an SD seen over n pairs, sd sqrt((n - 1) / chi2.ppf(0.2, n - 1)), holds the true SD
    in 80 % of simulated pilots of five normal pairs (MC standard error 0.2 pp)."""
    assert sd_upper_limit(0.004, 5) == pytest.approx(0.004 * np.sqrt(4 / stats.chi2.ppf(0.2, 4)))
    seen = np.random.default_rng(0).standard_normal((40_000, 5)).std(axis=1, ddof=1)  # true SD 1
    assert np.mean(sd_upper_limit(seen, 5) >= 1.0) == pytest.approx(0.8, abs=0.01)
    assert sd_upper_limit(0.004, 30) < sd_upper_limit(0.004, 5) and np.isnan(sd_upper_limit(0.004, 1))


def test_seeds_for_target_is_monotone() -> None:
    by_target = [seeds_for(target, 0.005) for target in (0.02, 0.01, 0.005, 0.0025, 0.001)]
    by_sd = [seeds_for(0.005, sd) for sd in (0.001, 0.002, 0.004, 0.008, 0.016)]
    assert by_target == sorted(by_target) and by_target[0] < by_target[-1]
    assert by_sd == sorted(by_sd) and by_sd[0] < by_sd[-1]
    assert seeds_for(0.005, 0.005) == brute_force_seeds(0.005, 0.005)


def test_seeds_for_target_stops_at_the_cap() -> None:
    assert np.isnan(seeds_for(0.0001, 0.01))  # d = 0.01 would need ~80,000 pairs
    assert np.isnan(seeds_for(0.005, 0.0)) and np.isnan(seeds_for(0.005, np.nan))


def enumerated_p(deltas: np.ndarray) -> float:
    """The sign-flip p by listing all 2^n patterns; integers in, so ties are exact."""
    observed = abs(deltas.sum())
    sums = [abs(np.dot(signs, deltas)) for signs in product((1, -1), repeat=len(deltas))]
    return float(np.mean([total >= observed for total in sums]))


@pytest.mark.parametrize("pairs", [2, 3, 4, 5, 7, 10, 13])
def test_sign_flip_matches_enumeration(pairs: int) -> None:
    rng = np.random.default_rng(pairs)
    for shift in (0, 2, 6):
        whole = rng.integers(-9, 10, pairs) + shift  # small integers: ties and zeros happen
        assert p_sign_flip(whole / 1000) == pytest.approx(enumerated_p(whole), abs=1e-12), whole


def test_sign_flip_cannot_go_below_2_over_32_with_five_pairs() -> None:
    assert sign_flip_floor(5) == 0.0625 == 2 / 32
    assert p_sign_flip(np.array([0.004, 0.009, 0.003, 0.001, 0.006])) == 0.0625  # all five the same sign
    assert p_sign_flip(-np.array([0.004, 0.009, 0.003, 0.001, 0.006])) == 0.0625
    assert p_sign_flip(np.zeros(5)) == 1.0 and np.isnan(p_sign_flip(np.array([0.01])))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sign_flip_matches_scipy_permutation_test(seed: int) -> None:
    rng = np.random.default_rng(seed)
    baseline = rng.normal(0.44, 0.006, 6)
    variant = baseline + rng.normal(0.004, 0.005, 6)
    scipy_p = stats.permutation_test(
        (variant, baseline), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples",
        n_resamples=np.inf, alternative="two-sided",
    ).pvalue
    assert p_sign_flip(variant - baseline) == pytest.approx(scipy_p, abs=1e-12)


def test_aggregate_carries_the_detection_columns() -> None:
    mious = {"ce": [0.50, 0.52, 0.51, 0.53, 0.50], "near": [0.501, 0.519, 0.511, 0.530, 0.499]}
    summaries = [seeded_summary(variant, "none" if variant == "ce" else "region", seed, miou)
                 for variant, values in mious.items() for seed, miou in enumerate(values)]
    sweep = SweepRecord(target_delta=0.002, equivalence_margin=MARGIN)
    rows = aggregate_frame(results_frame(summaries), sweep)
    near, deltas = rows.set_index("variant").loc["near"], np.subtract(mious["near"], mious["ce"])
    assert near["verdict"] == "equivalent" and near["delta_std"] == pytest.approx(deltas.std(ddof=1))
    assert near["mde_80"] == pytest.approx(mde(deltas.std(ddof=1), 5))  # one variant: its family is itself
    assert near["seeds_for_target"] == brute_force_seeds(0.002, deltas.std(ddof=1))
    assert near["p_sign_flip"] == pytest.approx(enumerated_p(np.round(deltas * 1000).astype(int)))
    ce = rows.set_index("variant").loc["ce"]
    assert ce[["delta_std", "delta_ci90_low", "p_sign_flip", "mde_80", "seeds_for_target"]].isna().all()
